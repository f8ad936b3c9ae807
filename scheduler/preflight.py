"""Pre-flight: what `pingan check` (and the start of `pingan run`) finds wrong before sending.

Every configuration file is read and validated on its own, each campaign separately, so one
mistake does not hide the others: YAML syntax, the fields of each file, every cross-reference
(campaign → template, its approval and channel; quota rule → town; segment → template), and
each campaign's templates rendered for a few real residents of every town. Each problem names
the file, the line where the YAML has one, the field path and the reason, with a "did you
mean" for a near miss.

A problem is `fatal` when it would make every send fail (the settings, the district or the
campaigns file cannot be loaded, or the database cannot be opened): `pingan run` refuses to
start on those and only warns about the rest (one campaign's mistake fails that campaign
alone).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from scheduler.campaigns import CAMPAIGNS_FILE, Campaign, load_campaigns
from scheduler.config import DISTRICT_FILE, SEGMENTS, District, node_line
from scheduler.core import Core
from scheduler.exceptions import ConfigError, PingAnError, TemplateError
from scheduler.gateway_templates import (
    GATEWAY_TEMPLATES_FILE,
    GatewayTemplates,
    load_gateway_templates,
)
from scheduler.phones import mask
from scheduler.providers.base import ErrorInfo
from scheduler.providers.registry import provider_class, provider_classes
from scheduler.quotas import QUOTAS_FILE, QuotaRule
from scheduler.settings import Settings
from scheduler.store import outbox
from scheduler.store.outbox import RecipientRow
from scheduler.templating import CHANNEL_VARIABLES, Catalogue

Loc = Sequence[str | int]

# What an event campaign's templates are rendered with in the check (a case alert's values).
SAMPLE_EVENT = {"fraud_type": "刷单返利", "amount_band": "十万元以上", "case_date": "10月9日"}


@dataclass(frozen=True)
class Problem:
    file: str
    path: str
    reason: str
    line: int | None = None
    fatal: bool = False
    # Worth a look but not wrong (check still exits 0).
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        reason = f"warning: {self.reason}" if self.warning else self.reason
        return f"{where}: {self.path}: {reason}" if self.path else f"{where}: {reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "path": self.path,
            "reason": self.reason,
            "fatal": self.fatal,
            "warning": self.warning,
            "message": str(self),
        }


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    @property
    def ok(self) -> bool:
        return all(p.warning for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "fatal": bool(self.fatal),
            "problems": [p.to_dict() for p in self.problems],
            "checked": self.checked,
        }


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for a near miss, else a short list of what is known."""
    known = sorted(set(known))
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    if known and len(known) <= 8:
        return f" (known: {', '.join(known)})"
    return ""


class YamlFile:
    """A YAML file's data together with the line of each node, for `file:line` messages."""

    def __init__(self, path: Path, data: Any, root: yaml.Node | None) -> None:
        self.path = path
        self.data = data
        self.root = root

    def line(self, loc: Loc) -> int | None:
        """The line of the deepest node on `loc` that exists (a missing field: its parent's)."""
        return node_line(self.root, loc)


