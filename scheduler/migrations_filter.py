"""What Alembic compares: everything but the tables other libraries own and the partitions.

On PostgreSQL `messages` and `attempts` are partitioned by month (migration 0014): their
partitions (`messages_p2026_11`, `messages_default`, …) are tables the service creates and
drops at run time (`scheduler.store.retention`), not part of the models, so the comparison
skips them and their indexes. What it still compares on the partitioned tables themselves
(columns, the unique key with `period`, the indexes) is what the models say. Their primary
keys, (id, period) and (id, attempted_at) there against `id` in the models, are outside the
comparison: Alembic does not compare primary keys.
"""

from __future__ import annotations

from typing import Any

from scheduler.store.retention import is_partition_name

FOREIGN_TABLES = frozenset({"apscheduler_jobs"})


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    if type_ == "table" and name is not None and is_partition_name(name):
        return False
    return not (type_ == "table" and name in FOREIGN_TABLES)
