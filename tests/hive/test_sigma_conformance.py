"""Conformance with SigmaHQ's Linux rules (hive/rules/sigmahq, DRL 1.1, read
in place): every rule loads or is reported with a precise reason, and our
verdicts agree with pySigma's own SQLite backend used as an oracle.

The oracle: each rule is converted to SQL by pysigma-backend-sqlite and run
against an in-memory table holding one crafted event; the crafted events are
generated from each rule's own detection values, some built to satisfy the
rule, some to falsify it, some mutated from those.  Our verdict goes through
the index as well as the matcher.
"""

import random
import re
import sqlite3
from collections import Counter

import pytest
import yaml
from sigma.backends.sqlite import sqliteBackend
from sigma.collection import SigmaCollection
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
)
from sigma.types import (
    CompareOperators,
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
    SigmaString,
    SpecialChars,
)

from hive.sigma import FIELDS, KINDS, SIGMAHQ_RULES, SigmaEvent, check_rules, load_rules

CORPUS = SIGMAHQ_RULES
TARGET = ("process_creation", "network_connection", "file_event")
NUMERIC = {"DestinationPort", "SourcePort", "ProcessId", "ParentProcessId", "LogonId", "Uid",
           "Euid", "Gid", "Flags", "Result", "OldId", "NewId", "ChildProcessId"}



