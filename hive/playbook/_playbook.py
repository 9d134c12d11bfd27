"""Playbooks: YAML files, read into plain objects the engine runs.

The format (``hive/playbooks/README.md`` shows it with examples)::

    id: reverse-shell                # unique; letters, digits, . _ -
    title: Reverse shell: kill it and block its remote end
    description: free text
    enabled: true
    mode: auto                       # auto | approval | dry-run (a step may override)
    trigger:                         # every key given must match; within a key, any value
      rules: [139f073e-...]          #   alert.rule_id is one of these
      tags: [attack.t1059.004]       #   the alert has one of these tags
      levels: [high, critical]       #   alert.level is one of these
      min_level: high                #   alert.level is at least this
      incident: true                 #   the alert belongs to an incident (false: does not)
      agents: ["web-*"]              #   glob on alert.agent
      exclude_agents: ["bastion-*"]
    trigger:                         # or: on a stored AI verdict of an incident (hive.ai), never on alerts
      ai_verdict:                    #   every key given must hold
        min_severity: high           #   verdict.severity is at least this
        min_confidence: 0.8          #   verdict.confidence is at least this (0 to 1)
        techniques: [T1059]          #   one of its techniques is one of these (or a sub-technique)
        recommended: true            #   the model recommended this playbook
      agents: ["web-*"]              #   (only agents and exclude_agents go with ai_verdict)
    conditions:                      # all must hold; a missing field fails every op but exists
      - {field: event.image, op: startswith, value: /tmp/}
    limits:
      cooldown: 60s                  # after it ran for a key, not again for that key so soon
      key: "{{ alert.agent }}"       # the key (default: the agent)
      rate: 10/1h                    # at most this many runs in any such window, all keys
    steps:                           # sent in this order; the agent runs them in order
      - action: kill_process
        params: {pid: "{{ event.pid }}", tree: true}
        mode: approval               # optional, overrides the playbook's mode
        ttl: 10m                     # blocks and isolation: reverted after this long
        expires: 1h                  # how long it may wait for an approval or an offline agent
        agent: "{{ alert.agent }}"   # the agent it is for (the default)
        when: [{field: event.verdict, op: not_equals, value: block}]

Templates (``_template.py``) see ``alert`` (the whole alert), ``event`` (the
alert's first event on its own agent), ``playbook`` (id, title) and ``vars``
(values the hive is configured with, such as ``vars.webhook``).  On an
``ai_verdict`` trigger ``alert`` is the incident's most severe alert (the
earliest of them) and ``verdict`` the verdict (severity, techniques,
explanation, playbook, confidence, model, incident, id).  A parameter
that renders to an empty string is left out.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from hive._datafile import FileRefused, parse_yaml, read_yaml
from hive._regex import Regex, RegexError

from ._actions import ACTIONS, check_params
from ._errors import PlaybookError, TemplateError
from ._template import MISSING, Template, compile_value, resolve, value_roots

MAX_PLAYBOOKS = 1000
"""Playbooks loaded from all files together (one file, one playbook)."""
MAX_STEPS = 32
"""Steps in one playbook (each alert that triggers it may send all of them)."""
MAX_CONDITIONS = 64
"""Conditions in one list (``conditions``, a step's ``when``), tested on every alert."""
MODES = ("auto", "approval", "dry-run")
LEVELS = ("informational", "low", "medium", "high", "critical")
ROOTS = ("alert", "event", "playbook", "vars", "verdict")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)?\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
DEFAULT_KEY = "{{ alert.agent }}"

Duration = int | float | str


