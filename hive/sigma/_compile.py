"""Compile a pySigma detection into a matcher of our own.

pySigma parses the YAML, applies the modifiers and resolves the condition
(``1 of selection_*``, ``them``, ...) into a tree of AND/OR/NOT over
field-equals-value leaves.  We turn that tree into a small intermediate form,
merge value lists on one field into single tests (``endswith`` any of twenty
suffixes is one ``str.endswith(tuple)``), and build closures from it.  pySigma
is never called at match time.

The same intermediate form yields the rule's *keys*: whole tokens, or token
prefixes and suffixes, of which an event must have at least one to match.  The
index uses them so that an event is only tested against rules it could match.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SigmaTimestampPart,
    SpecialChars,
)

from hive._regex import Regex, RegexError, escape

from ._errors import RuleError, sigma_reason
from ._fields import FIELDS

_ANY = SpecialChars.WILDCARD_MULTI
_ONE = SpecialChars.WILDCARD_SINGLE

TOKEN = re.compile(r"[0-9a-z_]+")
"""What the index splits lower-cased field values into."""

# Tokens that occur in most events: a rule keyed on one of them is tested often.
_COMMON_TOKENS = frozenset(
    "usr bin sbin local lib lib64 libexec etc var tmp home root opt dev proc sys run share "
    "python python3 sh bash true false exe so py conf log x86_64 linux gnu srv src app data "
    "cache config json txt html js php node server new main index init test sudo "
    # auditd's record types, in every record of their type (_fields.py)
    "execve syscall path".split()
)

_UNSEEN = object()


class SigmaEvent:
    """One event as Sigma sees it: a logsource category and field values.

    Lower-cased values are computed once per field, on first use.
    """

    __slots__ = ("category", "fields", "event", "lowered")

    def __init__(self, category: str, fields: dict, event: object = None) -> None:
        self.category = category
        self.fields = fields
        self.event = event
        self.lowered: dict[str, str | None] = {}

    def lower(self, name: str) -> str | None:
        try:
            return self.lowered[name]
        except KeyError:
            value = self.fields.get(name)
            if value is not None:
                value = (value if type(value) is str else str(value)).lower()
            self.lowered[name] = value
            return value

    def text(self, name: str) -> str | None:
        value = self.fields.get(name)
        return value if value is None or type(value) is str else str(value)


Matcher = Callable[[SigmaEvent], bool]


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """A compiled detection rule."""

    id: str
    title: str
    category: str
    match: Matcher = field(repr=False)
    keys: frozenset[tuple[str, str, str]] | None = field(repr=False)
    """(field, kind, text) keys one of which every matching event has (see ``_best_key``);
    None: the rule has no such set and is tested on every event of its category."""
    fields: frozenset[str] = field(repr=False)
    name: str = ""
    level: str = "medium"
    tags: tuple[str, ...] = ()
    path: Path | None = None
    description: str = ""
    author: str = ""
    status: str = ""


# --------------------------------------------------------------------------
# Intermediate form
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Leaf:
    field: str | None
    """None for a keyword, matched against every field."""
    op: str
    """``any``/``all`` (string patterns), ``re``, ``cidr``, ``cmp``, ``exists``, ``absent``,
    ``fieldref``."""
    arg: object = None
    cased: bool = False


@dataclass(frozen=True, slots=True)
class _Node:
    op: str
    """``and``, ``or`` or ``not``."""
    args: tuple


def _normalize(parts) -> tuple:
    """Merge adjacent text and collapse runs of ``*``."""
    out: list = []
    for part in parts:
        if isinstance(part, Placeholder):
            raise RuleError(f"placeholder %{part.name}% needs a value list, and SENTINEL IMMUNE "
                            "defines none", kind="value")
        if isinstance(part, str):
            if not part:
                continue
            if out and isinstance(out[-1], str):
                out[-1] += part
                continue
        elif part is _ANY and out and out[-1] is _ANY:
            continue
        out.append(part)
    return tuple(out)


def _string_leaf(name: str | None, value: SigmaString, cased: bool) -> _Leaf:
    parts = _normalize(value.s)
    if not cased:
        parts = tuple(p.lower() if isinstance(p, str) else p for p in parts)
    if name is None:
        if not parts:
            raise RuleError("an empty keyword matches nothing", kind="value")
        # A keyword is a full-text search: found anywhere in a field.
        parts = _normalize((_ANY, *parts, _ANY))
    elif not parts:
        return _Leaf(name, "absent")
    return _Leaf(name, "any", (parts,), cased)


_COMPARE = {
    CompareOperators.LT: "lt", CompareOperators.LTE: "lte",
    CompareOperators.GT: "gt", CompareOperators.GTE: "gte",
}


# A regular expression that is only a literal, maybe anchored: plain text with escaped
# punctuation, between an optional ^ and an optional $.
_LITERAL_REGEX = re.compile(r"(\^?)((?:[^\\.^$*+?{}\[\]|()]|\\[!-/:-@\[-^`{-~])*)(\$?)")


def _regex_leaf(name: str, pattern: str, flags) -> _Leaf:
    """A ``re`` value: RE2 (linear time, whatever the pattern), or, for a literal, the
    string test it amounts to (a str method beats a call into RE2, and the index can
    key it)."""
    ignore_case = SigmaRegularExpressionFlag.IGNORECASE in flags
    multiline = SigmaRegularExpressionFlag.MULTILINE in flags
    literal = _LITERAL_REGEX.fullmatch(pattern)
    # Case folding is only the same as lower() for ASCII; ^ and $ mean lines under m.
    if literal is not None and not multiline and (pattern.isascii() or not ignore_case):
        start, text, end = literal.groups()
        text = re.sub(r"\\(.)", r"\1", text)
        parts = _normalize(("" if start else _ANY, text, "" if end else _ANY)) or ("",)
        if not ignore_case:
            return _Leaf(name, "any", (parts,), cased=True)
        return _Leaf(name, "any", (tuple(p.lower() if isinstance(p, str) else p
                                         for p in parts),))
    try:
        return _Leaf(name, "re", Regex(pattern, ignore_case=ignore_case, multiline=multiline,
                                       dotall=SigmaRegularExpressionFlag.DOTALL in flags))
    except RegexError as e:
        raise RuleError(str(e), kind="value") from None


def _value_leaf(name: str | None, value) -> _Leaf | _Node:
    if isinstance(value, SigmaExpansion):
        return _Node("or", tuple(_value_leaf(name, v) for v in value.values))
    if isinstance(value, SigmaCasedString):
        return _string_leaf(name, value, True)
    if isinstance(value, SigmaString):
        return _string_leaf(name, value, False)
    if isinstance(value, SigmaTimestampPart):
        raise RuleError("timestamp part modifiers (minute, hour, day, ...) are not supported",
                        kind="value")
    if isinstance(value, (SigmaNumber, SigmaBool)):
        # Sigma compares numbers and booleans with the field's text, as SQL's TEXT affinity does.
        return _string_leaf(name, SigmaString(str(value).lower()), False)
    if name is None:
        raise RuleError(f"a {type(value).__name__} value needs a field", kind="value")
    if isinstance(value, SigmaNull):
        return _Leaf(name, "absent")
    if isinstance(value, SigmaExists):
        return _Leaf(name, "exists" if value.exists else "absent")
    if isinstance(value, SigmaRegularExpression):
        return _regex_leaf(name, str(value.regexp), value.flags)
    if isinstance(value, SigmaCIDRExpression):
        return _Leaf(name, "cidr", value.network)
    if isinstance(value, SigmaCompareExpression):
        op = _COMPARE.get(value.op)
        if op is None:
            raise RuleError(f"comparison {value.op.name} is not supported", kind="value")
        return _Leaf(name, "cmp", (op, value.number.number))
    if isinstance(value, SigmaFieldReference):
        return _Leaf(name, "fieldref", (value.field, value.starts_with, value.ends_with))
    raise RuleError(f"value type {type(value).__name__} is not supported", kind="value")


def _from_condition(node) -> _Leaf | _Node:
    if isinstance(node, ConditionAND):
        return _Node("and", tuple(_from_condition(a) for a in node.args))
    if isinstance(node, ConditionOR):
        return _Node("or", tuple(_from_condition(a) for a in node.args))
    if isinstance(node, ConditionNOT):
        return _Node("not", (_from_condition(node.args[0]),))
    if isinstance(node, ConditionFieldEqualsValueExpression):
        return _value_leaf(node.field, node.value)
    if isinstance(node, ConditionValueExpression):
        return _value_leaf(None, node.value)
    raise RuleError(f"condition element {type(node).__name__} is not supported",
                    kind="condition")


def _simplify(node):
    """Flatten nested and/or, and merge pattern lists on one field into one leaf."""
    if isinstance(node, _Leaf):
        return node
    args = tuple(_simplify(a) for a in node.args)
    if node.op == "not":
        return _Node("not", args)
    flat: list = []
    for a in args:
        flat.extend(a.args if isinstance(a, _Node) and a.op == node.op else (a,))
    # Under OR, "any of" lists merge; under AND, "all of" lists and single patterns do.
    mergeable = "any" if node.op == "or" else "all"
    merged: dict = {}
    out: list = []
    for a in flat:
        # Keywords only merge under OR: "some field has p1 and some field has p2" is not
        # "some field has both".
        if isinstance(a, _Leaf) and (a.field is not None or node.op == "or") and (
                a.op == mergeable or (a.op in ("any", "all") and len(a.arg) == 1)):
            key = (a.field, a.cased)
            if key in merged:
                i = merged[key]
                out[i] = _Leaf(a.field, mergeable, out[i].arg + a.arg, a.cased)
                continue
            merged[key] = len(out)
            a = _Leaf(a.field, mergeable, a.arg, a.cased)
        out.append(a)
    return out[0] if len(out) == 1 else _Node(node.op, tuple(out))


def _fields_of(node, found: set) -> set:
    if isinstance(node, _Leaf):
        if node.field is not None:
            found.add(node.field)
        if node.op == "fieldref":
            found.add(node.arg[0])
    else:
        for a in node.args:
            _fields_of(a, found)
    return found


# --------------------------------------------------------------------------
# Closures
# --------------------------------------------------------------------------


def _glob(parts: tuple) -> Callable[[str], bool]:
    """A whole-string test for a wildcard pattern, in time linear in the string (a
    backtracking ``.*a.*b.*`` is quadratic or worse on a hostile command line)."""
    if _ONE in parts:
        regex = Regex("\\A" + "".join(".*" if p is _ANY else "." if p is _ONE else escape(p)
                                       for p in parts) + "\\z", dotall=True)
        return regex.search
    if len(parts) == 1 and isinstance(parts[0], str):
        return parts[0].__eq__
    # Only text and *: the first piece anchors the start, the last the end, and the
    # leftmost occurrence of each piece between them is as good as any.
    head = parts[0] if isinstance(parts[0], str) else ""
    tail = parts[-1] if isinstance(parts[-1], str) and len(parts) > 1 else ""
    middle = tuple((p, len(p)) for p in parts[1 if head else 0:len(parts) - 1 if tail else None]
                   if isinstance(p, str))

    def inside(s: str) -> bool:  # *a*b*, the common form: as fast as re was
        at = 0
        for piece, size in middle:
            at = s.find(piece, at)
            if at < 0:
                return False
            at += size
        return True

    def anchored(s: str) -> bool:
        if not (s.startswith(head) and s.endswith(tail)):
            return False
        at, end = len(head), len(s) - len(tail)
        if at > end:
            return False
        for piece, size in middle:
            at = s.find(piece, at, end)
            if at < 0:
                return False
            at += size
        return True
    return anchored if head or tail else inside


def _pattern_test(patterns: tuple, all_of: bool) -> Callable[[str], bool]:
    """A test on one string for a list of wildcard patterns (any or all must match)."""
    if all_of:
        tests = [_pattern_test((p,), False) for p in patterns]
        return tests[0] if len(tests) == 1 else _every(tests)
    equal, prefix, suffix, inner, other = set(), [], [], [], []
    for p in patterns:
        if len(p) == 1 and isinstance(p[0], str):
            equal.add(p[0])
        elif len(p) == 1 and p[0] is _ANY:
            return lambda s: True
        elif len(p) == 2 and isinstance(p[0], str) and p[1] is _ANY:
            prefix.append(p[0])
        elif len(p) == 2 and p[0] is _ANY and isinstance(p[1], str):
            suffix.append(p[1])
        elif len(p) == 3 and p[0] is _ANY and p[2] is _ANY and isinstance(p[1], str):
            inner.append(p[1])
        else:
            other.append(_glob(p))
    tests: list[Callable[[str], bool]] = []
    if equal:
        if len(equal) == 1:
            (only,) = equal
            tests.append(only.__eq__)
        else:
            tests.append(frozenset(equal).__contains__)
    if prefix:
        prefixes = tuple(prefix)
        tests.append(lambda s: s.startswith(prefixes))
    if suffix:
        suffixes = tuple(suffix)
        tests.append(lambda s: s.endswith(suffixes))
    if len(inner) == 1:
        (needle,) = inner
        tests.append(lambda s: needle in s)
    elif inner:
        tests.append(_contains_any(tuple(inner)))
    tests.extend(other)
    return tests[0] if len(tests) == 1 else _some(tests)


# Plain loops: measurably faster than any()/all() over a generator, or a regex alternation.
def _contains_any(needles: tuple[str, ...]) -> Callable[[str], bool]:
    def test(s: str) -> bool:
        for needle in needles:
            if needle in s:
                return True
        return False
    return test


def _some(tests: list) -> Callable[[str], bool]:
    def test(s: str) -> bool:
        for t in tests:
            if t(s):
                return True
        return False
    return test


def _every(tests: list) -> Callable[[str], bool]:
    def test(s: str) -> bool:
        for t in tests:
            if not t(s):
                return False
        return True
    return test


def _number(value) -> float | None:
    if type(value) is int:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _ip_test(network) -> Callable[[str], bool]:
    def test(s: str) -> bool:
        try:
            return ipaddress.ip_address(s) in network
        except ValueError:
            return False
    return test


def _string_test(leaf: _Leaf) -> tuple[Callable[[str], bool], bool]:
    """A test on one field's text, and whether it reads the text as is (else lower-cased)."""
    if leaf.op in ("any", "all"):
        return _pattern_test(leaf.arg, leaf.op == "all"), leaf.cased
    if leaf.op == "re":
        return leaf.arg.search, True
    if leaf.op == "cidr":
        return _ip_test(leaf.arg), True
    raise AssertionError(leaf.op)


