"""Rules cannot hang or crash the hive, whatever a rule file says.

Patterns run in RE2 (linear time) and wildcards without backtracking; every
file is read within the bounds of ``hive/_datafile.py`` and a refused file is
one line in the report while the rest load (``immune-node rules check`` lists
it and exits non-zero)."""

import fnmatch
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hive._datafile import MAX_DEPTH, MAX_DOCUMENTS, MAX_FILE_BYTES, MAX_NODES
from hive.sigma import RuleEngine, check_rules
from hive.sigma._compile import _ANY, _ONE, MAX_CONDITION_DEPTH, _glob, _normalize
from wire import Exec

ROOT = Path(__file__).resolve().parents[2]


def rule(detection: str, *, title: str = "t", number: int = 1, condition: str = "sel") -> str:
    return textwrap.dedent(f"""\
        title: {title}
        id: 00000000-0000-4000-8000-{number:012d}
        logsource: {{product: linux, category: process_creation}}
        detection:
          sel:
        """) + textwrap.indent(detection.rstrip("\n") + "\n", "    ") + f"  condition: {condition}\n"


def engine_with(tmp_path, *texts: str) -> RuleEngine:
    for number, text in enumerate(texts):
        (tmp_path / f"r{number}.yml").write_text(text)
    engine = RuleEngine(suppress_window=0)
    report = engine.load(tmp_path)
    assert report.ok, report.format()
    return engine


def exec_of(cmdline: str, pid: int = 100) -> Exec:
    return Exec(agent="a", pid=pid, time=1, filename="/bin/sh", argv=["sh"], cmdline=cmdline)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


# -- patterns ----------------------------------------------------------------------


def test_a_backtracking_regex_in_a_rule_runs_in_linear_time(tmp_path):
    engine = engine_with(tmp_path, rule("CommandLine|re: '(a+)+$'"))
    # Python's re: seconds for 26 a's, for ever for a long command line.
    for n in (26, 200_000):
        alerts, seconds = timed(engine.process, exec_of("a" * n + "b"))
        assert not alerts and seconds < 0.5, (n, seconds)
    assert engine.process(exec_of("xaaa"))


def test_wildcards_cannot_backtrack(tmp_path):
    engine = engine_with(tmp_path, rule("CommandLine: '*a*a*a*a*b'"), rule(
        "CommandLine: '*a?a*a*a*b'", number=2))
    # As a backtracking .*a.*a.*a.*a.*b this took 20 s on 300 characters.
    alerts, seconds = timed(engine.process, exec_of("a" * 300))
    assert not alerts and seconds < 0.5
    alerts, seconds = timed(engine.process, exec_of("a" * 200_000))
    assert not alerts and seconds < 0.5
    assert {a.rule_id[-1] for a in engine.process(exec_of("aaaab"))} == {"1"}
    assert {a.rule_id[-1] for a in engine.process(exec_of("axaaab", pid=2))} == {"1", "2"}


def test_wildcard_matching_agrees_with_fnmatch():
    rng = random.Random(5)
    for _ in range(20_000):
        parts = _normalize([rng.choice([_ANY, _ONE, "a", "b", "ab"]) for _ in range(rng.randrange(1, 6))])
        if not parts:
            continue
        pattern = "".join("*" if p is _ANY else "?" if p is _ONE else p for p in parts)
        test = _glob(parts)
        for _ in range(10):
            text = "".join(rng.choice("ab\n") for _ in range(rng.randrange(7)))
            assert test(text) == fnmatch.fnmatchcase(text, pattern), (pattern, text)


@pytest.mark.parametrize("pattern,reason", [
    ("foo(?=bar)", "lookahead is not supported"),
    ("(?<!x)foo", "lookbehind is not supported"),
    ("(a)\\1", "backreferences are not supported"),
    ("end\\Z", "write \\z for the end of the text"),
])
def test_a_regex_re2_cannot_run_refuses_its_rule_with_the_reason(tmp_path, pattern, reason, capfd):
    (tmp_path / "good.yml").write_text(rule("CommandLine|contains: x", number=1))
    (tmp_path / "bad.yml").write_text(rule(f"CommandLine|re: '{pattern}'", number=2))
    report = check_rules(tmp_path)
    assert len(report.rules) == 1
    [failure] = report.failures
    assert failure.path == tmp_path / "bad.yml" and reason in failure.reason
    assert "\n" not in str(failure)
    assert capfd.readouterr().err == ""


def test_a_literal_regex_is_a_string_test_the_index_can_key(tmp_path):
    engine = engine_with(tmp_path, rule("CommandLine|re: '-D'", number=1),
                         rule("CommandLine|re: '^/usr/bin/id$'", number=2),
                         rule("CommandLine|re|i: 'WGET\\.EXE'", number=3))
    keyed = {r.id[-1]: r.keys is not None for r in engine.rules.index.rules}
    assert keyed == {"1": False, "2": True, "3": True}
    hits = lambda cmdline: {a.rule_id[-1] for a in engine.process(exec_of(cmdline))}
    assert hits("ssh -D 1080 h") == {"1"}
    assert hits("ssh -d 1080 h") == set()  # re is case-sensitive
    assert hits("/usr/bin/id") == {"2"}
    assert hits("x /usr/bin/id") == set()
    assert hits("wget.exe http://x") == {"3"}
    assert hits("wgetXexe http://x") == set()