class _Struct(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class _VerdictSpec(_Struct, kw_only=True):
    min_severity: str = ""
    min_confidence: float = 0.0
    techniques: list[str] = []
    recommended: bool = False


class _TriggerSpec(_Struct, kw_only=True):
    ai_verdict: _VerdictSpec | None = None
    rules: list[str] = []
    tags: list[str] = []
    levels: list[str] = []
    min_level: str = ""
    incident: bool | None = None
    agents: list[str] = []
    exclude_agents: list[str] = []


class _ConditionSpec(_Struct, kw_only=True):
    field: str
    op: str = "equals"
    value: Any = None


class _LimitsSpec(_Struct, kw_only=True):
    cooldown: Duration = 0
    key: str = DEFAULT_KEY
    rate: str = ""


class _StepSpec(_Struct, kw_only=True):
    action: str
    params: dict[str, Any] = {}
    mode: str = ""
    ttl: Duration = 0
    expires: Duration = 0
    agent: str = DEFAULT_KEY
    when: list[_ConditionSpec] = []


class _PlaybookSpec(_Struct, kw_only=True):
    version: int = 1
    id: str
    title: str
    description: str = ""
    enabled: bool = True
    mode: str = "auto"
    trigger: _TriggerSpec
    conditions: list[_ConditionSpec] = []
    limits: _LimitsSpec = msgspec.field(default_factory=_LimitsSpec)
    steps: list[_StepSpec]


# ---- conditions --------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    return a == b or (not isinstance(a, (list, dict)) and str(a) == str(b))


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def _number(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _in_networks(v: Any, nets: list) -> bool:
    try:
        addr = ipaddress.ip_address(str(v))
    except ValueError:
        return False
    return any(addr.version == n.version and addr in n for n in nets)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "equals": _same,
    "not_equals": lambda v, x: not _same(v, x),
    "in": lambda v, x: any(_same(v, i) for i in x),
    "not_in": lambda v, x: not any(_same(v, i) for i in x),
    "contains": lambda v, x: any(_same(i, x) for i in v) if isinstance(v, list) else str(x) in str(v),
    "startswith": lambda v, x: any(str(v).startswith(str(i)) for i in _as_list(x)),
    "endswith": lambda v, x: any(str(v).endswith(str(i)) for i in _as_list(x)),
    "matches": lambda v, x: x.search(str(v)),
    "cidr": _in_networks,
    "lt": lambda v, x: (n := _number(v)) is not None and n < x,
    "gt": lambda v, x: (n := _number(v)) is not None and n > x,
}


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any

    def holds(self, scope: dict[str, Any]) -> bool:
        found = resolve(scope, self.field.split("."))
        present = found is not MISSING and found is not None
        if self.op == "exists":
            return present == self.value
        return present and _OPS[self.op](found, self.value)


def _condition(spec: _ConditionSpec, where: str) -> Condition:
    if spec.field.split(".")[0] not in ROOTS or not re.fullmatch(r"[A-Za-z0-9_.]+", spec.field):
        raise PlaybookError(f"{where}.field: {spec.field!r} must be a dotted path under "
                            f"{', '.join(ROOTS)} (e.g. event.image)")
    op, value = spec.op, spec.value
    if op != "exists" and op not in _OPS:
        raise PlaybookError(f"{where}.op: unknown op {op!r} (known: exists, {', '.join(_OPS)})")
    if op == "exists":
        if value is None:
            value = True
        if not isinstance(value, bool):
            raise PlaybookError(f"{where}.value: exists takes true or false, not {value!r}")
    elif value is None:
        raise PlaybookError(f"{where}.value: {op} needs a value")
    elif op in ("in", "not_in") and not isinstance(value, list):
        raise PlaybookError(f"{where}.value: {op} takes a list")
    elif op == "matches":
        try:
            value = Regex(str(value))
        except RegexError as e:
            raise PlaybookError(f"{where}.value: bad regex {value!r}: {e.reason}") from None
    elif op == "cidr":
        try:
            value = [ipaddress.ip_network(str(v), strict=False) for v in _as_list(value)]
        except ValueError as e:
            raise PlaybookError(f"{where}.value: {e}") from None
    elif op in ("lt", "gt"):
        if _number(value) is None:
            raise PlaybookError(f"{where}.value: {op} takes a number, not {value!r}")
        value = float(value)
    return Condition(spec.field, op, value)


# ---- the playbook ---------------------------------------------------------------


@dataclass(frozen=True)
class VerdictTrigger:
    """Which stored AI verdicts fire a playbook."""

    min_severity: int = 0
    """Index in LEVELS."""
    min_confidence: float = 0.0
    techniques: tuple[str, ...] = ()
    recommended: bool = False

    def matches(self, verdict: dict[str, Any], playbook_id: str) -> bool:
        severity = verdict.get("severity", "")
        if (LEVELS.index(severity) if severity in LEVELS else -1) < self.min_severity:
            return False
        if float(verdict.get("confidence", 0.0)) < self.min_confidence:
            return False
        if self.techniques and not any(t == w or t.startswith(w + ".") for t in verdict.get("techniques", ())
                                       for w in self.techniques):
            return False
        return not self.recommended or verdict.get("playbook") == playbook_id


@dataclass(frozen=True)
class Trigger:
    ai_verdict: VerdictTrigger | None = None
    """Set: the playbook fires on stored AI verdicts, never on alerts."""
    rules: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    levels: frozenset[str] = frozenset()
    min_level: int = 0
    incident: bool | None = None
    agents: tuple[str, ...] = ()
    exclude_agents: tuple[str, ...] = ()

    def matches(self, rule_id: str, tags: Iterable[str], level: str, incident: str, agent: str) -> bool:
        if self.ai_verdict is not None:
            return False
        if self.rules and rule_id not in self.rules:
            return False
        if self.tags and not self.tags.intersection(tags):
            return False
        if self.levels and level not in self.levels:
            return False
        if self.min_level and (LEVELS.index(level) if level in LEVELS else 0) < self.min_level:
            return False
        if self.incident is not None and bool(incident) != self.incident:
            return False
        return self.agent_matches(agent)

    def agent_matches(self, agent: str) -> bool:
        if self.agents and not any(fnmatch.fnmatchcase(agent, g) for g in self.agents):
            return False
        return not any(fnmatch.fnmatchcase(agent, g) for g in self.exclude_agents)

    def matches_verdict(self, verdict: dict[str, Any], agent: str, playbook_id: str) -> bool:
        return (self.ai_verdict is not None and self.ai_verdict.matches(verdict, playbook_id)
                and self.agent_matches(agent))


@dataclass(frozen=True)
class Limits:
    cooldown: float = 0.0
    key: Template | str = DEFAULT_KEY
    rate: tuple[int, float] | None = None
    """(runs, seconds)."""


@dataclass(frozen=True)
class Step:
    index: int
    action: str
    params: dict[str, Any]
    """Compiled: templates are ``Template`` objects."""
    mode: str
    ttl: float = 0.0
    expires: float = 0.0
    agent: Template | str = DEFAULT_KEY
    when: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class Playbook:
    id: str
    title: str
    trigger: Trigger
    steps: tuple[Step, ...]
    mode: str = "auto"
    description: str = ""
    enabled: bool = True
    conditions: tuple[Condition, ...] = ()
    limits: Limits = field(default_factory=Limits)
    path: Path | None = None


def parse_duration(value: Duration, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value).strip())
        if m is None:
            raise PlaybookError(f"{where}: {value!r} is not a duration (seconds, or e.g. 30s, 10m, 1h, 2d)")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise PlaybookError(f"{where}: a duration cannot be negative")
    return seconds


