"""The message template engine: the catalogue operators edit, rendered safely and traceably.

Each file in the templates folder is one message: YAML front matter between `---` lines, then a
Jinja2 body. Bodies run in a `SandboxedEnvironment` (office staff edit them; they must not reach
Python internals) with `StrictUndefined` (a missing variable is an error, never a blank).
Letters (`*.letter.html.j2`) are autoescaped HTML.

SMS bodies are joined into one line (template lines are joined without spaces, as Chinese
text needs none), then the engine adds the district's signature in front (【平安上虞】) and
the opt-out wording at the end (回T退订), which count in the message length. A template with
`wrap: false` places them itself, and lint checks it did.

Every render carries the template's name and the sha256 of its file, so a sent message can
be traced to the exact wording; sending needs that hash approved (approvals.yaml beside the
templates, reviewed and versioned with them).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import BaseLoader, Environment, StrictUndefined, TemplateSyntaxError, meta
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.exceptions import TemplateError as JinjaTemplateError

from scheduler.clock import Clock, system_clock
from scheduler.config import SEGMENTS, District, Town, Village
from scheduler.exceptions import TemplateError, TemplateNotApproved, UnknownName
from scheduler.sandbox import (
    LETTER_LIMITS,
    SMS_LIMITS,
    BoundedSandbox,
    Limits,
    TemplateLimitError,
    render_bounded,
)
from scheduler.sms_length import measure

APPROVALS_FILE = "approvals.yaml"
SUFFIXES = {".sms.j2": "sms", ".letter.html.j2": "letter"}
AUDIENCES = SEGMENTS | {"everyone"}
DISTRICT_VARIABLES = frozenset(
    {
        "district",
        "district_short",
        "office",
        "signature",
        "opt_out",
        "hotline",
        "survey_household_start",
        "survey_household_end",
        "survey_phone_start",
        "survey_phone_end",
        "today",
    }
)
PLACE_VARIABLES = frozenset({"town", "village"})
RECIPIENT_VARIABLES = frozenset({"name", "segments"})
EVENT_VARIABLES = frozenset({"fraud_type", "amount_band", "case_date"})
# What `scheduler.cases.amount_band` answers; nothing else may stand for a loss in a message.
AMOUNT_BANDS = frozenset({"百万元以上", "十万元以上", "一万至十万元", "一万元以下"})
CHANNEL_VARIABLES = {
    "sms": DISTRICT_VARIABLES | PLACE_VARIABLES | RECIPIENT_VARIABLES | EVENT_VARIABLES,
    "letter": DISTRICT_VARIABLES | {"town"},
}
ApprovalState = Literal["approved", "changed", "never"]
# Lint renders each template for every place; a slow one is cut short after this long.
LINT_SECONDS = 5.0
# Front matter is a handful of short fields; anything bigger is a mistake or an attack.
MAX_FRONT_MATTER_BYTES = 8_192


def cn_date(day: dt.date) -> str:
    """11月1日: how the messages write a date."""
    return f"{day.month}月{day.day}日"


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    channel: Literal["sms", "letter"]
    theme: str
    audience: tuple[str, ...]
    description: str
    pool: str | None
    path: Path
    source_hash: str
    variables: frozenset[str]
    per_recipient: bool
    modified_at: dt.datetime
    wrap: bool = True


@dataclass(frozen=True)
class Rendered:
    template_name: str
    template_hash: str
    text: str
    chars: int
    segments: int
    encoding: Literal["gsm7", "ucs2", "html"]


@dataclass(frozen=True)
class LintProblem:
    path: Path
    line: int
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.name}: {self.reason}"


@dataclass(frozen=True)
class _Parsed:
    info: TemplateInfo | None
    body: str  # front matter blanked out, so Jinja's line numbers are the file's
    meta: dict[str, Any]
    problems: tuple[LintProblem, ...]
    stamp: tuple[int, int]


class _PlainLoader(yaml.SafeLoader):
    """YAML limited to plain scalars, lists and maps: no anchors, aliases or tags, so a few
    lines cannot expand into gigabytes (a "billion laughs" took 48 s and 3.1 GB)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        problem = None
        if isinstance(event, yaml.AliasEvent):
            problem = "aliases (*name) are not allowed"
        elif getattr(event, "anchor", None) is not None:
            problem = "anchors (&name) are not allowed"
        elif getattr(event, "tag", None) is not None:
            problem = f"tags ({event.tag}) are not allowed"
        if problem:
            raise yaml.composer.ComposerError(None, None, problem, event.start_mark)
        return super().compose_node(parent, index)


