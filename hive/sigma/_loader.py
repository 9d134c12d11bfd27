"""Read rule files and directories into a RuleSet, and say why a rule did not load.

Every ``*.yml``/``*.yaml`` file under a directory is read (hidden ones skipped).
A file may hold several YAML documents (pySigma's collections with ``action:
global``/``repeat`` included).  Detection rules are compiled one by one; a rule
that fails is reported and the rest load.  Correlation rules are resolved
after every file is read, so they may name rules in other files.

Parsing is cached per file (path, size, mtime), so reloading a directory after
one file changed only re-reads that file.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sigma.collection import SigmaCollection
from sigma.correlations import (
    CorrelationConditionAND,
    CorrelationConditionNOT,
    CorrelationConditionOR,
    SigmaCorrelationCondition,
    SigmaCorrelationRule,
    SigmaExtendedCorrelationCondition,
    SigmaRuleReference,
)
from sigma.exceptions import SigmaError, SigmaRuleLocation
from sigma.policy import SigmaPolicy
from sigma.policy.regex_engine import RegexEngine
from sigma.rule import SigmaRule

from hive._datafile import MAX_RULES, FileRefused, read_yaml
from hive._regex import Regex, RegexError
from hive.correlate import MAX_DEPTH, TYPES, CorrelationRule

from ._compile import Rule, compile_rule
from ._errors import RuleError, sigma_reason
from ._fields import FIELDS
from ._index import RuleIndex

SUFFIXES = (".yml", ".yaml")


@dataclass(frozen=True)
class LoadReport:
    """What loaded from a set of rule paths, and why the rest did not."""

    rules: tuple[Rule, ...] = ()
    correlations: tuple[CorrelationRule, ...] = ()
    failures: tuple[RuleError, ...] = ()
    files: int = 0

    @property
    def loaded(self) -> int:
        return len(self.rules) + len(self.correlations)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def ok(self) -> bool:
        return not self.failures

    def failures_by_kind(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.failures))

    def format(self) -> str:
        """A text report, one line per failure, for ``immune-node rules check``."""
        lines = [str(f) for f in self.failures]
        lines.append(f"{self.files} files: {len(self.rules)} detection rules and "
                     f"{len(self.correlations)} correlation rules loaded, {self.failed} failed")
        return "\n".join(lines)


@dataclass(frozen=True)
class RuleSet:
    """Loaded rules, indexed, ready for the engine."""

    index: RuleIndex
    correlations: tuple[CorrelationRule, ...]
    silent: frozenset[str]
    """Ids of rules that only feed correlations (``generate: false``) and raise no alert."""
    report: LoadReport
    paths: tuple[Path, ...] = ()
    """The files and directories it was loaded from."""
    signature: tuple = field(repr=False, default=())
    """(path, size, mtime) of every file read, to tell whether a reload is due."""


@dataclass(frozen=True, slots=True)
class _Parsed:
    """One file's rules: compiled detection rules, unresolved correlations, failures."""

    rules: tuple[Rule, ...]
    correlations: tuple[SigmaCorrelationRule, ...]
    failures: tuple[RuleError, ...]


class RuleCache:
    """Parsed files by (path, size, mtime), so a reload re-reads only changed files."""

    def __init__(self) -> None:
        self._files: dict[Path, tuple[tuple, _Parsed]] = {}

    def parse(self, path: Path, stamp: tuple) -> _Parsed:
        cached = self._files.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        parsed = _parse_file(path)
        self._files[path] = (stamp, parsed)
        return parsed

    def keep(self, paths: Iterable[Path]) -> None:
        """Forget files no longer present."""
        wanted = set(paths)
        for path in [p for p in self._files if p not in wanted]:
            del self._files[path]