def _template(text: str, where: str) -> Template | str:
    try:
        value = compile_value(text)
    except TemplateError as e:
        raise PlaybookError(f"{where}: {e}") from None
    _check_roots(value, where)
    return value


def _check_roots(value: Any, where: str) -> None:
    bad = value_roots(value) - set(ROOTS)
    if bad:
        raise PlaybookError(f"{where}: templates may name {', '.join(ROOTS)}, not {', '.join(sorted(bad))}")


def _step(spec: _StepSpec, index: int, mode: str) -> Step:
    where = f"steps[{index}]"
    action = ACTIONS.get(spec.action)
    if action is None:
        raise PlaybookError(f"{where}.action: unknown action {spec.action!r} (known: {', '.join(ACTIONS)})")
    if spec.mode and spec.mode not in MODES:
        raise PlaybookError(f"{where}.mode: {spec.mode!r} is not one of {', '.join(MODES)}")
    try:
        params = {k: compile_value(v) for k, v in spec.params.items()}
    except TemplateError as e:
        raise PlaybookError(f"{where}.params: {e}") from None
    _check_roots(params, f"{where}.params")
    unknown = set(params) - action.params
    if unknown:
        raise PlaybookError(f"{where}.params: {spec.action} takes no {', '.join(sorted(unknown))} "
                            f"(it takes {', '.join(sorted(action.params)) or 'nothing'})")
    missing = action.required - set(params)
    if missing:
        raise PlaybookError(f"{where}.params: {spec.action} needs {', '.join(sorted(missing))}")
    if action.one_of and not action.one_of & set(params):
        raise PlaybookError(f"{where}.params: {spec.action} needs one of {', '.join(sorted(action.one_of))}")
    if not value_roots(params):
        why = check_params(spec.action, params)
        if why:
            raise PlaybookError(f"{where}.params: {why}")
    ttl = parse_duration(spec.ttl, f"{where}.ttl")
    if ttl and not action.revert:
        raise PlaybookError(f"{where}.ttl: {spec.action} cannot be reverted, so it takes no ttl "
                            f"(only {', '.join(n for n, a in ACTIONS.items() if a.revert)} do)")
    return Step(
        index=index, action=spec.action, params=params, mode=spec.mode or mode, ttl=ttl,
        expires=parse_duration(spec.expires, f"{where}.expires"),
        agent=_template(spec.agent, f"{where}.agent"),
        when=tuple(_condition(c, f"{where}.when[{i}]") for i, c in enumerate(spec.when)),
    )


