"""Playbook files: what loads, and for what does not, the exact reason
``immune-node playbooks check DIR`` prints."""

import pytest

from hive.playbook import (
    PlaybookError,
    Template,
    TemplateError,
    check_playbooks,
    parse_playbook,
)

GOOD = """
id: good
title: Good
trigger: {rules: [r1]}
steps:
  - action: kill_process
    params: {pid: "{{ event.pid }}"}
"""


def broken(**replace):
    text = GOOD
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


CASES = [
    ("not yaml", "id: [unclosed\n", "not valid YAML: line 2, column 1"),
    ("not a mapping", "- just\n- a list\n", "expected a mapping with id, title, trigger and steps"),
    ("unknown key", GOOD.replace("trigger:", "trigerr: {}\ntrigger:"), "unknown key `trigerr`"),
    ("missing steps", "id: x\ntitle: X\ntrigger: {rules: [r]}\n", "missing required key `steps`"),
    ("bad id", GOOD.replace("id: good", "id: 'has space'"), "id: 'has space' must be 1-64 letters"),
    ("bad mode", GOOD.replace("title: Good", "title: Good\nmode: yolo"), "mode: 'yolo' is not one of auto, approval, dry-run"),
    ("no steps", GOOD.split("steps:")[0] + "steps: []\n", "steps: a playbook needs at least one step"),
    ("match everything", GOOD.replace("{rules: [r1]}", "{agents: ['*']}"), "trigger: it would match every alert"),
    ("bad level", GOOD.replace("{rules: [r1]}", "{min_level: severe}"), "trigger: level 'severe' is not one of"),
    ("unknown action", GOOD.replace("kill_process", "kil_process"), "steps[0].action: unknown action 'kil_process'"),
    ("unknown param", GOOD.replace("{pid:", "{pdi: 1, pid:"), "steps[0].params: kill_process takes no pdi"),
    ("missing param", GOOD.replace('{pid: "{{ event.pid }}"}', "{tree: true}"), "steps[0].params: kill_process needs pid"),
    ("static param checked", GOOD.replace('"{{ event.pid }}"', '"twelve"'), "steps[0].params: pid must be a positive integer"),
    ("bad template", GOOD.replace("event.pid }}", "event.pid | shout }}"), "unknown filter 'shout'"),
    ("unclosed template", GOOD.replace("event.pid }}", "event.pid"), "'{{' without a closing '}}'"),
    ("template root", GOOD.replace("event.pid", "os.system"), "templates may name alert, event, playbook, vars, verdict, not os"),
    ("template call", GOOD.replace("event.pid", "event.pid()"), "is not a dotted path"),
    ("ttl on kill", GOOD.replace("    params:", "    ttl: 10m\n    params:"), "steps[0].ttl: kill_process cannot be reverted"),
    ("bad duration", GOOD.replace("    params:", "    expires: soon\n    params:"), "steps[0].expires: 'soon' is not a duration"),
    ("bad rate", GOOD.replace("steps:", "limits: {rate: lots}\nsteps:"), "limits.rate: 'lots' is not RUNS/DURATION"),
    ("bad op", GOOD.replace("steps:", "conditions: [{field: event.pid, op: like, value: 1}]\nsteps:"), "conditions[0].op: unknown op 'like'"),
    ("bad field", GOOD.replace("steps:", "conditions: [{field: pid, value: 1}]\nsteps:"), "conditions[0].field: 'pid' must be a dotted path"),
    ("bad regex", GOOD.replace("steps:", "conditions: [{field: event.image, op: matches, value: '(x'}]\nsteps:"), "conditions[0].value: bad regex"),
    ("wrong type", GOOD.replace("{rules: [r1]}", "{rules: r1}"), "trigger.rules: Expected `array`, got `str`"),
]


@pytest.mark.parametrize("text,reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_playbooks_are_reported_with_their_reason(tmp_path, text, reason):
    (tmp_path / "a_good.yml").write_text(GOOD)
    (tmp_path / "b_broken.yml").write_text(text)
    report = check_playbooks(tmp_path)
    assert [p.id for p in report.playbooks] == ["good"]
    [failure] = report.failures
    assert failure.path == tmp_path / "b_broken.yml"
    assert reason in str(failure), str(failure)
    text = report.format()
    assert f"FAILED {tmp_path / 'b_broken.yml'}:" in text
    assert text.endswith("2 files: 1 playbooks loaded, 0 disabled, 1 failed")


def test_duplicate_ids_and_missing_folders(tmp_path):
    (tmp_path / "a.yml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    (tmp_path / "notes.txt").write_text("not a playbook")
    report = check_playbooks(tmp_path, tmp_path / "nowhere")
    assert report.files == 2 and not report.ok
    reasons = [str(f) for f in report.failures]
    assert reasons == [f"{tmp_path / 'nowhere'}: no such file or folder",
                       f"{tmp_path / 'b.yaml'}: [good] id already used by {tmp_path / 'a.yml'}"]


def test_disabled_playbooks_are_listed_not_loaded(tmp_path):
    (tmp_path / "a.yml").write_text(GOOD.replace("title: Good", "title: Good\nenabled: false"))
    report = check_playbooks(tmp_path)
    assert report.ok and not report.playbooks and [p.id for p in report.disabled] == ["good"]


def test_durations_and_limits():
    pb = parse_playbook(GOOD.replace("steps:", "limits: {cooldown: 2m, rate: 5/1h}\nsteps:")
                        .replace("kill_process", "block_connect")
                        .replace('{pid: "{{ event.pid }}"}', '{address: "{{ event.address }}"}\n    ttl: 1.5h'))
    assert pb.limits.cooldown == 120 and pb.limits.rate == (5, 3600)
    assert pb.steps[0].ttl == 5400


def test_templates_are_data_paths_never_code():
    scope = {"event": {"pid": 7, "argv": ["sh", "-c"], "cmdline": "nc 10.0.0.9 4444"}, "alert": {"id": "x"}}
    assert Template("{{ event.pid }}").render(scope) == 7
    assert Template("pid={{ event.pid }} of {{ alert.id }}").render(scope) == "pid=7 of x"
    assert Template("{{ event.argv.1 }}").render(scope) == "-c"
    assert Template("{{ event.cmdline | regex('([0-9.]+) ([0-9]+)', 2) | int }}").render(scope) == 4444
    assert Template("{{ event.nothing | default('none') }}").render(scope) == "none"
    assert Template("{{ event.cmdline | regex('nope') | default('') }}").render(scope) == ""
    for bad in ("{{ __import__('os') }}", "{{ event.pid.__class__ }}", "{{ event['pid'] }}",
                "{{ event.pid | default(__import__('os')) }}"):
        with pytest.raises(TemplateError):
            Template(bad).render(scope)
    with pytest.raises(TemplateError, match="the regex did not match"):
        Template("{{ event.cmdline | regex('nope') }}").render(scope)


def test_parse_errors_are_playbook_errors():
    with pytest.raises(PlaybookError) as e:
        parse_playbook(GOOD.replace("kill_process", "explode"), "x.yml")
    assert str(e.value).startswith("x.yml: [good] steps[0].action: unknown action 'explode'")