def loc_path(loc: Loc) -> str:
    """`campaigns[2].schedule.cron`, as an operator reads a field path."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Checker:
    def __init__(self, core: Core, *, per_town: int) -> None:
        self.core = core
        self.settings: Settings = core.settings
        self.per_town = per_town
        self.problems: list[Problem] = []
        self.campaigns_yaml: YamlFile | None = None
        self.checked: dict[str, int] = {
            "files": 0,
            "campaigns": 0,
            "templates": 0,
            "quota_rules": 0,
            "residents_sampled": 0,
            "renders": 0,
        }

    # -- helpers -------------------------------------------------------------------------

    def add(
        self,
        file: YamlFile | Path | str,
        loc: Loc | str,
        reason: str,
        *,
        fatal: bool = False,
        line: int | None = None,
        warning: bool = False,
    ) -> None:
        path = loc if isinstance(loc, str) else loc_path(loc)
        if isinstance(file, YamlFile):
            if line is None and not isinstance(loc, str):
                line = file.line(loc)
            file = file.path
        self.problems.append(Problem(str(file), path, reason, line, fatal, warning))

    def read(self, path: Path, *, fatal: bool, required: bool = True) -> YamlFile | None:
        """The file parsed, or None after recording why it cannot be (missing, not UTF-8,
        YAML syntax with its line)."""
        if not path.exists():
            if required:
                self.add(path, "", "file not found", fatal=fatal)
            return None
        self.checked["files"] += 1
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            self.add(path, "", f"not UTF-8: {exc.reason} at byte {exc.start}", fatal=fatal)
            return None
        except OSError as exc:
            self.add(path, "", f"cannot read: {exc.strerror}", fatal=fatal)
            return None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            context = getattr(exc, "context", None)
            context_mark = getattr(exc, "context_mark", None)
            if context and context_mark is not None:
                context += f" from line {context_mark.line + 1}"
            reason = f"YAML syntax: {problem}" + (f" ({context})" if context else "")
            self.add(path, "", reason, fatal=fatal, line=mark.line + 1 if mark else None)
            return None
        return YamlFile(path, data, root)

    def validation(
        self, file: YamlFile, exc: ValidationError, prefix: Loc = (), *, fatal: bool = False
    ) -> None:
        for err in exc.errors():
            loc = [*prefix, *(p for p in err["loc"] if isinstance(p, str | int))]
            # Our validators' messages come prefixed with pydantic's "Value error, ".
            self.add(file, loc, err["msg"].removeprefix("Value error, "), fatal=fatal)

    # -- settings-independent files ------------------------------------------------------

    def district(self) -> District | None:
        y = self.read(self.settings.config_dir / DISTRICT_FILE, fatal=True)
        if y is None:
            return None
        try:
            return District.model_validate(y.data)
        except ValidationError as exc:
            self.validation(y, exc, fatal=True)
            return None

    def campaigns(self, district: District | None) -> list[tuple[int, Campaign]]:
        """Each campaign validated on its own; the valid ones with their index."""
        path = self.settings.config_dir / CAMPAIGNS_FILE
        y = self.read(path, fatal=True)
        self.campaigns_yaml = y
        if y is None:
            return []
        before = len(self.problems)
        valid: list[tuple[int, Campaign]] = []
        items = y.data.get("campaigns") if isinstance(y.data, dict) else None
        if not isinstance(items, list):
            self.add(y, ["campaigns"], "expected a list of campaigns under `campaigns:`")
        else:
            extra = sorted(set(y.data) - {"campaigns"})
            for key in extra:
                self.add(y, [key], "unknown key (the file holds only `campaigns:`)")
            names: dict[str, int] = {}
            for i, item in enumerate(items):
                loc: list[str | int] = ["campaigns", i]
                try:
                    c = Campaign.model_validate(item)
                except ValidationError as exc:
                    self.validation(y, exc, loc)
                    continue
                if c.name in names:
                    self.add(y, [*loc, "name"], f"duplicate campaign name {c.name!r}")
                    continue
                names[c.name] = i
                if district is not None:
                    self.audience(y, loc, c, district)
                valid.append((i, c))
        self.checked["campaigns"] = len(valid)
        # Whatever stops the service's own loader makes every send fail: fatal.
        if district is not None:
            try:
                load_campaigns(self.settings.config_dir, district)
            except ConfigError as exc:
                mine = self.problems[before:]
                if mine:
                    self.problems[before:] = [_fatal(p) for p in mine]
                else:
                    for reason in exc.problems:
                        self.add(y, "", reason, fatal=True)
            except PingAnError as exc:
                self.add(y, "", str(exc), fatal=True)
        return [(i, c) for i, c in valid if not self._has_problem(y, i)]

    def _has_problem(self, y: YamlFile, index: int) -> bool:
        prefix = f"campaigns[{index}]"
        return any(
            p.file == str(y.path) and (p.path == prefix or p.path.startswith(prefix + "."))
            for p in self.problems
        )

    def audience(self, y: YamlFile, loc: list[str | int], c: Campaign, district: District) -> None:
        towns = district.towns_by_id
        for j, town in enumerate(c.audience.towns):
            if town not in towns:
                self.add(
                    y,
                    [*loc, "audience", "towns", j],
                    f"unknown town {town!r}{did_you_mean(town, towns)}",
                )
        villages = {f"{t.id}/{v.id}" for t, v in district.villages()}
        for j, key in enumerate(c.audience.villages):
            if key not in villages:
                self.add(
                    y,
                    [*loc, "audience", "villages", j],
                    f"unknown village {key!r} (town/village){did_you_mean(key, villages)}",
                )
        carriers = {str(x.id) for x in district.carriers}
        for j, carrier in enumerate(c.audience.carriers):
            if carrier not in carriers:
                self.add(
                    y,
                    [*loc, "audience", "carriers", j],
                    f"carrier {carrier!r} is not in the district{did_you_mean(carrier, carriers)}",
                )

    def quotas(self, district: District | None) -> None:
        y = self.read(self.settings.config_dir / QUOTAS_FILE, fatal=False, required=False)
        if y is None or y.data is None:
            return
        items = y.data.get("rules") if isinstance(y.data, dict) else None
        if not isinstance(items, list):
            self.add(y, ["rules"], "expected a list of rules under `rules:`")
            return
        ids: set[str] = set()
        for i, item in enumerate(items):
            loc: list[str | int] = ["rules", i]
            try:
                rule = QuotaRule.model_validate(item)
            except ValidationError as exc:
                self.validation(y, exc, loc)
                continue
            self.checked["quota_rules"] += 1
            if rule.id in ids:
                self.add(y, [*loc, "id"], f"duplicate rule id {rule.id!r}")
            ids.add(rule.id)
            if district is None:
                continue
            keys = {t.id for t in district.towns} | {t.name for t in district.towns}
            limited = []
            for j, key in enumerate(rule.towns):
                if key.strip() not in keys:
                    self.add(
                        y,
                        [*loc, "towns", j],
                        f"unknown town {key!r}{did_you_mean(key.strip(), keys)}",
                    )
                else:
                    limited.append(district.find_town(key).id)
            subjects_exist = {
                "town": bool(district.towns),
                "carrier": bool(district.carriers),
                "village": any(
                    t.villages for t in district.towns if not limited or t.id in limited
                ),
            }
            if not subjects_exist[rule.subject]:
                self.add(y, [*loc, "subject"], f"the district has no {rule.subject} to count")
            if rule.by_residence:
                for t, v in district.villages():
                    if (not limited or t.id in limited) and v.registered is None:
                        self.add(
                            y,
                            [*loc, "by_residence"],
                            f"village {t.id}/{v.id} has no registered/migrant split "
                            f"in {DISTRICT_FILE}",
                        )

    def error_catalogues(self) -> None:
        """Each provider's error catalogue (its own file, `Provider.catalogue_file`): the
        configured provider's must exist; another's is checked when present (delivery stats
        read it for messages sent before a switch)."""
        for cls in provider_classes():
            path = cls.catalogue_file(self.settings.config_dir)
            if path is not None:
                self.error_catalogue(path, required=cls.name == self.settings.provider)

    def error_catalogue(self, path: Path, *, required: bool) -> None:
        y = self.read(path, fatal=False, required=required)
        if y is None or y.data is None:
            return
        data = {str(k): v for k, v in y.data.items()} if isinstance(y.data, dict) else y.data
        try:
            TypeAdapter(dict[str, ErrorInfo]).validate_python(data)
        except ValidationError as exc:
            self.validation(y, exc)

    def replies(self) -> None:
        """config/replies.yaml: the reply rules that decide which answers opt a resident out."""
        from scheduler.replies import REPLIES_FILE, ReplyRules

        y = self.read(self.settings.config_dir / REPLIES_FILE, fatal=False, required=False)
        if y is None or y.data is None:
            return
        try:
            ReplyRules.model_validate(y.data)
        except ValidationError as exc:
            self.validation(y, exc)

    def other_yaml(self, known: set[str]) -> None:
        folder = self.settings.config_dir
        if not folder.is_dir():
            return
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            if path.name not in known:
                self.read(path, fatal=False)

    # -- templates -----------------------------------------------------------------------

    def templates(
        self, district: District, campaigns: list[tuple[int, Campaign]], y_path: Path
    ) -> tuple[Catalogue, dict[str, list[str]]]:
        """Cross-references from each campaign to its templates; returns, per campaign, the
        templates fit to render (they exist, are approved, lint clean)."""
        catalogue = Catalogue(
            self.settings.templates_dir, district, max_segments=self.settings.max_sms_segments
        )
        y = self.campaigns_yaml
        approvals_ok = self.approvals(catalogue)
        known = catalogue.names()
        pools: dict[str, list[str]] = {}
        for name in known:
            try:
                pool = catalogue.get(name).pool
            except Exception:  # reported by lint below
                continue
            if pool:
                pools.setdefault(pool, []).append(name)
        linted: dict[str, bool] = {}
        usable: dict[str, list[str]] = {}
        for i, c in campaigns:
            loc: list[str | int] = ["campaigns", i]
            refs: list[tuple[list[str | int], str]] = []
            if c.template:
                refs.append(([*loc, "template"], c.template))
            if c.templates_by_segment:
                refs += [
                    ([*loc, "templates_by_segment", seg], name)
                    for seg, name in c.templates_by_segment.items()
                ]
            if c.pool:
                members = pools.get(c.pool, [])
                if not members:
                    self._add_y(
                        y,
                        y_path,
                        [*loc, "pool"],
                        f"rotation pool {c.pool!r} has no templates in "
                        f"{self.settings.templates_dir}{did_you_mean(c.pool, pools)}",
                    )
                refs += [([*loc, "pool"], name) for name in members]
            fit = []
            for ref_loc, name in refs:
                if name not in known:
                    self._add_y(
                        y, y_path, ref_loc, f"unknown template {name!r}{did_you_mean(name, known)}"
                    )
                    continue
                info = catalogue.get(name)
                if info.channel != c.channel:
                    self._add_y(
                        y,
                        y_path,
                        ref_loc,
                        f"template {name!r} is a {info.channel} template but the campaign "
                        f"sends {c.channel}",
                    )
                    continue
                if name not in linted:
                    lint = catalogue.lint([name])
                    for p in lint:
                        self.add(p.path, name, p.reason, line=p.line or None)
                    linted[name] = not lint
                    self.checked["templates"] += 1
                if not linted[name]:
                    continue
                if approvals_ok:
                    state = catalogue.approval_state(name)
                    if state != "approved":
                        why = "changed since its approval" if state == "changed" else "not approved"
                        self._add_y(
                            y,
                            y_path,
                            ref_loc,
                            f"template {name!r} is {why}: review it, then "
                            f"`pingan templates approve {name} --by NAME`",
                        )
                fit.append(name)
            # Segments with a template are the campaign's audience; each needs one.
            if c.templates_by_segment:
                for seg in c.audience.segments:
                    if seg not in c.templates_by_segment:
                        self._add_y(
                            y,
                            y_path,
                            [*loc, "audience", "segments"],
                            f"segment {seg!r} has no template in templates_by_segment"
                            f"{did_you_mean(seg, SEGMENTS)}",
                        )
            usable[c.name] = list(dict.fromkeys(fit))
        return catalogue, usable

    def _add_y(self, y: YamlFile | None, path: Path, loc: Loc, reason: str) -> None:
        self.add(y if y is not None else path, loc, reason)

    def approvals(self, catalogue: Catalogue) -> bool:
        path = catalogue.approvals_path
        y = self.read(path, fatal=False, required=False)
        if y is None:
            return not path.exists()
        try:
            catalogue.approvals()
        except PingAnError as exc:
            self.add(y, "", str(exc))
            return False
        return True

    # -- database and renders ------------------------------------------------------------

    def database(self) -> bool:
        try:
            self.core.engine  # noqa: B018 - opening it upgrades the schema and proves the URL
        except Exception as exc:  # any failure here: nothing can be sent
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.add("database", "", f"cannot open the database: {first}", fatal=True)
            return False
        return True

    def sample(self, district: District) -> list[RecipientRow]:
        """A few residents of every town, the first by id (a stable sample): the first batch
        of the same keyset read the expansion uses."""
        rows: list[RecipientRow] = []
        for town in district.towns:
            batches = outbox.iter_recipient_batches(
                self.core.engine, after_id=0, batch_size=self.per_town, town_id=town.id
            )
            rows += next(iter(batches), [])
        self.checked["residents_sampled"] = len(rows)
        return rows

    def renders(
        self,
        district: District,
        catalogue: Catalogue,
        campaigns: list[tuple[int, Campaign]],
        usable: dict[str, list[str]],
        residents: list[RecipientRow],
    ) -> None:
        today = self.core.clock().astimezone(self.settings.tz).date()
        for _i, c in campaigns:
            for name in usable.get(c.name, []):
                if c.channel == "letter":
                    for t in district.towns:
                        self._render(c, catalogue, name, catalogue.context(town=t, today=today))
                    continue
                # A segment's template is rendered for residents of that segment only.
                wanted = {s for s, n in (c.templates_by_segment or {}).items() if n == name}
                extra = SAMPLE_EVENT if c.schedule.event == "fraud-case" else None
                for r in residents:
                    segments = list(r.segments)
                    if wanted and not wanted & set(segments):
                        continue
                    town = district.towns_by_id.get(r.town_id)
                    village = next(
                        (v for v in (town.villages if town else ()) if v.id == r.village_id), None
                    )
                    if town is None or village is None:
                        continue  # the expansion excludes them (invalid place)
                    ctx = catalogue.context(
                        town=town,
                        village=village,
                        recipient={"name": r.name or "", "segments": segments},
                        extra=extra,
                        today=today,
                    )
                    who = f"{mask(r.phone)} ({town.name}{village.name})"
                    if not self._render(c, catalogue, name, ctx, who):
                        break  # one failure per template and campaign is enough to say

    def _render(
        self,
        c: Campaign,
        catalogue: Catalogue,
        name: str,
        ctx: dict[str, Any],
        who: str | None = None,
    ) -> bool:
        self.checked["renders"] += 1
        info = catalogue.get(name)
        whom = f" for {who}" if who else f" for {ctx.get('town', '')}"
        try:
            rendered = catalogue.render(name, ctx)
        except Exception as exc:  # any render failure is the finding
            reason = " ".join(str(exc).split()) or type(exc).__name__
            self.add(info.path, f"campaign {c.name}", f"fails to render{whom}: {reason}")
            return False
        if c.channel == "sms" and rendered.segments > catalogue.max_segments:
            self.add(
                info.path,
                f"campaign {c.name}",
                f"{rendered.chars} characters{whom} make {rendered.segments} SMS segments "
                f"(at most {catalogue.max_segments})",
            )
            return False
        return True

    # -- template-code gateways ------------------------------------------------------------

    def gateway_templates(
        self,
        district: District,
        catalogue: Catalogue,
        campaigns: list[tuple[int, Campaign]],
        usable: dict[str, list[str]],
    ) -> None:
        """For a gateway that sends template codes (aliyun, tencent): every SMS template a
        campaign uses has a code in config/gateway_templates.yaml, whose parameters cover the
        template's variables and read only variables the context has; its signature setting
        matches the district's."""
        cls = provider_class(self.settings.provider)
        if not cls.uses_templates:
            return
        gateway = cls.name
        path = self.settings.config_dir / GATEWAY_TEMPLATES_FILE
        signature = cls.signature_setting(self.settings)
        if signature is not None:
            setting, value = signature
            wanted = district.district.signature.strip("【】")
            if value != wanted:
                self.add(
                    ".env / environment",
                    setting,
                    f"{value!r} differs from the district's signature {wanted!r} "
                    f"({DISTRICT_FILE}): the gateway shows {setting}, messages are counted "
                    "with the district's",
                    warning=True,
                )
        try:
            mappings = load_gateway_templates(self.settings.config_dir)
        except ConfigError as exc:
            for problem in exc.problems:
                line, _, rest = problem.partition(": ")
                at = int(line.removeprefix("line ")) if line.startswith("line ") else None
                where, _, reason = rest.partition(": ") if at else problem.partition(": ")
                self.add(path, where, reason or problem, line=at)
            return
        if not path.exists():
            self.add(path, "", f"file not found: provider {gateway} sends template codes")
            return
        self.checked["files"] += 1
        for _, c in campaigns:
            if c.channel != "sms":
                continue
            for name in usable.get(c.name, []):
                self._gateway_template(mappings, catalogue, gateway, name, c.name)

    def _gateway_template(
        self,
        mappings: GatewayTemplates,
        catalogue: Catalogue,
        gateway: str,
        name: str,
        campaign: str,
    ) -> None:
        path = mappings.path
        mapping = mappings.get(gateway, name)
        if mapping is None:
            self.add(
                path,
                f"{gateway}.{name}",
                f"no {gateway} template code for template {name!r} (campaign {campaign!r}): "
                "register it at the gateway and add its code and parameters",
                line=mappings.line(gateway),
            )
            return
        loc = f"{gateway}.{name}.params"
        line = mappings.line(gateway, name)
        info = catalogue.get(name)
        read = mappings.variables(name, gateway)
        missing = sorted(info.variables - read)
        if missing:
            self.add(
                path,
                loc,
                f"template {name!r} uses {', '.join(missing)}, which no parameter passes "
                "to the gateway",
                line=line,
            )
        unknown = sorted(read - CHANNEL_VARIABLES["sms"])
        if unknown:
            self.add(
                path,
                loc,
                f"parameters read {', '.join(unknown)}, which SMS templates do not have "
                f"(known: {', '.join(sorted(CHANNEL_VARIABLES['sms']))})",
                line=line,
            )
            return
        try:
            mappings.render(name, catalogue.sample_context(info))
        except TemplateError as exc:
            self.add(path, loc, str(exc).split(": ", 2)[-1], line=line)

    # -- all -----------------------------------------------------------------------------

    def run(self) -> Report:
        config_dir = self.settings.config_dir
        if not config_dir.is_dir():
            self.add(config_dir, "", "configuration folder not found", fatal=True)
            return Report(self.problems, self.checked)
        district = self.district()
        campaigns = self.campaigns(district)
        self.quotas(district)
        self.error_catalogues()
        self.replies()
        catalogues = {p.name for cls in provider_classes() if (p := cls.catalogue_file(config_dir))}
        self.other_yaml(
            {DISTRICT_FILE, CAMPAIGNS_FILE, QUOTAS_FILE, GATEWAY_TEMPLATES_FILE, "replies.yaml"}
            | catalogues
        )
        db_ok = self.database()
        if district is not None:
            catalogue, usable = self.templates(district, campaigns, config_dir / CAMPAIGNS_FILE)
            self.gateway_templates(district, catalogue, campaigns, usable)
            if db_ok:
                residents = self.sample(district)
                self.renders(district, catalogue, campaigns, usable, residents)
        # File by file, top to bottom: the order an operator fixes them in.
        order = {f: n for n, f in enumerate(dict.fromkeys(p.file for p in self.problems))}
        problems = sorted(self.problems, key=lambda p: (order[p.file], p.line or 0))
        return Report(problems, self.checked)


def _fatal(p: Problem) -> Problem:
    return Problem(p.file, p.path, p.reason, p.line, True)


def settings_problems() -> list[Problem]:
    """The environment's and .env's PINGAN_ settings, each invalid one a fatal problem."""
    try:
        Settings()
    except ValidationError as exc:
        return [
            Problem(
                ".env / environment",
                "PINGAN_" + "__".join(str(p).upper() for p in err["loc"]),
                err["msg"].removeprefix("Value error, "),
                fatal=True,
            )
            for err in exc.errors()
        ]
    return []


def preflight(core: Core, *, per_town: int = 3) -> Report:
    """Check everything a send depends on; nothing is written except the schema upgrade."""
    return _Checker(core, per_town=per_town).run()