_TECHNIQUE = re.compile(r"T[0-9]{4}(\.[0-9]{3})?\Z")


def _verdict_trigger(spec: _TriggerSpec) -> Trigger:
    v = spec.ai_verdict
    assert v is not None
    if spec.rules or spec.tags or spec.levels or spec.min_level or spec.incident is not None:
        raise PlaybookError("trigger: with ai_verdict, only agents and exclude_agents may be given (it fires on "
                            "an incident's verdict, not on an alert)")
    if v.min_severity and v.min_severity not in LEVELS:
        raise PlaybookError(f"trigger.ai_verdict.min_severity: {v.min_severity!r} is not one of {', '.join(LEVELS)}")
    if not 0 <= v.min_confidence <= 1:
        raise PlaybookError(f"trigger.ai_verdict.min_confidence: {v.min_confidence!r} is not from 0 to 1")
    bad = [t for t in v.techniques if not _TECHNIQUE.match(t)]
    if bad:
        raise PlaybookError(f"trigger.ai_verdict.techniques: {bad[0]!r} is not an ATT&CK id (T1059, T1059.004)")
    if not (v.min_severity or v.min_confidence or v.techniques or v.recommended):
        raise PlaybookError("trigger.ai_verdict: it would fire on every verdict; give min_severity, "
                            "min_confidence, techniques or recommended")
    return Trigger(ai_verdict=VerdictTrigger(
        min_severity=LEVELS.index(v.min_severity) if v.min_severity else 0, min_confidence=v.min_confidence,
        techniques=tuple(v.techniques), recommended=v.recommended),
        agents=tuple(spec.agents), exclude_agents=tuple(spec.exclude_agents))


def _trigger(spec: _TriggerSpec) -> Trigger:
    if spec.ai_verdict is not None:
        return _verdict_trigger(spec)
    for lv in [*spec.levels, *([spec.min_level] if spec.min_level else [])]:
        if lv not in LEVELS:
            raise PlaybookError(f"trigger: level {lv!r} is not one of {', '.join(LEVELS)}")
    if not (spec.rules or spec.tags or spec.levels or spec.min_level or spec.incident is not None):
        raise PlaybookError("trigger: it would match every alert; give rules, tags, levels, min_level or incident")
    return Trigger(
        rules=frozenset(spec.rules), tags=frozenset(spec.tags), levels=frozenset(spec.levels),
        min_level=LEVELS.index(spec.min_level) if spec.min_level else 0, incident=spec.incident,
        agents=tuple(spec.agents), exclude_agents=tuple(spec.exclude_agents),
    )


def _limits(spec: _LimitsSpec) -> Limits:
    rate = None
    if spec.rate:
        count, _, period = spec.rate.partition("/")
        if not count.strip().isdigit() or int(count) < 1 or not period:
            raise PlaybookError(f"limits.rate: {spec.rate!r} is not RUNS/DURATION (e.g. 10/1h)")
        rate = (int(count), parse_duration(period, "limits.rate"))
        if rate[1] <= 0:
            raise PlaybookError("limits.rate: the window must be longer than zero")
    return Limits(cooldown=parse_duration(spec.cooldown, "limits.cooldown"),
                  key=_template(spec.key, "limits.key"), rate=rate)


def parse_playbook(text: str, origin: Path | str = "<playbook>") -> Playbook:
    """One playbook from YAML text; a PlaybookError names what is wrong and where."""
    try:
        documents = parse_yaml(text)
    except FileRefused as e:
        raise _refused(e, origin) from None
    return _playbook(documents, origin)


def _refused(e: FileRefused, origin: Path | str) -> PlaybookError:
    return PlaybookError(f"not valid YAML: {e.reason}" if e.kind == "yaml" else e.reason,
                         path=origin)