def rule_files(paths: Sequence[Path | str]) -> list[tuple[Path, tuple]]:
    """Rule files under the given files and directories, with their (size, mtime) stamp."""
    found: list[tuple[Path, tuple]] = []
    for given in paths:
        path = Path(given)
        if path.is_file():
            candidates = [path]
        elif path.is_dir():
            # A linked folder is read through its target of the moment: a swap of the
            # link (``rules update``) is seen whole, and as a change of every path.
            root = path.resolve() if path.is_symlink() else path
            candidates = sorted(
                p for p in root.rglob("*")
                if p.suffix in SUFFIXES and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
            )
        else:
            raise RuleError("no such file or directory", kind="file", path=path)
        for candidate in candidates:
            try:
                st = candidate.stat()
            except OSError:
                continue  # removed since it was listed
            found.append((candidate, (st.st_size, st.st_mtime_ns)))
    return found


def signature(paths: Sequence[Path | str]) -> tuple:
    """What ``load_rules`` would read; compare two to know whether a reload is due."""
    return tuple((str(p), stamp) for p, stamp in rule_files(paths))


class _RegexEngine(RegexEngine):
    """How pySigma checks the ``re`` values of the rules it parses: with our RE2 compiler,
    so that a rule is refused for the reason it could not run, in one line (pySigma's
    own RE2 engine prints RE2's log on stderr as well)."""

    def compile(self, pattern: str, flags: int = 0) -> Any:
        try:
            regex = Regex(pattern, ignore_case=bool(flags & re.IGNORECASE),
                          multiline=bool(flags & re.MULTILINE), dotall=bool(flags & re.DOTALL))
        except RegexError as e:
            raise _Refused(e.reason) from None
        return regex.with_re_api()

    @property
    def error(self) -> type[Exception]:
        return _Refused


class _Refused(Exception):
    pass


_POLICY = SigmaPolicy(regex_engine=_RegexEngine())


def _parse_file(path: Path) -> _Parsed:
    """One file's rules; whatever the file holds, failures are reported, never raised."""
    try:
        return _parse_documents(path, read_yaml(path))
    except FileRefused as e:
        return _Parsed((), (), (RuleError(e.reason, kind=e.kind, path=path),))
    except Exception as e:  # pySigma on input nobody tried: refuse the file, load the rest
        return _Parsed((), (), (RuleError(f"unusable: {type(e).__name__}: {e}", kind="sigma",
                                          path=path),))


def _parse_documents(path: Path, documents: list) -> _Parsed:
    for number, document in enumerate(documents, 1):
        if not isinstance(document, dict):
            return _Parsed((), (), (RuleError(
                f"document {number} is a {type(document).__name__}, not a mapping",
                kind="yaml", path=path),))
        if not isinstance(document.get("id", ""), str):
            return _Parsed((), (), (RuleError(
                f"document {number}: id must be a UUID string, not {document['id']!r}",
                kind="metadata", path=path),))
    try:
        collection = SigmaCollection.from_dicts(
            documents, collect_errors=True, source=SigmaRuleLocation(path),
            collect_filters=True, resolve_references=False, policy=_POLICY)
    except SigmaError as e:
        return _Parsed((), (), (RuleError(sigma_reason(e), kind="sigma", path=path),))
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        # pySigma assumes well-formed input in places and fails with Python errors otherwise.
        return _Parsed((), (), (RuleError(f"malformed rule: {type(e).__name__}: {e}",
                                          kind="sigma", path=path),))
    # collection.errors repeats each rule's errors; keep those of the collection itself.
    owned = {id(e) for item in [*collection.rules, *collection.filters] for e in item.errors}
    failures = [RuleError(sigma_reason(e), kind="sigma", path=path)
                for e in collection.errors if id(e) not in owned]
    rules: list[Rule] = []
    correlations: list[SigmaCorrelationRule] = []
    for item in collection.rules:
        if isinstance(item, SigmaRule):
            try:
                rules.append(compile_rule(item, path))
            except RuleError as e:
                failures.append(e)
        elif item.errors:
            failures.append(RuleError(sigma_reason(item.errors[0]), kind="sigma", path=path,
                                      rule_id=str(item.id or ""), title=item.title or ""))
        else:
            correlations.append(item)
    failures.extend(
        RuleError("Sigma meta-filters are not supported; add a filter selection to the rule",
                  kind="sigma", path=path, rule_id=str(f.id or ""), title=f.title or "")
        for f in collection.filters)
    return _Parsed(tuple(rules), tuple(correlations), tuple(failures))


