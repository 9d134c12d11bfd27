"""The rule engine driven the way the sentinel actor drives it: wire events in,
wire alerts out, with a fake clock."""

import os
import textwrap

import pytest

from hive import ALERT_EVENTS, Repeat
from hive.sigma import RuleEngine, RuleError, Suppressor, SuppressorStatistics, check_rules, sigma_events
from wire import Alert, Bind, Connect, Exec, Exit, Fork, Open, SetId


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


RULE = """\
title: Exec from tmp
id: 11111111-1111-4111-8111-111111111111
status: test
level: high
tags: [attack.execution, attack.t1059]
logsource: {product: linux, category: process_creation}
detection:
    selection:
        Image|startswith: /tmp/
    condition: selection
"""


def write(directory, name, text):
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def engine(tmp_path, clock):
    write(tmp_path, "tmp.yml", RULE)
    engine = RuleEngine(clock=clock, suppress_window=60)
    report = engine.load(tmp_path)
    assert report.ok and report.loaded == 1
    return engine


def tmp_exec(**kw):
    base = dict(agent="web-1", pid=100, ppid=1, time=123, filename="/tmp/x", argv=["/tmp/x"])
    return Exec(**{**base, **kw})


# -- alerts --------------------------------------------------------------------


def test_an_alert_carries_rule_event_and_agent(engine):
    event = tmp_exec()
    (alert,) = engine.process(event)
    assert isinstance(alert, Alert)
    assert alert.rule_id == "11111111-1111-4111-8111-111111111111"
    assert alert.title == "Exec from tmp"
    assert alert.level == "high"
    assert alert.tags == ["attack.execution", "attack.t1059"]
    assert alert.agent == "web-1" and alert.time == 123
    assert alert.events == [event]
    assert "Image=/tmp/x" in alert.detail
    assert alert.id


def test_benign_event_raises_nothing(engine):
    assert engine.process(tmp_exec(filename="/usr/bin/ls")) == []
    assert engine.statistics().matched == 0


def test_repeats_within_the_window_are_counted_on_the_first_alert(engine, clock):
    (first,) = engine.process(tmp_exec())
    clock.now += 30
    # a different step with the same program and command line: kept, as a repeat of the first
    second, third = tmp_exec(pid=101, time=200, cwd="/srv"), tmp_exec(pid=102, time=300)
    assert engine.process(second) == [Repeat(alert=first.id, time=200, events=[second])]
    assert engine.process(third) == [Repeat(alert=first.id, time=300, events=[third])]
    # another agent, or another subject, is not a repeat
    (other_agent,) = engine.process(tmp_exec(agent="web-2"))
    (other_subject,) = engine.process(tmp_exec(filename="/tmp/y"))
    assert isinstance(other_agent, Alert) and isinstance(other_subject, Alert)
    # the window runs from the alert: the next hit after it is an alert again
    clock.now += 31
    (alert,) = engine.process(tmp_exec(pid=103))
    assert isinstance(alert, Alert) and alert.id != first.id and "repeat" not in alert.detail
    stats = engine.statistics()
    assert (stats.suppression.suppressed, stats.alerts) == (2, 4)
    assert engine.hits() == {"11111111-1111-4111-8111-111111111111": 6}


def test_suppressor_holds_the_first_alert_of_each_key_for_its_window():
    clock = Clock()
    clock.now = 0
    s = Suppressor(10, clock=clock, capacity=2)
    assert s.repeat_of("k") is None
    s.admit("k", "alert-1")
    clock.now = 9.9
    assert s.repeat_of("k") == ("alert-1", 1)
    assert s.repeat_of("k") == ("alert-1", 2)
    clock.now = 10
    assert s.repeat_of("k") is None  # its window is over: a new alert
    s.admit("k", "alert-2")
    s.admit("a", "alert-3")
    s.admit("b", "alert-4")  # over capacity: the oldest key goes
    assert s.repeat_of("k") is None and s.repeat_of("b") == ("alert-4", 1)
    assert s.statistics() == SuppressorStatistics(admitted=4, suppressed=3, evicted=1, keys=2)
    clock.now = 20
    s.expire()
    assert s.statistics().keys == 0


