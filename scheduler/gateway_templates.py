"""Gateway template codes: what a domestic SMS gateway sends in place of our text.

Alibaba Cloud and Tencent Cloud send only pre-approved templates: a registered template code
plus the values of its parameters, never free text. config/gateway_templates.yaml maps each
of our SMS templates, per gateway, to its code and to one Jinja expression per gateway
parameter, rendered over the same context (and in the same bounded sandbox) as our template's
body, so the values a resident sees through the gateway are the ones our text shows:

    aliyun:
      local-case-alert:
        code: SMS_465300013
        params: {village: "{{ village }}", date: "{{ case_date }}"}
    tencent:
      local-case-alert:
        code: "2100013"
        params: {"1": "{{ case_date }}", "2": "{{ village }}"}  # positional {1}, {2}, …

Expansion stores the values of every gateway that maps a template on its body (JSON by
gateway), so switching gateways needs no re-expansion; `pingan check` verifies the configured
gateway's mappings against the templates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, meta
from pydantic import BaseModel, ConfigDict, Field, RootModel

from scheduler.config import _composed, node_line, parse_model, read_yaml
from scheduler.exceptions import ConfigError, TemplateError
from scheduler.sandbox import SMS_LIMITS, BoundedSandbox, render_bounded

GATEWAY_TEMPLATES_FILE = "gateway_templates.yaml"
# Aliyun allows 35 characters per parameter value for a notification template; Tencent 12 in
# some template kinds. Expressions themselves stay short: they are a variable or two.
MAX_EXPRESSION_CHARS = 500


class GatewayTemplate(BaseModel):
    """One of our templates as one gateway registered it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(min_length=1, max_length=64)
    # Gateway parameter name → Jinja expression over our template's context.
    params: dict[str, str] = Field(default_factory=dict)


class _File(RootModel[dict[str, dict[str, GatewayTemplate]]]):
    pass


@dataclass(frozen=True)
class GatewayTemplates:
    """Every gateway's mappings, as loaded from one file (empty when there is none)."""

    path: Path
    by_gateway: Mapping[str, Mapping[str, GatewayTemplate]] = field(default_factory=dict)

    def get(self, gateway: str, template: str) -> GatewayTemplate | None:
        return self.by_gateway.get(gateway, {}).get(template)

    def gateways(self, template: str) -> list[str]:
        """The gateways that map `template`, sorted."""
        return sorted(g for g, m in self.by_gateway.items() if template in m)

    def line(self, *loc: str) -> int:
        """The file line of a mapping (for `file:line:` errors); 1 when it cannot be told."""
        return node_line(_composed(self.path), list(loc)) or 1

    @cached_property
    def _env(self) -> BoundedSandbox:
        return BoundedSandbox(SMS_LIMITS, undefined=StrictUndefined, autoescape=False)

    @cached_property
    def _compiled(self) -> dict[tuple[str, str, str], Template]:
        out: dict[tuple[str, str, str], Template] = {}
        for gateway, mappings in self.by_gateway.items():
            for name, mapping in mappings.items():
                for param, expr in mapping.params.items():
                    out[(gateway, name, param)] = self._env.from_string(expr)
        return out

    @cached_property
    def _variables(self) -> dict[tuple[str, str], frozenset[str]]:
        return {
            (gateway, name): frozenset(
                v
                for expr in mapping.params.values()
                for v in meta.find_undeclared_variables(self._env.parse(expr))
            )
            for gateway, mappings in self.by_gateway.items()
            for name, mapping in mappings.items()
        }

    def variables(self, template: str, gateway: str | None = None) -> frozenset[str]:
        """The context variables the parameter expressions of `template` read (of one
        gateway, or of every gateway that maps it); cached, as expansion asks per recipient."""
        found: frozenset[str] = frozenset()
        for g in [gateway] if gateway else self.gateways(template):
            found |= self._variables.get((g, template), frozenset())
        return found

    def render(self, template: str, context: Mapping[str, Any]) -> dict[str, dict[str, str]]:
        """The parameter values of every gateway that maps `template`; a failing expression
        is a TemplateError naming the file, line, gateway and parameter."""
        out: dict[str, dict[str, str]] = {}
        for gateway in self.gateways(template):
            mapping = self.by_gateway[gateway][template]
            values: dict[str, str] = {}
            for param in mapping.params:
                compiled = self._compiled[(gateway, template, param)]
                try:
                    value = render_bounded(compiled, context, SMS_LIMITS)
                except Exception as exc:  # anything an expression does wrong is the mapping's
                    where = f"{self.path}:{self.line(gateway, template, 'params', param)}"
                    raise TemplateError(
                        f"{where}: {gateway}.{template}.params.{param}: {exc}"
                    ) from None
                values[param] = "".join(v.strip() for v in value.splitlines())
            out[gateway] = values
        return out


def dump_params(params: Mapping[str, Mapping[str, str]]) -> str | None:
    """The stored form of a body's parameters (stable, so it can go into the digest)."""
    if not params:
        return None
    return json.dumps(params, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def load_params(stored: str | None, gateway: str) -> dict[str, str] | None:
    """One gateway's parameters from a stored body; None when it maps no code for it."""
    if not stored:
        return None
    values = json.loads(stored).get(gateway)
    return {str(k): str(v) for k, v in values.items()} if isinstance(values, dict) else None


def load_gateway_templates(config_dir: Path) -> GatewayTemplates:
    """The mappings of config/gateway_templates.yaml; a missing file maps nothing (Twilio and
    dry-run send our text). A bad file raises ConfigError with `line N: path: reason`."""
    path = config_dir / GATEWAY_TEMPLATES_FILE
    if not path.exists():
        return GatewayTemplates(path)
    raw = read_yaml(path) or {}
    parsed = parse_model(path, _File, raw).root
    loaded = GatewayTemplates(path, parsed)
    problems: list[str] = []
    for gateway, mappings in parsed.items():
        for name, mapping in mappings.items():
            for param, expr in mapping.params.items():
                loc = (gateway, name, "params", param)
                at = f"line {loaded.line(*loc)}: {'.'.join(loc)}"
                if len(expr) > MAX_EXPRESSION_CHARS:
                    problems.append(f"{at}: longer than {MAX_EXPRESSION_CHARS} characters")
                    continue
                try:
                    loaded._env.parse(expr)
                except TemplateSyntaxError as exc:
                    problems.append(f"{at}: syntax error: {exc.message}")
    if problems:
        raise ConfigError(path, problems)
    return loaded