def _on_field(name: str | None, test: Callable[[str], bool], raw: bool) -> Matcher:
    read = SigmaEvent.text if raw else SigmaEvent.lower
    if name is None:
        return lambda ev: any(test(read(ev, f)) for f in ev.fields)
    if raw:
        def match(ev: SigmaEvent) -> bool:
            s = read(ev, name)
            return s is not None and test(s)
        return match

    def match_lowered(ev: SigmaEvent) -> bool:
        # The cache lookup inlined: this runs for nearly every test of every rule.
        s = ev.lowered.get(name, _UNSEEN)
        if s is _UNSEEN:
            s = ev.lower(name)
        return s is not None and test(s)
    return match_lowered


def _compare(name: str, op: str, bound) -> Matcher:
    def match(ev: SigmaEvent) -> bool:
        value = _number(ev.fields.get(name))
        if value is None:
            return False
        if op == "lt":
            return value < bound
        if op == "lte":
            return value <= bound
        if op == "gt":
            return value > bound
        return value >= bound
    return match


def _fieldref(name: str, other: str, starts: bool, ends: bool) -> Matcher:
    def match(ev: SigmaEvent) -> bool:
        s, ref = ev.lower(name), ev.lower(other)
        if s is None or ref is None:
            return False
        if starts and ends:
            return ref in s
        if starts:
            return s.startswith(ref)
        if ends:
            return s.endswith(ref)
        return s == ref
    return match