def test_a_batch_sends_one_repeat_per_alert_and_no_events_the_alert_has_no_room_for(engine, clock):
    (first,) = engine.process(tmp_exec())
    batch = [tmp_exec(pid=200 + n, time=1000 + n) for n in range(100)]
    (repeat,) = engine.process_batch(batch)
    assert (repeat.alert, repeat.count, repeat.time) == (first.id, 100, 1099)
    assert repeat.events == batch[:ALERT_EVENTS - 1]  # with the alert's own: ALERT_EVENTS
    (more,) = engine.process_batch([tmp_exec(pid=400, time=2000)])
    assert (more.count, more.events) == (1, [])  # the alert is full: counted only
    # an alert raised in the batch comes before its repeats
    out = engine.process_batch([tmp_exec(agent="web-2", time=5), tmp_exec(agent="web-2", pid=7, time=6)])
    assert [type(m) for m in out] == [Alert, Repeat] and out[1].alert == out[0].id


def test_a_correlation_repeats_by_its_group(tmp_path, clock):
    write(tmp_path, "tmp.yml", RULE)
    write(tmp_path, "burst.yml", """title: Burst from tmp
id: 22222222-2222-4222-8222-222222222222
correlation:
    type: event_count
    rules: [11111111-1111-4111-8111-111111111111]
    group-by: [Agent]
    timespan: 1m
    condition: {gte: 2}
level: high
""")
    engine = RuleEngine(clock=clock, suppress_window=600)
    assert engine.load(tmp_path).ok
    out = [m for n in range(4) for m in engine.process(tmp_exec(pid=200 + n, filename=f"/tmp/{n}"))]
    # the rule only feeds the burst (no generate): the burst fires at the 2nd and the 4th
    burst, repeat = out
    assert isinstance(burst, Alert) and burst.title == "Burst from tmp"
    assert repeat == Repeat(alert=burst.id, time=123, events=repeat.events)
    assert [e.pid for e in repeat.events] == [202, 203]


def test_tick_expires_suppression(engine, clock):
    engine.process(tmp_exec())
    assert engine.statistics().suppression.keys == 1
    clock.now += 61
    assert engine.tick() == []
    assert engine.statistics().suppression.keys == 0


def test_suppression_memory_is_capped(tmp_path, clock):
    write(tmp_path, "tmp.yml", RULE)
    engine = RuleEngine(clock=clock, suppress_window=60, max_suppressed=100)
    engine.load(tmp_path)
    for n in range(1000):
        assert len(engine.process(tmp_exec(filename=f"/tmp/{n}"))) == 1
    stats = engine.statistics().suppression
    assert stats.keys == 100 and stats.evicted == 900


# -- what counts as which logsource --------------------------------------------


def ours(event) -> tuple:
    """The event's logsources but auditd's records (tests/hive/test_sigma_sources.py)."""
    return tuple(pair for pair in sigma_events(event) if pair[0] != "auditd")


def test_failed_exec_is_no_process_creation_but_a_blocked_one_is():
    assert ours(Exec(filename="/x", result=-2)) == ()
    ((category, fields),) = ours(Exec(filename="/tmp/x", result=-1, verdict="block"))
    assert category == "process_creation" and fields["Image"] == "/tmp/x"