def test_hundreds_of_regex_selections_do_not_recurse_when_matching(tmp_path):
    selections = "".join(f"  sel{i}:\n    CommandLine|re: 'x{i}[0-9]'\n" for i in range(1200))
    text = rule("CommandLine: never", condition="1 of sel*").replace(
        "  condition:", selections + "  condition:")
    engine = engine_with(tmp_path, text)
    assert engine.process(exec_of("a x11995 b"))
    assert not engine.process(exec_of("nothing"))


def test_a_condition_nested_too_deep_is_refused(tmp_path):
    deep = " and ".join(["(sel or not (sel"] * (MAX_CONDITION_DEPTH // 2 + 1)) + "))" * (
        MAX_CONDITION_DEPTH // 2 + 1)
    (tmp_path / "deep.yml").write_text(rule("CommandLine: x", condition=deep))
    (tmp_path / "nots.yml").write_text(rule("CommandLine: x", number=2,
                                            condition="not " * 300 + "sel"))
    report = check_rules(tmp_path)
    assert not report.rules
    reasons = {f.path.name: (f.kind, f.reason) for f in report.failures}
    assert reasons["deep.yml"][0] == "limit" and "MAX_CONDITION_DEPTH" in reasons["deep.yml"][1]
    assert reasons["nots.yml"][0] == "limit" and "nests too deeply" in reasons["nots.yml"][1]


# -- files -------------------------------------------------------------------------


def _laughs() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*{'a' if i == 1 else f'l{i - 1}'}"] * 10) + "]")
    return "\n".join(lines) + "\n"


HOSTILE = [
    ("too large", "# padding\n" * (MAX_FILE_BYTES // 10 + 1), "MAX_FILE_BYTES"),
    ("nested flow", "detection: " + "[" * 200 + "]" * 200, "MAX_DEPTH"),
    ("nested past libyaml", "detection: " + "[" * 5000 + "]" * 5000, "exceeded maximum nesting depth"),
    ("nested block", "".join("  " * i + "k:\n" for i in range(MAX_DEPTH + 5)), "MAX_DEPTH"),
    ("billion laughs", _laughs(), "MAX_NODES"),
    ("self alias", "a: &a [1, *a]\n", "is inside the collection it names"),
    ("documents", "---\ntitle: x\n" * (MAX_DOCUMENTS + 1), "MAX_DOCUMENTS"),
    ("huge integer", "title: " + "9" * 5000 + "\n", "unusable value"),
    ("tabs", "title:\n\t- x\n", "cannot start any token"),
]


@pytest.mark.parametrize("text,reason", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_a_hostile_rule_file_is_refused_in_one_line_and_the_rest_load(tmp_path, text, reason):
    (tmp_path / "a_good.yml").write_text(rule("CommandLine|contains: x"))
    (tmp_path / "b_hostile.yml").write_text(text)
    report, seconds = timed(check_rules, tmp_path)
    assert seconds < 10
    assert [r.title for r in report.rules] == ["t"]
    [failure] = report.failures
    assert failure.path == tmp_path / "b_hostile.yml" and reason in failure.reason
    assert str(failure).startswith(f"{tmp_path / 'b_hostile.yml'}: ") and "\n" not in str(failure)


def test_a_file_that_is_not_utf8_or_unreadable_is_refused(tmp_path):
    (tmp_path / "latin1.yml").write_bytes(b"title: caf\xe9\n")
    (tmp_path / "dir.yml").mkdir()
    (tmp_path / "dir.yml" / "inner.yml").write_text(rule("CommandLine: x"))
    report = check_rules(tmp_path)
    assert len(report.rules) == 1
    [failure] = report.failures
    assert failure.kind == "file" and "not UTF-8" in failure.reason


def test_values_beyond_max_nodes_are_refused_even_without_aliases(tmp_path):
    (tmp_path / "wide.yml").write_text("a: [" + ",".join(["1"] * MAX_NODES) + "]\n")
    [failure], seconds = timed(lambda: check_rules(tmp_path).failures)
    assert "MAX_NODES" in failure.reason and seconds < 30


def test_rules_beyond_max_rules_are_refused_per_file(tmp_path, monkeypatch):
    monkeypatch.setattr("hive.sigma._loader.MAX_RULES", 2)
    for number in range(4):
        (tmp_path / f"r{number}.yml").write_text(rule("CommandLine: x", number=number))
    report = check_rules(tmp_path)
    assert len(report.rules) == 2
    assert [(f.path.name, f.kind) for f in report.failures] == [("r2.yml", "limit"), ("r3.yml", "limit")]
    assert all("MAX_RULES" in f.reason for f in report.failures)


def test_rules_check_lists_each_refused_file_and_exits_non_zero(tmp_path):
    (tmp_path / "a_good.yml").write_text(rule("CommandLine|re: '(a+)+$'"))
    (tmp_path / "b_deep.yml").write_text("detection: " + "[" * 200 + "]" * 200)
    (tmp_path / "c_big.yml").write_text("#" * (MAX_FILE_BYTES + 1))
    done = subprocess.run([sys.executable, "-m", "node.cli", "rules", "check", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode != 0 and "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines == [
        f"{tmp_path / 'b_deep.yml'}: limit: line 1: nested more than {MAX_DEPTH} levels deep (MAX_DEPTH)",
        f"{tmp_path / 'c_big.yml'}: limit: {MAX_FILE_BYTES + 1} bytes, more than the "
        f"{MAX_FILE_BYTES} a file may have (MAX_FILE_BYTES)",
        "3 files: 1 detection rules and 0 correlation rules loaded, 2 failed",
    ]