def _cost(node) -> float:
    """Rough time to evaluate, in single C-level string tests."""
    if isinstance(node, _Node):
        return sum(_cost(a) for a in node.args)
    if node.field is None:
        return 50.0
    if node.op == "all":
        return float(len(node.arg))
    if node.op == "any":
        # One C-level call covers all equalities, prefixes and suffixes; each substring
        # or wildcard pattern (three parts or more) costs its own.
        return 1.0 + 0.5 * sum(1 for p in node.arg if len(p) >= 3)
    return 3.0


_NESTED = 8
"""And/or of up to this many tests nest as closures; longer ones loop."""


def _build(node) -> Matcher:
    if isinstance(node, _Leaf):
        name = node.field
        if node.op == "exists":
            return lambda ev: name in ev.fields
        if node.op == "absent":
            return lambda ev: name not in ev.fields
        if node.op == "cmp":
            return _compare(name, *node.arg)
        if node.op == "fieldref":
            return _fieldref(name, *node.arg)
        return _on_field(name, *_string_test(node))
    args = node.args
    if node.op == "and":
        # Cheapest tests first, negations (mostly true) last.
        args = sorted(args, key=lambda a: (isinstance(a, _Node) and a.op == "not", _cost(a)))
    parts = [_build(a) for a in args]
    if node.op == "not":
        (inner,) = parts
        return lambda ev: not inner(ev)
    if len(parts) > _NESTED:
        # A loop: nesting hundreds of closures would nest as many calls at match time.
        return _every(parts) if node.op == "and" else _some(parts)
    # Nest pairwise: two closures and a short-circuit beat all()/any() over a generator.
    combined = parts[-1]
    for left in reversed(parts[:-1]):
        if node.op == "and":
            combined = (lambda a, b: lambda ev: a(ev) and b(ev))(left, combined)
        else:
            combined = (lambda a, b: lambda ev: a(ev) or b(ev))(left, combined)
    return combined


