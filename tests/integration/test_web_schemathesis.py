"""Schemathesis against the app's own OpenAPI schema: valid and invalid inputs on every route.

The real ASGI app over a real SQLite database, called in process (Schemathesis's ASGI client),
a bounded number of examples per operation and mode so the whole run fits CI. It must find no
server error and no response outside the declared schema (status code, content type, body).
(Schemathesis's pytest plugin does not run under pytest 9, so each operation's strategy is
driven with Hypothesis's `given` directly.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from scheduler.core import Core
from scheduler.settings import AliyunSettings, Settings, TencentSettings, TwilioSettings
from scheduler.web import create_app
from tests.conftest import ROOT

TOKEN = "fuzz-token"
EXAMPLES = 40  # per operation and mode: about 20 s for the whole test here
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_answers_within_its_schema(tmp_path: Path, mode: GenerationMode) -> None:
    core = Core(
        Settings(
            data_dir=tmp_path / "var",
            database_url=f"sqlite:///{tmp_path / 'fuzz.db'}",
            config_dir=ROOT / "config",
            templates_dir=ROOT / "templates" / "messages",
            log_format="json",
            api_tokens=SecretStr(f"fuzzer={TOKEN}"),
            twilio=TwilioSettings(account_sid="AC1", auth_token=SecretStr("webhook-secret")),
            tencent=TencentSettings(webhook_token=SecretStr("webhook-secret")),
            aliyun=AliyunSettings(webhook_token=SecretStr("webhook-secret")),
        )
    )
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(core))
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 9
        tried: set[str] = set()
        nothing_to_negate: set[str] = set()

        for operation in operations:

            @given(case=operation.as_strategy(generation_mode=mode), _=st.just(None))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def exercise(case: schemathesis.Case, _: None) -> None:
                case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)
                tried.add(case.operation.label)

            try:
                exercise()
            except Unsatisfiable:
                nothing_to_negate.add(operation.label)
        assert tried | nothing_to_negate == {op.label for op in operations}
        # Only the operations without any input have nothing to make invalid.
        assert nothing_to_negate <= {"GET /healthz", "GET /metrics"}
        assert not nothing_to_negate or mode == GenerationMode.NEGATIVE
    finally:
        core.close()
