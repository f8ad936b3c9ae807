"""The district configuration (YAML in the config folder), validated by pydantic models.

A bad file raises ConfigError naming the file, the field path and the reason.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from scheduler.exceptions import ConfigError, UnknownName

DISTRICT_FILE = "district.yaml"

Residence = Literal["registered", "migrant"]
# The audiences the seeds target (002 推送式宣传, 003), as recipient lists tag them.
SEGMENTS = frozenset(
    {
        "student",
        "worker",
        "business_owner",
        "single_woman_20_40",
        "finance_staff",
        "elderly",
        "job_seeker",
        "public_employee",
    }
)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Village(Frozen):
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    population: int = Field(ge=0)
    registered: int | None = Field(None, ge=0)
    migrant: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _split_adds_up(self) -> Village:
        if (self.registered is None) != (self.migrant is None):
            raise ValueError("give both registered and migrant, or neither")
        if (
            self.registered is not None
            and self.migrant is not None
            and self.registered + self.migrant != self.population
        ):
            raise ValueError(
                f"registered {self.registered} + migrant {self.migrant} "
                f"!= population {self.population}"
            )
        return self


class Town(Frozen):
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    population: int = Field(ge=0)
    households: int = Field(ge=0)
    villages: tuple[Village, ...] = ()

    @model_validator(mode="after")
    def _villages_fit(self) -> Town:
        ids = [v.id for v in self.villages]
        if len(ids) != len(set(ids)):
            raise ValueError("village ids must be unique within a town")
        total = sum(v.population for v in self.villages)
        if total > self.population:
            raise ValueError(f"villages' population {total} exceeds the town's {self.population}")
        return self


class Carrier(Frozen):
    id: Literal["mobile", "unicom", "telecom", "broadnet"]
    name: str
    subscribers: int = Field(ge=0)


class Survey(Frozen):
    """The provincial survey the messages announce (001: household 1–15 Nov, phone to 31 Dec)."""

    hotline: str = "0571-12340"
    household_start: dt.date
    household_end: dt.date
    phone_start: dt.date
    phone_end: dt.date


# The fraud types of the seeds and of the police's usual categories. A case's type reaches an
# alert SMS only if it is on this list (district.yaml `fraud_types.known` replaces it).
FRAUD_TYPES = (
    "刷单返利",
    "虚假投资理财",
    "冒充公检法",
    "网络贷款",
    "贷款诈骗",
    "冒充客服",
    "虚假征信",
    "冒充熟人/领导",
    "冒充公司老总",
    "网络游戏产品虚假交易",
    "网络婚恋交友",
    "杀猪盘",
    "高薪招聘",
    "保健品诈骗",
    "养老诈骗",
    "网络赌博",
    "虚假购物",
    "退款退费",
)
# Short words only: no spaces, digits, links or markup can ride into a message.
_FRAUD_TYPE = r"^[\u4e00-\u9fffA-Za-z/、·]{2,16}$"


def _check_fraud_type(text: str) -> str:
    if not re.fullmatch(_FRAUD_TYPE, text):
        raise ValueError(
            f"{text!r}: a fraud type is 2-16 Chinese or Latin letters (and / 、 ·), "
            "without spaces, digits or links"
        )
    return text


def _fraud_key(text: str) -> str:
    """How a recorded type is compared with the list: NFKC (full-width forms), no spaces."""
    return "".join(unicodedata.normalize("NFKC", text).split()).casefold()


class FraudTypes(Frozen):
    """The fraud types an alert may name; any other is shown as `generic`."""

    known: tuple[str, ...] = FRAUD_TYPES
    generic: str = "电信网络诈骗"

    @field_validator("known")
    @classmethod
    def _short_words(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for text in value:
            _check_fraud_type(text)
        return value

    @field_validator("generic")
    @classmethod
    def _short_word(cls, value: str) -> str:
        return _check_fraud_type(value)

    @model_validator(mode="after")
    def _unique(self) -> FraudTypes:
        keys = [_fraud_key(k) for k in self.known]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"duplicate fraud types: {', '.join(dupes)}")
        return self

    @cached_property
    def _by_key(self) -> dict[str, str]:
        return {_fraud_key(k): k for k in self.known}

    def phrase(self, recorded: str) -> str:
        """The listed type `recorded` names, or the generic phrase."""
        return self._by_key.get(_fraud_key(recorded), self.generic)


class DistrictInfo(Frozen):
    id: str
    name: str
    short_name: str
    office: str
    signature: str = Field(pattern=r"^【[^】]+】$")
    opt_out: str = Field(min_length=1)
    survey: Survey


class District(Frozen):
    district: DistrictInfo
    towns: tuple[Town, ...] = Field(min_length=1)
    carriers: tuple[Carrier, ...] = Field(min_length=1)
    fraud_types: FraudTypes = FraudTypes()

    @model_validator(mode="after")
    def _unique(self) -> District:
        for label, ids in (
            ("town", [t.id for t in self.towns]),
            ("carrier", [str(c.id) for c in self.carriers]),
        ):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate {label} ids: {', '.join(dupes)}")
        return self

    @cached_property
    def towns_by_id(self) -> dict[str, Town]:
        return {t.id: t for t in self.towns}

    @cached_property
    def _town_keys(self) -> dict[str, Town]:
        keys: dict[str, Town] = {}
        for t in self.towns:
            keys[t.id] = t
            keys.setdefault(t.name, t)
        return keys

    @cached_property
    def _village_keys(self) -> dict[tuple[str, str], Village]:
        keys: dict[tuple[str, str], Village] = {}
        for t in self.towns:
            for v in t.villages:
                keys[(t.id, v.id)] = v
                keys.setdefault((t.id, v.name), v)
        return keys

    def find_town(self, key: str) -> Town:
        """A town by id or name."""
        try:
            return self._town_keys[key.strip()]
        except KeyError:
            raise UnknownName(f"unknown town {key!r}") from None

    def find_village(self, town: Town, key: str) -> Village:
        """A village of `town` by id or name."""
        try:
            return self._village_keys[(town.id, key.strip())]
        except KeyError:
            raise UnknownName(f"unknown village {key!r} in town {town.id}") from None

    def villages(self) -> Iterator[tuple[Town, Village]]:
        for t in self.towns:
            for v in t.villages:
                yield t, v

    @property
    def population(self) -> int:
        return sum(t.population for t in self.towns)


M = TypeVar("M", bound=BaseModel)


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"not UTF-8: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(path, f"{where}{getattr(exc, 'problem', exc)}") from None


def node_line(root: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    """The line of the deepest node of a composed YAML document on the field path `loc`
    (for a missing field, its parent's), so a message can say where to look."""
    node = root
    if node is None:
        return None
    for key in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if str(k.value) == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            child = node.value[key] if 0 <= key < len(node.value) else None
        if child is None:
            break
        node = child
    return node.start_mark.line + 1


def _composed(path: Path) -> yaml.Node | None:
    try:
        return yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def validation_problems(exc: ValidationError, root: yaml.Node | None = None) -> list[str]:
    """Pydantic errors as `[line N: ]field.path: reason` lines, the path as an operator reads
    it, the line when the file's YAML nodes (`root`) are given."""
    problems = []
    for err in exc.errors():
        parts: list[str] = []
        for loc in err["loc"]:
            if isinstance(loc, int):
                parts.append(f"[{loc}]")
            else:
                parts.append(("." if parts else "") + str(loc))
        where = "".join(parts) or "(top level)"
        line = node_line(root, [p for p in err["loc"] if isinstance(p, str | int)])
        at = f"line {line}: " if line else ""
        problems.append(f"{at}{where}: {err['msg'].removeprefix('Value error, ')}")
    return problems


def parse_model(path: Path, model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # Only on failure: read the file's nodes again for the line of each problem.
        raise ConfigError(path, validation_problems(exc, _composed(path))) from None


def load_district(config_dir: Path) -> District:
    path = config_dir / DISTRICT_FILE
    return parse_model(path, District, read_yaml(path))