# --------------------------------------------------------------------------
# Index keys
# --------------------------------------------------------------------------


AFFIX = 3
"""Length of the token prefixes and suffixes the index files rules under."""

_COMMON_AFFIXES = frozenset(
    {t[:AFFIX] for t in _COMMON_TOKENS} | {t[-AFFIX:] for t in _COMMON_TOKENS})


def _rarity(key: tuple[str, str]) -> float:
    """A rough chance that an event has the key (lower is rarer)."""
    kind, text = key
    if kind != "=":
        return 0.6 if text in _COMMON_AFFIXES else 0.02
    if text in _COMMON_TOKENS:
        return 0.3
    if len(text) <= 2:
        return 0.05
    if len(text) == 3:
        return 0.01
    return 0.001


def _best_key(parts: tuple) -> tuple[str, str] | None:
    """The rarest key every string matching the pattern has, or None.

    Keys are ``("=", token)``: the value has this whole token; ``("^", prefix)``:
    a token of the value starts with these AFFIX characters; ``("$", suffix)``:
    one ends with them.  Inside the literal text, a token's start is a token start
    of the value if a non-token character precedes it or it begins an anchored
    pattern; likewise for its end.
    """
    best = None
    last = len(parts) - 1
    for i, part in enumerate(parts):
        if not isinstance(part, str):
            continue
        text = part.lower()
        for m in TOKEN.finditer(text):
            token = m.group()
            starts = m.start() > 0 or i == 0
            ends = m.end() < len(text) or i == last
            if starts and ends:
                key = ("=", token)
            elif starts and len(token) >= AFFIX:
                key = ("^", token[:AFFIX])
            elif ends and len(token) >= AFFIX:
                key = ("$", token[-AFFIX:])
            else:
                continue
            if best is None or (_rarity(key), -len(key[1])) < (_rarity(best), -len(best[1])):
                best = key
    return best