def test_exec_fields():
    event = Exec(agent="a", pid=5, ppid=4, uid=1000, euid=0, filename="./run", exe="/opt/run",
                 argv=["./run", "-v"], parent_image="/bin/bash", parent_cmdline="bash",
                 user="alice", cwd="/opt", sha256="ab" * 32, container="c1")
    ((_, f),) = ours(event)
    # a relative name is read from the process's folder: rules compare absolute paths
    assert f["Image"] == "/opt/run" and f["Exe"] == "/opt/run"
    assert f["CommandLine"] == "./run -v"
    assert (f["ParentImage"], f["ParentCommandLine"], f["User"]) == ("/bin/bash", "bash", "alice")
    assert (f["ProcessId"], f["ParentProcessId"], f["LogonId"], f["Euid"]) == (5, 4, 1000, 0)
    assert f["CurrentDirectory"] == "/opt" and f["Hashes"] == "SHA256=" + "ab" * 32
    assert f["Agent"] == "a" and f["Container"] == "c1"
    # the relay's command line wins over the raw argv
    ((_, f),) = ours(Exec(filename="/x", argv=["x"], cmdline="x --full"))
    assert f["CommandLine"] == "x --full"
    ((_, f),) = ours(Exec(filename="./x", exe="/dev/shm/x", cwd="/dev/shm/a/.."))
    assert f["Image"] == "/dev/shm/x"
    ((_, f),) = ours(Exec(filename="bin/x", exe="/srv/app/bin/x"))  # no folder known
    assert f["Image"] == "/srv/app/bin/x"


def test_open_read_is_file_access_and_write_is_also_file_event():
    ((category, f),) = ours(Open(path="/etc/shadow", flags=os.O_RDONLY, image="/bin/cat"))
    assert category == "file_access" and f["Access"] == "read"
    assert f["TargetFilename"] == "/etc/shadow" and f["Image"] == "/bin/cat"
    pairs = ours(Open(path="/etc/cron.d/x", flags=os.O_WRONLY | os.O_CREAT))
    assert [c for c, _ in pairs] == ["file_access", "file_event"]
    assert pairs[0][1]["Access"] == "write"
    # a failed write attempt created nothing
    pairs = ours(Open(path="/etc/cron.d/x", flags=os.O_WRONLY, result=-13))
    assert [c for c, _ in pairs] == ["file_access"]


def test_network_setid_bind_fork_fields():
    ((c, f),) = ours(Connect(address="1.2.3.4", port=443, src_address="10.0.0.2",
                                     src_port=5000, family=2, hostname="x.example"))
    assert c == "network_connection"
    assert (f["DestinationIp"], f["DestinationPort"], f["SourceIp"], f["SourcePort"]) == \
        ("1.2.3.4", 443, "10.0.0.2", 5000)
    assert f["Initiated"] == "true" and f["DestinationIsIpv6"] == "false"
    assert f["DestinationHostname"] == "x.example"
    ((c, f),) = ours(SetId(call="setuid", old=1000, new=0))
    assert c == "setid" and (f["Call"], f["OldId"], f["NewId"]) == ("setuid", 1000, 0)
    ((c, f),) = ours(Bind(address="0.0.0.0", port=8080))
    assert c == "bind" and (f["SourceIp"], f["SourcePort"]) == ("0.0.0.0", 8080)
    ((c, f),) = ours(Fork(pid=1, child_pid=2))
    assert c == "fork" and f["ChildProcessId"] == 2
    assert ours(Exit(pid=1)) == ()


def test_empty_enrichment_is_absent():
    ((_, f),) = ours(Exec(filename="/bin/ls"))
    assert "User" not in f and "ParentImage" not in f and "Hashes" not in f


# -- loading -------------------------------------------------------------------