def load_plain_yaml(text: str) -> Any:
    """Parse YAML that may hold only plain scalars, lists and maps."""
    return yaml.load(text, Loader=_PlainLoader)


def _split(name: str) -> tuple[str, str] | None:
    for suffix, channel in SUFFIXES.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], channel
    return None


class _CatalogueLoader(BaseLoader):
    """Serves template bodies, re-read when the file changes (no restart needed)."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Any]:
        parsed = self.catalogue._parse(template)
        path = self.catalogue._path(template)
        stamp = parsed.stamp

        def uptodate() -> bool:
            try:
                st = path.stat()
            except OSError:
                return False
            return (st.st_mtime_ns, st.st_size) == stamp

        return parsed.body, str(path), uptodate


class Catalogue:
    def __init__(
        self,
        templates_dir: Path,
        district: District,
        *,
        max_segments: int = 2,
        limits: Mapping[str, Limits] | None = None,
        clock: Clock = system_clock,
        tz: dt.tzinfo = dt.UTC,
    ) -> None:
        self.dir = templates_dir
        # `{{ today }}` and approval times come from the clock (simulated runs move it).
        self.clock = clock
        self.tz = tz
        self.district = district
        self.max_segments = max_segments
        self.limits = dict(limits or {"sms": SMS_LIMITS, "letter": LETTER_LIMITS})
        self._cache: dict[str, _Parsed] = {}
        self._listing: tuple[int, dict[str, tuple[Path, str]]] | None = None
        self._envs = {
            channel: BoundedSandbox(
                self.limits[channel],
                loader=_CatalogueLoader(self),
                undefined=StrictUndefined,
                autoescape=channel == "letter",
                auto_reload=True,
                keep_trailing_newline=False,
            )
            for channel in ("sms", "letter")
        }

    # -- files ---------------------------------------------------------------------------

    def _files(self) -> dict[str, tuple[Path, str]]:
        """Template files by name; the folder is listed again only when it changes."""
        try:
            stamp = self.dir.stat().st_mtime_ns
        except OSError:
            return {}
        if self._listing is not None and self._listing[0] == stamp:
            return self._listing[1]
        out: dict[str, tuple[Path, str]] = {}
        for path in sorted(self.dir.iterdir()):
            split = _split(path.name)
            if split:
                out[split[0]] = (path, split[1])
        self._listing = (stamp, out)
        return out

    def _path(self, name: str) -> Path:
        try:
            return self._files()[name][0]
        except KeyError:
            raise UnknownName(f"no template {name!r} in {self.dir}") from None

    def _parse(self, name: str) -> _Parsed:
        files = self._files()
        if name not in files:
            raise UnknownName(f"no template {name!r} in {self.dir}")
        path, channel = files[name]
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(name)
        if cached is not None and cached.stamp == stamp:
            return cached
        parsed = self._parse_file(name, path, channel, stamp)
        self._cache[name] = parsed
        return parsed

    def _parse_file(self, name: str, path: Path, channel: str, stamp: tuple[int, int]) -> _Parsed:
        raw = path.read_bytes()
        source = raw.decode("utf-8", errors="replace")
        problems: list[LintProblem] = []
        lines = source.split("\n")
        data: dict[str, Any] = {}
        body_lines = lines
        if lines and lines[0].strip() == "---":
            try:
                end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
            except StopIteration:
                problems.append(LintProblem(path, 1, name, "front matter has no closing ---"))
                end = 0
            front = "\n".join(lines[1:end])
            if end and len(front.encode("utf-8")) > MAX_FRONT_MATTER_BYTES:
                problems.append(
                    LintProblem(
                        path,
                        1,
                        name,
                        f"front matter larger than {MAX_FRONT_MATTER_BYTES} bytes (size limit)",
                    )
                )
            elif end:
                try:
                    loaded = load_plain_yaml(front) or {}
                    if not isinstance(loaded, dict):
                        raise yaml.YAMLError("front matter must be a mapping")
                    data = loaded
                except yaml.YAMLError as exc:
                    mark = getattr(exc, "problem_mark", None)
                    line = mark.line + 2 if mark else 1
                    problems.append(LintProblem(path, line, name, f"front matter: {exc}"))
            if end:
                body_lines = [""] * (end + 1) + lines[end + 1 :]
        else:
            problems.append(LintProblem(path, 1, name, "missing front matter (--- ... ---)"))
        body = "\n".join(body_lines)
        declared = str(data.get("channel", channel))
        if declared not in ("sms", "letter"):
            problems.append(LintProblem(path, 2, name, f"unknown channel {declared!r}"))
        elif declared != channel:
            problems.append(
                LintProblem(path, 2, name, f"channel {declared!r} but the file is a {channel}")
            )
        audience = data.get("audience", ["everyone"])
        if not isinstance(audience, (str, list)):
            problems.append(
                LintProblem(path, _line_of(lines, "audience"), name, "audience must be a list")
            )
            audience = []
        audience = [audience] if isinstance(audience, str) else list(audience or [])
        unknown = sorted(set(map(str, audience)) - AUDIENCES)
        if unknown:
            problems.append(
                LintProblem(path, _line_of(lines, "audience"), name, f"unknown audience {unknown}")
            )
        variables: frozenset[str] = frozenset()
        try:
            variables = frozenset(meta.find_undeclared_variables(self._envs["sms"].parse(body)))
        except TemplateSyntaxError as exc:
            problems.append(
                LintProblem(path, exc.lineno or 1, name, f"syntax error: {exc.message}")
            )
        info = TemplateInfo(
            name=name,
            channel="letter" if channel == "letter" else "sms",
            theme=str(data.get("theme", "")),
            audience=tuple(map(str, audience)),
            description=str(data.get("description", "")),
            pool=str(data["pool"]) if data.get("pool") else None,
            path=path,
            source_hash=hashlib.sha256(raw).hexdigest(),
            variables=variables,
            per_recipient=bool(variables & RECIPIENT_VARIABLES),
            modified_at=dt.datetime.fromtimestamp(st_mtime(path), dt.UTC),
            wrap=bool(data.get("wrap", True)),
        )
        return _Parsed(info, body, data, tuple(problems), stamp)

    # -- lookup --------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self._files())

    def get(self, name: str) -> TemplateInfo:
        parsed = self._parse(name)
        assert parsed.info is not None
        return parsed.info

    def pool(self, pool: str) -> list[TemplateInfo]:
        members = [i for i in (self.get(n) for n in self.names()) if i.pool == pool]
        if not members:
            raise UnknownName(f"rotation pool {pool!r} has no templates in {self.dir}")
        return sorted(members, key=lambda i: i.name)

    def pick_from_pool(self, pool: str, index: int) -> TemplateInfo:
        members = self.pool(pool)
        return members[index % len(members)]

    # -- rendering -----------------------------------------------------------------------

    def context(
        self,
        *,
        town: Town | None = None,
        village: Village | None = None,
        recipient: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        today: dt.date | None = None,
    ) -> dict[str, Any]:
        d = self.district.district
        s = d.survey
        day = today or self.clock().astimezone(self.tz).date()
        ctx: dict[str, Any] = {
            "district": d.name,
            "district_short": d.short_name,
            "office": d.office,
            "signature": d.signature,
            "opt_out": d.opt_out,
            "hotline": s.hotline,
            "survey_household_start": cn_date(s.household_start),
            "survey_household_end": cn_date(s.household_end),
            "survey_phone_start": cn_date(s.phone_start),
            "survey_phone_end": cn_date(s.phone_end),
            "today": f"{day.year}年{cn_date(day)}",
        }
        if town is not None:
            ctx["town"] = town.name
        if village is not None:
            ctx["village"] = village.name
        if recipient is not None:
            ctx.update({k: v for k, v in recipient.items() if k in RECIPIENT_VARIABLES})
        if extra:
            ctx.update(extra)
        return ctx

    def render(
        self, name: str, context: Mapping[str, Any], *, max_segments: int | None = None
    ) -> Rendered:
        """Render within the channel's limits; any failure is a `TemplateError` naming the
        file and, where it can be told, the line. With `max_segments`, an SMS longer than
        that many segments is refused (`TemplateLimitError`) rather than sent long."""
        info = self.get(name)
        env = self._envs[info.channel]
        try:
            template = env.get_template(name)
        except TemplateSyntaxError as exc:
            raise TemplateError(
                f"{info.path}:{exc.lineno}: {name}: syntax error: {exc.message}"
            ) from None
        try:
            body = render_bounded(template, context, self.limits[info.channel])
        except Exception as exc:  # anything a template does wrong is the template's error
            raise _render_error(info, exc) from None
        if info.channel == "letter":
            return Rendered(name, info.source_hash, body, len(body), 0, "html")
        text = "".join(line.strip() for line in body.splitlines())
        if info.wrap:
            d = self.district.district
            text = f"{d.signature}{text}{d.opt_out}"
        length = measure(text)
        if max_segments is not None and length.segments > max_segments:
            raise TemplateLimitError(
                f"{info.path}: {name}: {length.chars} characters make {length.segments} "
                f"segments, more than PINGAN_MAX_SMS_SEGMENTS={max_segments}"
            )
        return Rendered(
            name, info.source_hash, text, length.chars, length.segments, length.encoding
        )

    def event_values(self, raw: Mapping[str, Any]) -> dict[str, str]:
        """The event variables an alert may show, from what a case recorded.

        A case's free text never reaches a message: its fraud type is shown only if it is on
        the configured list (district.yaml `fraud_types`), else as the generic phrase.
        """
        out: dict[str, str] = {}
        if "fraud_type" in raw:
            out["fraud_type"] = self.district.fraud_types.phrase(str(raw["fraud_type"] or ""))
        if "amount_band" in raw:
            band = str(raw["amount_band"])
            if band not in AMOUNT_BANDS:
                raise TemplateError(f"unknown amount band {band!r}")
            out["amount_band"] = band
        if "case_date" in raw:
            value = str(raw["case_date"])
            try:
                out["case_date"] = cn_date(dt.date.fromisoformat(value))
            except ValueError:
                if not re.fullmatch(r"\d{1,2}月\d{1,2}日", value):
                    raise TemplateError(f"case date {value!r} is not a date") from None
                out["case_date"] = value
        return out

    # -- approval ------------------------------------------------------------------------

    @property
    def approvals_path(self) -> Path:
        return self.dir / APPROVALS_FILE

    def approvals(self) -> dict[str, dict[str, Any]]:
        if not self.approvals_path.exists():
            return {}
        try:
            data = load_plain_yaml(self.approvals_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise TemplateError(f"{self.approvals_path}: {exc}") from None
        if not isinstance(data, dict):
            raise TemplateError(f"{self.approvals_path}: must map template names to approvals")
        return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}

    def approval_state(self, name: str) -> ApprovalState:
        record = self.approvals().get(name)
        if record is None:
            return "never"
        return "approved" if record.get("hash") == self.get(name).source_hash else "changed"

    def require_approved(self, name: str) -> TemplateInfo:
        info = self.get(name)
        state = self.approval_state(name)
        if state == "approved":
            return info
        why = "changed since its approval" if state == "changed" else "never approved"
        raise TemplateNotApproved(
            f"template {name!r} ({info.path}) is {why}: review it, then "
            f"`pingan templates approve {name} --by NAME`"
        )

    def approve(self, name: str, by: str, *, now: dt.datetime | None = None) -> None:
        info = self.get(name)
        problems = self.lint([name])
        if problems:
            raise TemplateError(
                "cannot approve a template that fails lint:\n" + "\n".join(map(str, problems))
            )
        approvals = self.approvals()
        approvals[name] = {
            "hash": info.source_hash,
            "approved_by": by,
            "approved_at": (now or self.clock()).isoformat(timespec="seconds"),
        }
        text = yaml.safe_dump(dict(sorted(approvals.items())), allow_unicode=True, sort_keys=False)
        header = "# Approved content hashes (sha256 of each template file). Written by\n"
        header += "# `pingan templates approve`; review changes to this file with the templates.\n"
        tmp = self.approvals_path.with_suffix(".tmp")
        tmp.write_text(header + text, encoding="utf-8")
        tmp.replace(self.approvals_path)

    # -- lint ----------------------------------------------------------------------------

    def sample_context(self, info: TemplateInfo) -> dict[str, Any]:
        town, village = next(self.district.villages())
        return self.context(
            town=town,
            village=village if info.channel == "sms" else None,
            recipient={"name": "张三", "segments": ["elderly"]} if info.channel == "sms" else None,
            extra={"fraud_type": "刷单返利", "amount_band": "十万元以上", "case_date": "10月9日"}
            if info.channel == "sms"
            else None,
        )

    def _lint_contexts(self, info: TemplateInfo) -> Iterator[tuple[str, dict[str, Any]]]:
        """The sample, then every village of the district (and, for an alert, every fraud
        type it may name), labelled: a template may break a limit on one place only."""
        yield "", self.sample_context(info)
        if info.channel != "sms" or not info.variables & (PLACE_VARIABLES | EVENT_VARIABLES):
            return
        sample = self.sample_context(info)
        kinds = self.district.fraud_types
        types = (*kinds.known, kinds.generic) if "fraud_type" in info.variables else ("",)
        for town, village in self.district.villages():
            for fraud_type in types:
                extra = {k: sample[k] for k in EVENT_VARIABLES}
                extra.update({"fraud_type": fraud_type} if fraud_type else {})
                label = f" (for {town.name} {village.name}{' ' + fraud_type if fraud_type else ''})"
                yield (
                    label,
                    self.context(
                        town=town,
                        village=village,
                        recipient={"name": sample["name"], "segments": sample["segments"]},
                        extra=extra,
                    ),
                )

    def _render_places(
        self, info: TemplateInfo
    ) -> tuple[Rendered | None, str, TemplateError | None]:
        """The longest rendering over `_lint_contexts` and where, or the first failure."""
        longest: tuple[Rendered | None, str] = (None, "")
        deadline = time.monotonic() + LINT_SECONDS
        for label, ctx in self._lint_contexts(info):
            try:
                rendered = self.render(info.name, ctx)
            except TemplateError as exc:
                return None, label, exc
            if longest[0] is None or rendered.chars > longest[0].chars:
                longest = (rendered, label)
            if time.monotonic() > deadline:
                break
        return longest[0], longest[1], None

    def lint(
        self, names: Sequence[str] | None = None, *, pools_used: Sequence[str] = ()
    ) -> list[LintProblem]:
        problems: list[LintProblem] = []
        selected = list(names) if names else self.names()
        for name in selected:
            parsed = self._parse(name)
            problems.extend(parsed.problems)
            info = parsed.info
            if info is None or any("syntax error" in p.reason for p in parsed.problems):
                continue
            lines = info.path.read_text(encoding="utf-8", errors="replace").split("\n")
            allowed = CHANNEL_VARIABLES[info.channel]
            for var in sorted(info.variables - allowed):
                problems.append(
                    LintProblem(
                        info.path,
                        _line_of(lines, var),
                        name,
                        f"variable {var!r} is not defined for {info.channel} templates "
                        f"(known: {', '.join(sorted(allowed))})",
                    )
                )
            if info.variables - allowed:
                continue
            rendered, where, failure = self._render_places(info)
            if failure is not None:
                message = str(failure)
                # The problem line names file, line and template itself.
                reason = re.sub(
                    rf"^{re.escape(str(info.path))}(:\d+)?: {re.escape(name)}: ", "", message
                )
                problems.append(
                    LintProblem(info.path, _error_line(message), name, f"{reason}{where}")
                )
                continue
            assert rendered is not None
            if info.channel == "sms":
                d = self.district.district
                if not rendered.text.startswith(d.signature):
                    problems.append(
                        LintProblem(
                            info.path,
                            1,
                            name,
                            f"SMS does not start with the signature {d.signature}",
                        )
                    )
                if d.opt_out not in rendered.text:
                    problems.append(
                        LintProblem(
                            info.path, 1, name, f"SMS lacks the opt-out wording {d.opt_out}"
                        )
                    )
                if rendered.segments > self.max_segments:
                    problems.append(
                        LintProblem(
                            info.path,
                            1,
                            name,
                            f"{rendered.chars} characters make {rendered.segments} segments "
                            f"(at most {self.max_segments}){where}",
                        )
                    )
        if names is None:
            known_pools = {i.pool for i in (self.get(n) for n in self.names()) if i.pool}
            for pool in pools_used:
                if pool not in known_pools:
                    problems.append(
                        LintProblem(
                            self.dir, 0, pool, "rotation pool is empty (no template names it)"
                        )
                    )
        return problems


def st_mtime(path: Path) -> float:
    return path.stat().st_mtime


def _line_of(lines: list[str], needle: str) -> int:
    pattern = re.compile(rf"\b{re.escape(needle)}\b")
    for i, line in enumerate(lines, start=1):
        if pattern.search(line):
            return i
    return 1


def _render_error(info: TemplateInfo, exc: Exception) -> TemplateError:
    """`exc`, raised while rendering, as a TemplateError with the template's file and line."""
    line = getattr(exc, "lineno", None) if isinstance(exc, TemplateLimitError) else None
    line = line or _template_line(exc, str(info.path))
    where = f"{info.path}:{line}" if line else str(info.path)
    if isinstance(exc, SecurityError):
        reason = f"not allowed in a template: {exc}"
    elif isinstance(exc, UndefinedError):
        reason = str(exc.message)
    elif isinstance(exc, (TemplateError, JinjaTemplateError)):
        reason = str(exc)
    elif isinstance(exc, RecursionError):
        reason = "recursion too deep (size limit)"
    else:
        reason = f"{type(exc).__name__}: {exc}"
    limit = isinstance(exc, (TemplateLimitError, RecursionError))
    return (TemplateLimitError if limit else TemplateError)(f"{where}: {info.name}: {reason}")


def _template_line(exc: BaseException, filename: str) -> int | None:
    """The template line an error came from: Jinja rewrites tracebacks to point at it."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _error_line(message: str) -> int:
    m = re.search(r":(\d+):", message)
    return int(m.group(1)) if m else 1