def _keys(node) -> tuple[frozenset, float] | None:
    """(field, kind, text) keys one of which a matching event must have, and their cost."""
    if isinstance(node, _Leaf):
        if node.field is None or node.op not in ("any", "all"):
            return None
        keys = [_best_key(p) for p in node.arg]
        if node.op == "all":
            known = [k for k in keys if k is not None]
            if not known:
                return None
            best = min(known, key=_rarity)
            return frozenset({(node.field, *best)}), _rarity(best)
        if None in keys:
            return None
        return frozenset((node.field, *k) for k in keys), sum(map(_rarity, set(keys)))
    if node.op == "not":
        return None
    found = [_keys(a) for a in node.args]
    if node.op == "and":
        known = [k for k in found if k is not None]
        return min(known, key=lambda k: k[1]) if known else None
    if any(k is None for k in found):
        return None
    return frozenset().union(*(k[0] for k in found)), sum(k[1] for k in found)


# --------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------


MAX_CONDITION_DEPTH = 20
"""And, or and not inside each other in one condition (SigmaHQ's Linux rules need 4 at
most); matching recurses through them."""


def _depth(node) -> int:
    if isinstance(node, _Leaf):
        return 0
    return 1 + max(_depth(a) for a in node.args)


def compile_detection(condition, category: str) -> tuple[Matcher, frozenset | None, frozenset]:
    """Matcher, index keys and referenced fields for a resolved pySigma condition tree."""
    tree = _simplify(_from_condition(condition))
    depth = _depth(tree)
    if depth > MAX_CONDITION_DEPTH:
        raise RuleError(f"the condition nests {depth} levels deep, more than "
                        f"{MAX_CONDITION_DEPTH} (MAX_CONDITION_DEPTH)", kind="limit")
    fields = frozenset(_fields_of(tree, set()))
    unknown = sorted(fields - FIELDS[category])
    if unknown:
        raise RuleError(
            f"field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} not provided for "
            f"category {category} (see hive/sigma/_fields.py)", kind="field")
    keys = _keys(tree)
    return _build(tree), (keys[0] if keys else None), fields