def corpus_documents():
    """(path, document) for every rule document, read independently of our loader."""
    for path in sorted(CORPUS.rglob("*.yml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path, document


@pytest.fixture(scope="module")
def report():
    return check_rules(CORPUS)


def test_every_rule_loads_or_has_a_precise_reason(report):
    documents = list(corpus_documents())
    assert report.loaded + report.failed == len(documents)
    loaded = {r.id for r in report.rules}
    failed = {f.rule_id: f for f in report.failures}
    for path, document in documents:
        assert document["id"] in loaded or document["id"] in failed, path
    for failure in report.failures:
        assert failure.kind in KINDS and failure.reason and failure.path is not None
        assert failure.rule_id and failure.title
        if failure.kind == "logsource":
            # the reason names the logsource it refuses
            source = next(d["logsource"] for _, d in documents if d["id"] == failure.rule_id)
            for key in ("product", "category", "service"):
                if key in source:
                    assert f"{key}={source[key]}" in failure.reason


def test_at_least_95_percent_of_target_categories_load(report):
    loaded = {r.id for r in report.rules}
    counts = Counter()
    for _, document in corpus_documents():
        category = document["logsource"].get("category")
        if category in TARGET:
            counts[category, document["id"] in loaded] += 1
    total = sum(counts.values())
    share = sum(n for (_, ok), n in counts.items() if ok) / total
    print(f"{total} rules in {', '.join(TARGET)}; {share:.1%} load; by category: {dict(counts)}")
    assert total >= 150
    assert share >= 0.95


# -- the oracle ----------------------------------------------------------------


def _regexp(pattern, value):
    return value is not None and re.search(pattern, str(value)) is not None


class Oracle:
    def __init__(self):
        self.db = sqlite3.connect(":memory:")
        self.db.create_function("regexp", 2, _regexp, deterministic=True)
        columns = sorted(set().union(*(FIELDS[c] for c in TARGET)))  # auditd's "comm" would clash with "Comm"
        self.columns = columns
        # No declared type: integers stay integers, text compares without case.
        self.db.execute("CREATE TABLE logs (" + ", ".join(f'"{c}" COLLATE NOCASE' for c in columns) + ")")

    def verdict(self, queries: list[str], fields: dict) -> bool:
        self.db.execute("DELETE FROM logs")
        if fields:
            columns = ", ".join('"' + c + '"' for c in fields)
            marks = ", ".join("?" for _ in fields)
            self.db.execute(f"INSERT INTO logs ({columns}) VALUES ({marks})",
                            list(fields.values()))
        else:
            self.db.execute("INSERT INTO logs DEFAULT VALUES")
        return any(self.db.execute(q).fetchone() is not None for q in queries)


def _sample(pattern: str, rng) -> str:
    """A string the regular expression finds (most constructs; good enough to aim with)."""
    def walk(items) -> str:
        out = []
        for op, arg in items:
            name = str(op)
            if name == "LITERAL":
                out.append(chr(arg))
            elif name == "NOT_LITERAL":
                out.append("a" if chr(arg) != "a" else "b")
            elif name == "ANY":
                out.append("a")
            elif name == "IN":
                first_op, first = arg[0]
                if str(first_op) == "NEGATE":
                    out.append("\x01")
                elif str(first_op) == "RANGE":
                    out.append(chr(first[0]))
                elif str(first_op) == "LITERAL":
                    out.append(chr(first))
                else:
                    out.append({"CATEGORY_DIGIT": "1", "CATEGORY_SPACE": " "}.get(str(first), "a"))
            elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                low, high, sub = arg
                out.append(walk(sub) * max(low, min(high, 1)))
            elif name == "SUBPATTERN":
                out.append(walk(arg[-1]))
            elif name == "BRANCH":
                out.append(walk(rng.choice(arg[1])))
            elif name == "CATEGORY":
                out.append({"CATEGORY_DIGIT": "1", "CATEGORY_SPACE": " "}.get(str(arg), "a"))
        return "".join(out)
    return walk(re._parser.parse(pattern))


def _materialize(parts, rng) -> str:
    text = "".join(p if isinstance(p, str) else ("" if p is SpecialChars.WILDCARD_MULTI else "x")
                   for p in parts)
    return text


def _value_for(value, rng, event, name):
    """A text or number satisfying one leaf value, and how it constrains the field."""
    if isinstance(value, SigmaExpansion):
        return _value_for(rng.choice(value.values), rng, event, name)
    if isinstance(value, SigmaString):
        parts = value.s
        text = _materialize(parts, rng)
        if not isinstance(value, SigmaCasedString) and rng.random() < 0.3:
            text = text.swapcase()
        starts = bool(parts) and isinstance(parts[0], str)
        ends = bool(parts) and isinstance(parts[-1], str)
        kind = ("eq" if starts and ends else "prefix" if starts else "suffix" if ends
                else "middle")
        return kind, text
    if isinstance(value, (SigmaNumber, SigmaBool)):
        return "eq", value.number if isinstance(value, SigmaNumber) else str(value.boolean).lower()
    if isinstance(value, SigmaCIDRExpression):
        net = value.network
        return "eq", str(net.network_address + (1 if net.num_addresses > 2 else 0))
    if isinstance(value, SigmaCompareExpression):
        n = value.number.number
        delta = {CompareOperators.LT: -1, CompareOperators.GT: 1}.get(value.op, 0)
        return "eq", n + delta
    if isinstance(value, SigmaExists):
        return ("middle", "x") if value.exists else ("absent", None)
    if isinstance(value, SigmaNull):
        return "absent", None
    if isinstance(value, SigmaFieldReference):
        return "ref", value.field
    if isinstance(value, SigmaRegularExpression):
        return "middle", _sample(str(value.regexp), rng)
    raise AssertionError(type(value))


def _plan(node, want: bool, rng, constraints):
    """Walk pySigma's condition tree choosing leaves to satisfy (or falsify)."""
    if isinstance(node, ConditionNOT):
        _plan(node.args[0], not want, rng, constraints)
    elif isinstance(node, (ConditionAND, ConditionOR)):
        every = isinstance(node, ConditionAND) == want
        if every:
            for arg in node.args:
                _plan(arg, want, rng, constraints)
        else:
            _plan(rng.choice(node.args), want, rng, constraints)
    elif isinstance(node, ConditionFieldEqualsValueExpression):
        constraints.append((node.field, node.value, want))


def craft(rule, want: bool, rng) -> dict:
    constraints = []
    for condition in rule.detection.parsed_condition:
        _plan(condition.parsed, want, rng, constraints)
    wanted: dict[str, list] = {}
    unwanted: dict[str, list] = {}
    for name, value, positive in constraints:
        (wanted if positive else unwanted).setdefault(name, []).append(value)
    event: dict = {}
    refs = []
    for name, values in wanted.items():
        eq, prefix, middle, suffix = None, [], [], []
        for value in values:
            kind, text = _value_for(value, rng, event, name)
            if kind == "eq":
                eq = text
            elif kind == "prefix":
                prefix.append(text)
            elif kind == "suffix":
                suffix.append(text)
            elif kind == "middle":
                middle.append(text)
            elif kind == "ref":
                refs.append((name, text))
        if eq is not None:
            event[name] = eq
        elif prefix or middle or suffix:
            event[name] = "".join(prefix) + " ".join(middle) + "".join(suffix)
    for name, values in unwanted.items():
        if name in event:
            continue
        if any(isinstance(v, (SigmaNull, SigmaExists)) for v in values):
            event[name] = "x"  # falsify "absent" by being present
    for name, other in refs:
        if other in event:
            event[name] = event[other]
    return {k: _typed(k, v) for k, v in event.items() if v not in ("", None)}


def _typed(name, value):
    if name in NUMERIC and isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def mutate(event: dict, rng) -> dict:
    if not event:
        return event
    event = dict(event)
    name = rng.choice(sorted(event))
    choice = rng.randrange(4)
    if choice == 0:
        del event[name]
    elif isinstance(event[name], int):
        event[name] += 1
    elif choice == 1:
        event[name] = event[name][1:] or "q"
    elif choice == 2:
        event[name] = event[name][:-1] or "q"
    else:
        event[name] = "q" + event[name] + "q"
    return event


def test_verdicts_agree_with_the_sqlite_backend(report):
    rules = load_rules([CORPUS])
    index = rules.index
    ours = {r.id: r for r in index.rules if r.category in TARGET}
    oracle = Oracle()
    rng = random.Random(5)
    compared = positives = converted = 0
    disagreements = []
    rules_with_both = 0
    for path in sorted(CORPUS.rglob("*.yml")):
        for parsed in SigmaCollection.from_yaml(path.read_text()).rules:
            rule = ours.get(str(parsed.id))
            if rule is None:
                continue
            queries = sqliteBackend().convert_rule(parsed)
            converted += 1
            events = [craft(parsed, True, rng) for _ in range(6)]
            events += [craft(parsed, False, rng) for _ in range(4)]
            events += [mutate(e, rng) for e in events[:6]]
            verdicts = set()
            for fields in events:
                expected = oracle.verdict(queries, fields)
                view = SigmaEvent(rule.category, dict(fields))
                got = rule in index.candidates(view) and rule.match(view)
                compared += 1
                positives += expected
                verdicts.add(expected)
                if got != expected:
                    disagreements.append((path.name, fields, expected, got))
            rules_with_both += verdicts == {True, False}
    print(f"{converted} rules, {compared} events ({positives} positive), "
          f"{rules_with_both} rules seen both matching and not, "
          f"{len(disagreements)} disagreements")
    assert converted >= 0.9 * len(ours)
    assert positives >= compared * 0.25 and rules_with_both >= 0.8 * converted
    assert not disagreements, disagreements[:5]