def test_each_bad_rule_is_reported_and_the_rest_load(tmp_path):
    write(tmp_path, "good.yml", RULE)
    write(tmp_path, "yaml.yml", "title: [unclosed\n")
    write(tmp_path, "field.yml", RULE.replace("1111-4111", "2222-4111").replace("Image|", "Hostname|"))
    write(tmp_path, "sshd.yml", RULE.replace("1111-4111", "3333-4111")
          .replace("category: process_creation", "service: sshd"))
    write(tmp_path, "noid.yml", "\n".join(l for l in RULE.splitlines() if not l.startswith("id:")))
    write(tmp_path, "z-dup.yml", RULE.replace("Exec from tmp", "Copy"))
    write(tmp_path, "modifier.yml", RULE.replace("1111-4111", "4444-4111").replace("startswith", "startwith"))
    write(tmp_path, "list.yml", "- just\n- a list\n")
    (tmp_path / ".hidden.yml").write_text("garbage: [")
    (tmp_path / "notes.txt").write_text("not a rule")
    report = check_rules(tmp_path)
    assert report.loaded == 1 and report.files == 8
    kinds = {f.path.name: (f.kind, f.reason) for f in report.failures}
    assert kinds["yaml.yml"][0] == "yaml" and "line" in kinds["yaml.yml"][1]
    assert kinds["field.yml"] == ("field", kinds["field.yml"][1]) and "Hostname" in kinds["field.yml"][1]
    assert kinds["sshd.yml"][0] == "logsource"
    assert kinds["noid.yml"][0] == "metadata"
    assert kinds["z-dup.yml"][0] == "duplicate" and "good.yml" in kinds["z-dup.yml"][1]
    assert kinds["modifier.yml"][0] == "sigma" and "startwith" in kinds["modifier.yml"][1]
    assert kinds["list.yml"][0] == "yaml"
    text = report.format()
    assert "8 files: 1 detection rules and 0 correlation rules loaded, 7 failed" in text
    assert "field.yml [11111111-2222-4111-8111-111111111111] 'Exec from tmp': field:" in text


def test_missing_directory_is_an_error(tmp_path, clock):
    engine = RuleEngine(clock=clock)
    with pytest.raises(RuleError) as e:
        engine.load(tmp_path / "nope")
    assert e.value.kind == "file"


def test_reload_picks_up_changes_and_keeps_rules_on_error(tmp_path, clock):
    rules = tmp_path / "rules"
    rules.mkdir()
    path = write(rules, "tmp.yml", RULE)
    engine = RuleEngine(clock=clock)
    engine.load(rules)
    assert not engine.changed()
    assert engine.process(tmp_exec())
    path.write_text(RULE.replace("/tmp/", "/dev/shm/") + "\n")
    os.utime(path, ns=(1, 1))
    assert engine.changed()
    report = engine.reload()
    assert report.loaded == 1 and not engine.changed()
    assert engine.process(tmp_exec(filename="/tmp/z")) == []
    assert engine.process(tmp_exec(filename="/dev/shm/z"))
    path.unlink()
    assert engine.changed()
    assert engine.reload().loaded == 0
    assert engine.process(tmp_exec(filename="/dev/shm/q")) == []
    rules.rmdir()
    with pytest.raises(RuleError):
        engine.reload()


def test_multi_document_files_and_yaml_suffix(tmp_path, clock):
    second = RULE.replace("1111-4111", "5555-4111").replace("/tmp/", "/var/tmp/")
    write(tmp_path, "two.yaml", RULE + "---\n" + second)
    engine = RuleEngine(clock=clock)
    assert engine.load(tmp_path).loaded == 2
    assert engine.process(tmp_exec(filename="/var/tmp/a"))


def test_a_file_event_rule_sees_writes_only(tmp_path, clock):
    write(tmp_path, "cron.yml", """\
        title: cron write
        id: 66666666-6666-4666-8666-666666666666
        logsource: {product: linux, category: file_event}
        detection:
            selection:
                TargetFilename|startswith: /etc/cron.d/
            condition: selection
        """)
    engine = RuleEngine(clock=clock)
    engine.load(tmp_path)
    assert engine.process(Open(agent="a", path="/etc/cron.d/job", flags=os.O_RDONLY)) == []
    assert engine.process(Open(agent="a", path="/etc/cron.d/job", flags=os.O_WRONLY | os.O_CREAT))