def _category(rule: SigmaRule) -> str:
    source = rule.logsource
    if source.service == "auditd" and source.category is None and source.product in (None, "linux"):
        return "auditd"  # our events as auditd's records (_fields.py)
    if source.service is not None or source.product not in (None, "linux") \
            or source.category not in FIELDS or source.category == "auditd":
        shown = ", ".join(f"{k}={v}" for k, v in (("product", source.product),
                          ("category", source.category), ("service", source.service)) if v)
        categories = ", ".join(c for c in FIELDS if c != "auditd")
        raise RuleError(
            f"logsource {shown or '(empty)'} is not produced by SENTINEL IMMUNE sensors "
            f"(product linux, categories {categories}, or service auditd)", kind="logsource")
    return source.category


def compile_rule(rule: SigmaRule, path: Path | None = None) -> Rule:
    """Compile one parsed Sigma rule; raises RuleError with the reason it cannot load."""
    rule_id = str(rule.id) if rule.id is not None else ""
    title = rule.title or ""
    try:
        if rule.errors:
            raise RuleError(sigma_reason(rule.errors[0]), kind="sigma")
        if not rule_id:
            raise RuleError("rule has no id (alerts and correlations need a stable one)",
                            kind="metadata")
        category = _category(rule)
        try:
            conditions = [c.parsed for c in rule.detection.parsed_condition]
        except SigmaError as e:
            raise RuleError(sigma_reason(e), kind="condition") from e
        except (TypeError, ValueError, AttributeError, KeyError) as e:
            # pySigma assumes a well-formed condition and fails with Python errors otherwise.
            raise RuleError(f"malformed condition: {type(e).__name__}: {e}",
                            kind="condition") from e
        except RecursionError:
            raise RuleError("the condition nests too deeply for pySigma's parser (more than "
                            f"{MAX_CONDITION_DEPTH} levels are refused anyway)",
                            kind="limit") from None
        if any(c is None for c in conditions):
            raise RuleError("condition resolves to nothing", kind="condition")
        root = conditions[0] if len(conditions) == 1 else ConditionOR(conditions)
        match, keys, fields = compile_detection(root, category)
    except RuleError as e:
        raise e.located(path=path, rule_id=rule_id, title=title) from e
    return Rule(
        id=rule_id, title=title, category=category, match=match, keys=keys, fields=fields,
        name=rule.name or "",
        level=rule.level.name.lower() if rule.level is not None else "medium",
        tags=tuple(str(t) for t in rule.tags), path=path,
        description=(rule.description or "").strip(),
        author=rule.author or "", status=rule.status.name.lower() if rule.status else "",
    )
