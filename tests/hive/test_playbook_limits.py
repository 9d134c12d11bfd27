"""Playbooks cannot hang or crash the hive, whatever the file says: ``matches``
conditions and the ``regex`` filter run in RE2 (linear time), files are read
within the bounds of ``hive/_datafile.py``, templates within their own, and
``immune-node playbooks check`` lists each refused file and exits non-zero."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hive._datafile import MAX_DEPTH, MAX_FILE_BYTES
from hive.playbook import PlaybookError, Template, TemplateError, check_playbooks, parse_playbook
from hive.playbook._playbook import MAX_CONDITIONS, MAX_STEPS
from hive.playbook._template import MAX_EXPRESSION, MAX_FILTERS, MAX_NESTING, MAX_RENDERED

from test_playbook_format import GOOD

ROOT = Path(__file__).resolve().parents[2]


def with_condition(op: str, value: str) -> str:
    return GOOD.replace("steps:", f"conditions: [{{field: event.cmdline, op: {op}, value: '{value}'}}]\nsteps:")


def test_a_backtracking_matches_condition_runs_in_linear_time():
    [condition] = parse_playbook(with_condition("matches", "(a+)+$")).conditions
    # With Python's re: seconds for 26 a's, for ever for a long command line (and the
    # playbook actor, hence the hive, froze with it).
    for n in (26, 200_000):
        start = time.perf_counter()
        assert not condition.holds({"event": {"cmdline": "a" * n + "b"}})
        assert time.perf_counter() - start < 0.5
    assert condition.holds({"event": {"cmdline": "xaaa"}})


def test_a_backtracking_regex_filter_runs_in_linear_time():
    template = Template("{{ event.cmdline | regex('(a+)+$') | default('none') }}")
    for n in (26, 200_000):
        start = time.perf_counter()
        assert template.render({"event": {"cmdline": "a" * n + "b"}}) == "none"
        assert time.perf_counter() - start < 0.5
    assert template.render({"event": {"cmdline": "baa"}}) == "aa"


@pytest.mark.parametrize("pattern,reason", [
    ("x(?=y)", "lookahead is not supported"),
    ("(?<!x)y", "lookbehind is not supported"),
])
def test_a_regex_re2_cannot_run_refuses_the_playbook(pattern, reason):
    with pytest.raises(PlaybookError, match="conditions\\[0\\].value: bad regex") as e:
        parse_playbook(with_condition("matches", pattern))
    assert reason in str(e.value)
    with pytest.raises(TemplateError, match=reason):
        Template(f"{{{{ event.cmdline | regex('{pattern}') }}}}")


def test_a_regex_group_the_pattern_lacks_is_refused_at_load():
    # Python's re raised IndexError when the alert came: the playbook actor crashed.
    with pytest.raises(TemplateError, match="the regex has no group 2 \\(it has 0 to 1\\)"):
        Template("{{ event.cmdline | regex('(x)', 2) }}")
    with pytest.raises(TemplateError, match="the regex has no group 'a' \\(it has 0 to 1, 'ip'\\)"):
        Template("{{ event.cmdline | regex('(?P<ip>x)', 'a') }}")
    scope = {"event": {"cmdline": "to 10.1.2.3 now"}}
    assert Template("{{ event.cmdline | regex('to (?P<ip>[0-9.]+)', 'ip') }}").render(scope) == "10.1.2.3"


def _laughs() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*{'a' if i == 1 else f'l{i - 1}'}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def _steps(n: int) -> str:
    return OTHER.split("steps:")[0] + "steps:\n" + "  - {action: kill_process, params: {pid: 1}}\n" * n


OTHER = GOOD.replace("id: good", "id: other")
HOSTILE = [
    ("too large", "# padding\n" * (MAX_FILE_BYTES // 10 + 1), "(MAX_FILE_BYTES)"),
    ("nested", "id: " + "[" * 200 + "]" * 200, "(MAX_DEPTH)"),
    ("billion laughs", _laughs(), "(MAX_NODES)"),
    ("self alias", "a: &a [1, *a]\n", "alias *a is inside the collection it names"),
    ("two documents", GOOD + "---\n" + GOOD, "2 YAML documents: a playbook file holds one"),
    ("huge integer", "version: " + "9" * 5000 + "\n", "not valid YAML: unusable value"),
    ("steps", _steps(MAX_STEPS + 1), "(MAX_STEPS)"),
    ("conditions", OTHER.replace("steps:", "conditions:\n" + "  - {field: event.pid, op: exists}\n"
                                * (MAX_CONDITIONS + 1) + "steps:"), "(MAX_CONDITIONS)"),
    ("long expression", OTHER.replace("event.pid", "event." + "p" * MAX_EXPRESSION), "(MAX_EXPRESSION)"),
    ("filters", OTHER.replace("event.pid", "event.pid" + " | int" * (MAX_FILTERS + 1)), "(MAX_FILTERS)"),
    ("parentheses", OTHER.replace("event.pid", "event.pid | default(" + "(" * (MAX_NESTING + 1) + "1"
                                 + ")" * (MAX_NESTING + 1) + ")"), "(MAX_NESTING)"),
]


@pytest.mark.parametrize("text,reason", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_a_hostile_playbook_file_is_refused_in_one_line_and_the_rest_load(tmp_path, text, reason):
    (tmp_path / "a_good.yml").write_text(GOOD)
    (tmp_path / "b_hostile.yml").write_text(text)
    start = time.perf_counter()
    report = check_playbooks(tmp_path)
    assert time.perf_counter() - start < 10
    assert [p.id for p in report.playbooks] == ["good"]
    [failure] = report.failures
    assert failure.path == tmp_path / "b_hostile.yml" and reason in str(failure), str(failure)
    assert "\n" not in str(failure)


def test_template_text_is_scanned_in_linear_time():
    for n in (5_000, 500_000):  # as a lazy regex over the text, this was quadratic
        start = time.perf_counter()
        with pytest.raises(TemplateError, match="without a closing"):
            Template("{{" * n)
        assert time.perf_counter() - start < 0.5


def test_a_template_renders_to_at_most_max_rendered_characters():
    long = "x" * (MAX_RENDERED // 4 + 1)
    assert Template("{{ event.cmdline }}").render({"event": {"cmdline": long}}) == long
    with pytest.raises(TemplateError, match="MAX_RENDERED"):
        Template("{{ event.cmdline }}" * 4).render({"event": {"cmdline": long}})
    with pytest.raises(TemplateError, match="MAX_RENDERED"):
        Template("{{ event.cmdline }}").render({"event": {"cmdline": long * 4}})


def test_playbooks_check_lists_each_refused_file_and_exits_non_zero(tmp_path):
    (tmp_path / "a_good.yml").write_text(GOOD)
    (tmp_path / "b_deep.yml").write_text("id: " + "[" * 200 + "]" * 200)
    done = subprocess.run([sys.executable, "-m", "node.cli", "playbooks", "check", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode != 0 and "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (f"FAILED {tmp_path / 'b_deep.yml'}: line 1: nested more than {MAX_DEPTH} "
                        "levels deep (MAX_DEPTH)")
    assert lines[-1] == "2 files: 1 playbooks loaded, 0 disabled, 1 failed"


def test_filter_arguments_and_values_that_python_cannot_take_are_template_errors():
    # Found by tests/fuzz: TypeError and OverflowError escaped, and the engine catches only
    # TemplateError, so the playbook actor died loading the file or answering the alert.
    with pytest.raises(TemplateError, match="must be literals"):
        Template("{{ event.pid | default({[]: 1}) }}")
    with pytest.raises(TemplateError, match="inf is not an integer"):
        Template("{{ event.missing | default(1e400) | int }}").render({"event": {}})


async def test_the_playbook_actor_counts_refused_files_and_logs_each_once(tmp_path, runtime, caplog):
    import logging

    import trio

    from actors import Context
    from hive import Store
    from hive.playbook import playbook_actor

    folder = tmp_path / "playbooks"
    folder.mkdir()
    (folder / "good.yml").write_text(GOOD)
    (folder / "bad.yml").write_text(GOOD.replace("kill_process", "no_such_action"))
    db = tmp_path / "hive.db"
    Store(db).close()
    tag = time.monotonic_ns()
    ctx = Context(runtime, "playbook")
    st = ctx.stats.extra
    caplog.set_level(logging.INFO)

    def logged(event):
        return [r.fields.get("reason") for r in caplog.records if getattr(r, "event", "") == event]

    async def loads(n):
        with trio.fail_after(10):
            while len(logged("playbooks.loaded")) < n:
                await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: playbook_actor(
            ctx, task_status=task_status, path=db, playbook_dirs=[folder], tick=0.02, reload_every=0.02,
            alerts_endpoint=f"inproc://t.alerts.{tag}", deliver_endpoint=f"inproc://t.deliver.{tag}",
            results_endpoint=f"inproc://t.results.{tag}"))
        assert st["playbooks_loaded"] == 1 and st["playbooks_refused"] == 1
        (folder / "other.yml").write_text(GOOD.replace("id: good", "id: other"))  # a reload
        await loads(2)
        (folder / "worse.yml").write_text("steps: [")  # a reload, with a refusal of its own
        await loads(3)
        nursery.cancel_scope.cancel()
    assert st["playbooks_loaded"] == 2 and st["playbooks_refused"] == 2
    refused = logged("playbook.refused")
    assert len(refused) == 2, refused  # bad.yml once, though three loads refused it
    assert refused[0].startswith(f"{folder}/bad.yml: ") and refused[1].startswith(f"{folder}/worse.yml: ")
    assert "playbooks_failed" not in st