def _expression(node) -> object:
    """pySigma's parsed extended condition as nested tuples over rule references."""
    if isinstance(node, SigmaRuleReference):
        return node.reference
    op = {CorrelationConditionAND: "and", CorrelationConditionOR: "or",
          CorrelationConditionNOT: "not"}[type(node)]
    return (op, *(_expression(a) for a in node.args))


def _rename(expression, names: dict[str, str]) -> object:
    if isinstance(expression, str):
        return names[expression]
    return (expression[0], *(_rename(e, names) for e in expression[1:]))


def _resolve(item: SigmaCorrelationRule, path: Path, ids: dict[str, str],
             fields: dict[str, frozenset[str]], failed: set[str]) -> CorrelationRule:
    """Our CorrelationRule for a pySigma one, its references turned into rule ids."""
    kind = item.type.name.lower()
    if kind not in TYPES:
        raise RuleError(f"correlation type {kind} is not supported (supported: "
                        f"{', '.join(TYPES)})", kind="correlation")
    condition = item.condition
    extended = isinstance(condition, SigmaExtendedCorrelationCondition)
    references = ([r.reference for r in item.rules] if item.rules is not None
                  else condition.get_referenced_rules())
    names: dict[str, str] = {}
    for reference in references:
        if reference in ids:
            names[reference] = ids[reference]
        elif reference in failed:
            raise RuleError(f"correlates rule {reference!r}, which did not load",
                            kind="reference")
        else:
            raise RuleError(f"correlates unknown rule {reference!r}", kind="reference")
    rule_ids = tuple(names[r] for r in references)
    aliases = {
        alias.alias: {names.get(ref.reference, ref.reference): name
                      for ref, name in alias.mapping.items()}
        for alias in item.aliases
    }
    for alias, mapping in aliases.items():
        unknown = sorted(set(mapping) - set(rule_ids))
        if unknown:
            raise RuleError(f"alias {alias!r} maps rule {unknown[0]!r}, which it does not "
                            "correlate", kind="reference")
    for group in item.group_by or ():
        for rule_id in rule_ids:
            name = aliases.get(group, {}).get(rule_id, group)
            if name not in fields[rule_id]:
                raise RuleError(f"group-by field {name!r} is not provided for the events of "
                                f"rule {rule_id}", kind="field")
    op, count, counted = "gte", float(len(rule_ids)), ""
    if isinstance(condition, SigmaCorrelationCondition):
        op, count = condition.op.name.lower(), condition.count
        if kind == "value_count":
            if not isinstance(condition.fieldref, str):
                raise RuleError("value_count counts exactly one field", kind="correlation")
            counted = condition.fieldref
            missing = [r for r in rule_ids if counted not in fields[r]]
            if missing:
                raise RuleError(f"field {counted!r} is not provided for the events of rule "
                                f"{missing[0]}", kind="field")
    try:
        return CorrelationRule(
            id=str(item.id), title=item.title or "", type=kind, rules=rule_ids,
            timespan=float(item.timespan.seconds), group_by=tuple(item.group_by or ()),
            op=op, count=count, field=counted, aliases=aliases,
            expression=_rename(_expression(condition.parsed), names) if extended else None,
            generate=item.generate, name=item.name or "",
            level=item.level.name.lower() if item.level is not None else "medium",
            tags=tuple(str(t) for t in item.tags), path=path,
            description=(item.description or "").strip(),
        )
    except ValueError as e:
        raise RuleError(str(e), kind="correlation") from e