def test_statistics_show_the_index_sparing_work(tmp_path, clock):
    for n in range(50):
        write(tmp_path, f"r{n}.yml", RULE.replace("11111111-1111", f"{n:08d}-1111")
              .replace("Image|startswith: /tmp/", f"Image|endswith: /tool{n}"))
    engine = RuleEngine(clock=clock)
    assert engine.load(tmp_path).loaded == 50
    for _ in range(10):
        engine.process(Exec(agent="a", filename="/usr/bin/ls", argv=["ls"]))
    assert engine.statistics().evaluated == 0
    assert engine.process(Exec(agent="a", filename="/opt/tool7", argv=["x"]))
    assert engine.statistics().evaluated == 1


@pytest.mark.parametrize("detection, kind, words", [
    ("selection: {Image: x}\n    condition: 5", "condition", "malformed condition"),
    ("selection: {Image: [[1, 2]]}\n    condition: selection", "sigma", "Unsupported type"),
    ("selection: {Image|re: '['}\n    condition: selection", "sigma", "Regular expression"),
    ("selection: {ProcessId|lt: abc}\n    condition: selection", "sigma", "incompatible"),
    ("selection: {Image: x}\n    condition: selection | count() > 5", "condition", "pipe"),
    ("selection: {Image: x}\n    condition: 1 of nope_*", "condition", "nope_*"),
])
def test_malformed_rules_are_reported_not_raised(tmp_path, detection, kind, words):
    write(tmp_path, "bad.yml", RULE.split("detection:")[0] + "detection:\n    " + detection + "\n")
    (failure,) = check_rules(tmp_path).failures
    assert failure.kind == kind and words in failure.reason
    assert str(tmp_path) not in failure.reason  # the location is ours to print, once


def test_unreadable_and_odd_files_are_reported(tmp_path):
    (tmp_path / "bin.yml").write_bytes(b"\xff\xfe\x00")
    write(tmp_path, "id.yml", RULE.replace("id: 11111111-1111-4111-8111-111111111111", "id: 12"))
    write(tmp_path, "empty.yml", "")
    report = check_rules(tmp_path)
    kinds = {f.path.name: f.kind for f in report.failures}
    assert kinds == {"bin.yml": "file", "id.yml": "metadata"}
    assert report.loaded == 0 and report.files == 3


def test_prepare_changes_nothing_until_install(tmp_path, clock):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    write(old, "tmp.yml", RULE)
    write(new, "shm.yml", RULE.replace("/tmp/", "/dev/shm/"))
    engine = RuleEngine(clock=clock)
    engine.load(old)
    prepared = engine.prepare(new)
    assert engine.process(tmp_exec()) and not engine.process(tmp_exec(filename="/dev/shm/x"))
    assert engine.install(prepared).loaded == 1
    assert engine.process(tmp_exec(filename="/dev/shm/y")) and not engine.process(tmp_exec(pid=9))
    assert engine.rules.paths == (new,) and not engine.changed()


def test_a_keyed_batch_raises_the_same_alert_ids_on_any_engine(tmp_path, clock):
    """In a cluster a batch whose sentinel died before acknowledging it is
    evaluated again by another: its alerts must be copies, not new alerts."""
    write(tmp_path, "tmp.yml", RULE)
    engines = [RuleEngine(clock=clock, suppress_window=60) for _ in range(2)]
    for e in engines:
        assert e.load(tmp_path).ok
    batch = [tmp_exec(), tmp_exec(pid=101, filename="/tmp/y", argv=["/tmp/y"])]
    first, again = (e.process_batch(batch, key="web-1/s/7") for e in engines)
    assert [a.id for a in first] == [a.id for a in again] and len({a.id for a in first}) == 2
    other = RuleEngine(clock=clock, suppress_window=60)
    other.load(tmp_path)
    assert not {a.id for a in other.process_batch(batch, key="web-1/s/8")} & {a.id for a in first}
    unkeyed = [RuleEngine(clock=clock, suppress_window=60) for _ in range(2)]
    for e in unkeyed:
        e.load(tmp_path)
    assert {a.id for a in unkeyed[0].process_batch(batch)} != {a.id for a in unkeyed[1].process_batch(batch)}