def _playbook(documents: list, origin: Path | str) -> Playbook:
    if len(documents) > 1:
        raise PlaybookError(f"{len(documents)} YAML documents: a playbook file holds one",
                            path=origin)
    doc = documents[0] if documents else None
    if not isinstance(doc, dict):
        raise PlaybookError("expected a mapping with id, title, trigger and steps", path=origin)
    try:
        spec = msgspec.convert(doc, _PlaybookSpec)
    except msgspec.ValidationError as e:
        raise PlaybookError(_readable(str(e)), path=origin) from None
    try:
        if spec.version != 1:
            raise PlaybookError(f"version {spec.version} is not supported (1 is)")
        if not _ID.match(spec.id):
            raise PlaybookError(f"id: {spec.id!r} must be 1-64 letters, digits or . _ - ")
        if spec.mode not in MODES:
            raise PlaybookError(f"mode: {spec.mode!r} is not one of {', '.join(MODES)}")
        if not spec.steps:
            raise PlaybookError("steps: a playbook needs at least one step")
        if len(spec.steps) > MAX_STEPS:
            raise PlaybookError(f"steps: {len(spec.steps)} steps, more than {MAX_STEPS} (MAX_STEPS)")
        for where, conditions in [("conditions", spec.conditions),
                                  *((f"steps[{i}].when", s.when) for i, s in enumerate(spec.steps))]:
            if len(conditions) > MAX_CONDITIONS:
                raise PlaybookError(f"{where}: {len(conditions)} conditions, more than "
                                    f"{MAX_CONDITIONS} (MAX_CONDITIONS)")
        return Playbook(
            id=spec.id, title=spec.title, description=spec.description, enabled=spec.enabled,
            mode=spec.mode, trigger=_trigger(spec.trigger),
            conditions=tuple(_condition(c, f"conditions[{i}]") for i, c in enumerate(spec.conditions)),
            limits=_limits(spec.limits),
            steps=tuple(_step(s, i, spec.mode) for i, s in enumerate(spec.steps)),
            path=Path(origin) if isinstance(origin, Path) else None,
        )
    except PlaybookError as e:
        raise PlaybookError(f"[{spec.id}] {e.reason}", path=origin) from None


def _readable(msgspec_message: str) -> str:
    """msgspec says ``... - at `$.steps[0].ttl```; we say ``steps[0].ttl: ...``."""
    text = msgspec_message.replace("Object contains unknown field", "unknown key")
    text = text.replace("Object missing required field", "missing required key")
    m = re.match(r"(.*) - at `\$\.?(.*)`\Z", text)
    if not m:
        return text
    text, where = m.groups()
    return f"{where}: {text}" if where else text


def load_playbook(path: Path | str) -> Playbook:
    path = Path(path)
    try:
        documents = read_yaml(path)
    except FileRefused as e:
        raise _refused(e, path) from None
    return _playbook(documents, path)


@dataclass
class CheckReport:
    """What loaded from playbook files, and why the rest did not."""

    playbooks: list[Playbook] = field(default_factory=list)
    """Enabled playbooks, in file order."""
    disabled: list[Playbook] = field(default_factory=list)
    failures: list[PlaybookError] = field(default_factory=list)
    files: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    def format(self) -> str:
        """A text report for ``immune-node playbooks check``: one line per
        failure, then the counts."""
        lines = [f"FAILED {f}" for f in self.failures]
        lines += [f"ok     {p.path}: [{p.id}] {p.title} ({_summary(p)})" for p in self.playbooks]
        lines += [f"off    {p.path}: [{p.id}] {p.title} (disabled)" for p in self.disabled]
        lines.append(f"{self.files} files: {len(self.playbooks)} playbooks loaded, "
                     f"{len(self.disabled)} disabled, {len(self.failures)} failed")
        return "\n".join(lines)


def _summary(p: Playbook) -> str:
    return ", ".join(f"{s.action}" + (f" [{s.mode}]" if s.mode != "auto" else "")
                     + (f" ttl {s.ttl:g}s" if s.ttl else "") for s in p.steps)


def check_playbooks(*paths: Path | str) -> CheckReport:
    """Load every ``*.yml``/``*.yaml`` under the given folders (or files) and
    report what loads and exactly why the rest does not.  A second playbook
    with an id already taken fails."""
    report = CheckReport()
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix in (".yml", ".yaml") and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            report.failures.append(PlaybookError("no such file or folder", path=p))
    seen: dict[str, Path | None] = {}
    for f in files:
        report.files += 1
        if len(seen) >= MAX_PLAYBOOKS:
            report.failures.append(PlaybookError(
                f"not read: {MAX_PLAYBOOKS} playbooks are loaded already (MAX_PLAYBOOKS)", path=f))
            continue
        try:
            pb = load_playbook(f)
        except PlaybookError as e:
            report.failures.append(e)
            continue
        if pb.id in seen:
            report.failures.append(PlaybookError(f"[{pb.id}] id already used by {seen[pb.id]}", path=f))
            continue
        seen[pb.id] = f
        (report.playbooks if pb.enabled else report.disabled).append(pb)
    return report


def signature(*paths: Path | str) -> tuple:
    """Changes when a playbook file under ``paths`` is added, removed or modified."""
    out = []
    for p in map(Path, paths):
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.suffix in (".yml", ".yaml"):
                try:
                    st = f.stat()
                except OSError:
                    continue
                out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)