def load_rules(paths: Sequence[Path | str], cache: RuleCache | None = None) -> RuleSet:
    """Load every rule under the given files and directories.

    Raises RuleError only if a given path does not exist; rules that fail are
    listed in the report.
    """
    cache = cache if cache is not None else RuleCache()
    files = rule_files(paths)
    cache.keep(p for p, _ in files)
    rules: list[Rule] = []
    failures: list[RuleError] = []
    pending: list[tuple[SigmaCorrelationRule, Path]] = []
    first: dict[str, Path] = {}
    ids: dict[str, str] = {}
    for path, stamp in files:
        if len(rules) + len(pending) >= MAX_RULES:  # not even read: reading takes time too
            failures.append(RuleError(f"not read: {MAX_RULES} rules are loaded already "
                                      "(MAX_RULES)", kind="limit", path=path))
            continue
        parsed = cache.parse(path, stamp)
        count = len(parsed.rules) + len(parsed.correlations)
        if len(rules) + len(pending) + count > MAX_RULES:
            failures.append(RuleError(f"its {count} rules would make more than {MAX_RULES} "
                                      "(MAX_RULES)", kind="limit", path=path))
            continue
        failures.extend(parsed.failures)
        for rule in parsed.rules:
            if rule.id in first:
                failures.append(RuleError(f"id already used by {first[rule.id]}",
                                          kind="duplicate", path=path, rule_id=rule.id,
                                          title=rule.title))
                continue
            first[rule.id] = path
            rules.append(rule)
            ids[rule.id] = rule.id
            if rule.name:
                ids.setdefault(rule.name, rule.id)
        pending.extend((item, path) for item in parsed.correlations)

    fields = {rule.id: FIELDS[rule.category] for rule in rules}
    failed = {f.rule_id for f in failures if f.rule_id}
    correlations: list[CorrelationRule] = []
    depths: dict[str, int] = {}
    """Correlation id -> how many correlations deep it is (its rules' depth + 1)."""
    # Correlations may correlate correlations: resolve in rounds until nothing moves.
    while pending:
        unresolved = {str(i.id) for i, _ in pending} | {i.name for i, _ in pending if i.name}
        waiting: list[tuple[SigmaCorrelationRule, Path]] = []
        for item, path in pending:
            rule_id, title = str(item.id or ""), item.title or ""
            try:
                if not rule_id:
                    raise RuleError("rule has no id (alerts and correlations need a stable "
                                    "one)", kind="metadata")
                if rule_id in first:
                    raise RuleError(f"id already used by {first[rule_id]}", kind="duplicate")
                references = ([r.reference for r in item.rules] if item.rules is not None
                              else item.condition.get_referenced_rules())
                odd = next((r for r in references if not isinstance(r, str)), None)
                if odd is not None:
                    raise RuleError(f"rules must name rules (an id or a name), not {odd!r}",
                                    kind="correlation")
                if any(r not in ids and r in unresolved for r in references):
                    waiting.append((item, path))
                    continue
                rule = _resolve(item, path, ids, fields, failed)
                depth = 1 + max(depths.get(r, 0) for r in rule.rules)
                if depth > MAX_DEPTH:
                    raise RuleError(f"correlations of correlations nest {depth} deep, more "
                                    f"than {MAX_DEPTH} (MAX_DEPTH)", kind="limit")
            except RuleError as e:
                failures.append(e.located(path=path, rule_id=rule_id, title=title))
                failed.update({rule_id, item.name or ""} - {""})
                continue
            first[rule.id] = path
            correlations.append(rule)
            ids[rule.id] = rule.id
            if rule.name:
                ids.setdefault(rule.name, rule.id)
            fields[rule.id] = frozenset(rule.group_by)
            depths[rule.id] = depth
        if len(waiting) == len(pending):
            failures.extend(
                RuleError("correlation references form a cycle", kind="reference", path=path,
                          rule_id=str(item.id or ""), title=item.title or "")
                for item, path in waiting)
            break
        pending = waiting

    referenced: dict[str, bool] = {}
    for correlation in correlations:
        for rule_id in correlation.rules:
            referenced[rule_id] = referenced.get(rule_id, False) or correlation.generate
    silent = frozenset(r for r, generate in referenced.items() if not generate)
    report = LoadReport(tuple(rules), tuple(correlations), tuple(failures), len(files))
    return RuleSet(RuleIndex(rules), tuple(correlations), silent, report,
                   tuple(Path(p) for p in paths), tuple((str(p), stamp) for p, stamp in files))


def check_rules(*paths: Path | str) -> LoadReport:
    """Load rules only to report what loads and why the rest does not
    (``immune-node rules check DIR``)."""
    return load_rules(paths).report
