"""The outputs' plain parts without sockets: ECS documents, RFC 5424
messages and their framing, the rotating file, the retry policy, the
cursors in the store, and the [[outputs]] configuration."""

import json
import re
import time

import msgspec
import pytest

import wire
from hive import Ingest, Store
from hive.outputs import (
    Cursors, FrameError, Link, RotatingFile, alert_doc, attack, event_doc, message, octet_frame, split_frames,
)
from node import ConfigError, load_config

T0 = 1_700_000_000_123_456_789


def make_alert(n=1, **kw):
    event = wire.Exec(time=T0, pid=4242, ppid=1, uid=1000, euid=0, user="alice", comm="sh", verdict="block",
                      filename="/tmp/x.sh", cmdline="/tmp/x.sh --now", parent_image="/bin/bash", agent="web1")
    return wire.Alert(**{"id": f"a{n}", "rule_id": "r-tmp", "title": "Exec from /tmp", "level": "high",
                         "tags": ["attack.execution", "attack.t1059.004", "attack.t1059", "attack.g0032", "cve.2021"],
                         "agent": "web1", "time": T0 + n, "events": [event], **kw})


def test_an_alert_is_an_ecs_document():
    doc = alert_doc(make_alert(), host="web1.example.org")
    assert doc["ecs"]["version"].startswith("8.")
    assert doc["@timestamp"] == "2023-11-14T22:13:20.123456Z"
    assert doc["event"]["kind"] == "alert" and doc["event"]["severity"] == 73 and doc["log"]["level"] == "high"
    assert doc["rule"] == {"id": "r-tmp", "name": "Exec from /tmp"}
    assert doc["host"]["name"] == "web1.example.org" and doc["agent"]["id"] == "web1"
    assert doc["process"]["pid"] == 4242 and doc["process"]["executable"] == "/tmp/x.sh"
    assert doc["process"]["command_line"] == "/tmp/x.sh --now" and doc["process"]["parent"]["pid"] == 1
    assert doc["user"] == {"id": "1000", "name": "alice", "effective": {"id": "0"}}
    assert doc["threat"]["technique"]["id"] == ["T1059"]
    assert doc["threat"]["technique"]["subtechnique"]["id"] == ["T1059.004"]
    assert doc["threat"]["tactic"]["name"] == ["Execution"]
    assert doc["event"]["outcome"] == "failure" and doc["immune"]["verdict"] == "block"
    json.dumps(doc)  # plain JSON types only
    # The agent's id stands for its host name when the hive knows none.
    assert alert_doc(make_alert())["host"]["name"] == "web1"


def test_attack_tags_other_than_techniques_and_tactics_are_left_out():
    assert attack(["attack.g0032", "attack.s0002", "car.2013-01-002", "attack."]) == {}
    assert attack(["attack.privilege_escalation"])["tactic"]["name"] == ["Privilege Escalation"]


@pytest.mark.parametrize("event, field, value", [
    (wire.Connect(time=T0, pid=7, address="10.0.0.9", port=4444, hostname="c2.example"), "destination",
     {"ip": "10.0.0.9", "port": 4444, "domain": "c2.example"}),
    (wire.Open(time=T0, pid=7, path="/etc/shadow"), "file", {"path": "/etc/shadow"}),
    (wire.Exec(time=T0, pid=7, container="c" * 64, container_image="busybox"), "container",
     {"id": "c" * 64, "image": {"name": "busybox"}}),
])
def test_an_event_is_an_ecs_document(event, field, value):
    doc = event_doc(event, host="h")
    assert doc["event"]["kind"] == "event" and doc[field] == value


def test_a_syslog_message_is_rfc5424_with_the_document_as_ascii_json():
    doc = alert_doc(make_alert(title="caf\u00e9 \U0001f600"), host="web 1\u00e9")
    msg = message(doc, facility=16, hostname="web 1\u00e9", time_ns=T0, procid=99)
    head = re.match(rb"<(\d+)>1 (\S+) (\S+) immune 99 alert - ", msg)
    assert head, msg[:80]
    assert int(head.group(1)) == 16 * 8 + 3  # local0, error (a high alert)
    assert head.group(2) == b"2023-11-14T22:13:20.123456Z" and head.group(3) == b"web1"
    body = msg[head.end():]
    assert body.isascii() and json.loads(body)["message"] == "caf\u00e9 \U0001f600"
    # An event is informational.
    ev = message(event_doc(wire.Exec(time=T0)), facility=1, hostname="", time_ns=T0, procid=1)
    assert ev.startswith(b"<14>1 ") and b" immune 1 event - " in ev


def test_a_datagram_is_clipped_to_fit():
    doc = alert_doc(make_alert(detail="x" * 200_000))
    full = message(doc, facility=16, hostname="h", time_ns=T0)
    assert len(full) > 200_000
    clipped = message(doc, facility=16, hostname="h", time_ns=T0, limit=65_000)
    assert len(clipped) <= 65_000
    assert json.loads(clipped.split(b" - ", 1)[1])["immune"]["clipped"] is True


def test_octet_counting_frames_split_back_exactly():
    msgs = [b"<14>1 - - - - - - one", b"", b"x" * 70_000, "\u00e9".encode()]
    stream = bytearray(b"".join(map(octet_frame, msgs)))
    got = []
    buf = bytearray()
    for i in range(0, len(stream), 997):  # as a receiver sees them: in pieces
        buf += stream[i:i + 997]
        got += split_frames(buf)
    assert got == msgs and not buf


@pytest.mark.parametrize("bad", [b"abc def", b"012 x", b"123456789012345"])
def test_a_stream_that_is_not_octet_counted_is_refused(bad):
    with pytest.raises(FrameError):
        split_frames(bytearray(bad))


def test_the_file_rotates_by_size_and_keeps_n(tmp_path):
    path = tmp_path / "alerts.json"
    f = RotatingFile(path, max_bytes=100, keep=2)
    for n in range(12):
        f.write([b'{"n": "%02d", "pad": "%s"}' % (n, b"x" * 10)])  # 33 bytes a line: 3 per file
    f.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["alerts.json", "alerts.json.1", "alerts.json.2"]
    lines = [int(json.loads(line)["n"]) for name in ("alerts.json.2", "alerts.json.1", "alerts.json")
             for line in (tmp_path / name).read_text().splitlines()]
    assert lines == list(range(3, 12))  # the oldest file went; no record was cut
    assert all((tmp_path / n).stat().st_size <= 100 for n in names)
    # A record larger than the bound still goes, alone in its file.
    f = RotatingFile(path, max_bytes=100, keep=2)
    f.write([b"y" * 500, b"{}"])
    f.close()
    assert (tmp_path / "alerts.json.1").read_bytes() == b"y" * 500 + b"\n"
    assert (tmp_path / "alerts.json").read_bytes() == b"{}\n"


def test_retries_back_off_to_the_cap_and_say_down_and_up_once():
    now = [0.0]
    link = Link(first=1, cap=60, clock=lambda: now[0])
    waits = []
    for _ in range(10):
        wait, went_down = link.failed("refused")
        waits.append(wait)
        assert went_down == (len(waits) == 1)
        now[0] += wait
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert link.succeeded() == pytest.approx(sum(waits))
    assert link.succeeded() is None  # up already: nothing to say
    assert link.failed("again") == (1, True) and link.failures == 11
    for _ in range(5000):  # no overflow however long it stays down
        assert link.failed("x")[0] <= 60


def alerts_batch(first, n):
    return [make_alert(i) for i in range(first, first + n)]


def test_a_cursor_starts_at_the_end_or_with_backfill_at_the_start(store_location, tmp_path):
    store = Store(store_location)
    store.ingest([], alerts_batch(0, 3))
    c = Cursors(store.db)
    assert c.open("late", "alerts") == {"alerts": 3}
    assert c.open("all", "both", backfill=True) == {"alerts": 0, "events": 0}
    assert c.open("late", "alerts") == {"alerts": 3}  # opened again: where it was
    assert [r.doc["event"]["id"] for r in c.fetch("alerts", 0, 10)] == ["a0", "a1", "a2"]
    assert c.backlog({"alerts": 0, "events": 0}) == 3


def test_a_cursor_moves_only_forward_and_survives_reopening(store_location, tmp_path):
    store = Store(store_location)
    store.ingest([Ingest(agent="web1", events=[wire.Exec(time=T0 + i, pid=i + 1) for i in range(5)])],
                 alerts_batch(0, 5))
    c = Cursors(store.db)
    c.open("o", "both", backfill=True)
    first = c.fetch("alerts", 0, 2)
    c.advance("o", {"alerts": first[-1].position})
    c.advance("o", {"alerts": 1})  # an older batch's late write cannot move it back
    events = c.fetch("events", 0, 100)
    assert [r.doc["process"]["pid"] for r in events] == [1, 2, 3, 4, 5]
    c.advance("o", {"events": events[2].position})
    store.close()
    store = Store(store_location)
    c = Cursors(store.db)
    at = c.open("o", "both")
    assert [r.doc["event"]["id"] for r in c.fetch("alerts", at["alerts"], 10)] == ["a2", "a3", "a4"]
    assert [r.doc["process"]["pid"] for r in c.fetch("events", at["events"], 10)] == [4, 5]
    assert c.backlog(at) == 5


def test_a_damaged_row_is_passed_over_not_a_stop(store_location, tmp_path):
    store = Store(store_location)
    store.ingest([], alerts_batch(0, 3))
    store.db.execute("UPDATE alerts SET body=? WHERE id='a1'", (b"\xc1",))
    got = Cursors(store.db).fetch("alerts", 0, 10)
    assert [bool(r.doc) for r in got] == [True, False, True]
    assert [r.position for r in got] == [1, 2, 3]


def test_the_host_name_comes_from_the_agents_table(store_location, tmp_path):
    store = Store(store_location)
    store.agent_seen("web1", time.time(), hello=wire.Hello(agent="web1", hostname="web1.example.org"))
    store.ingest([], alerts_batch(0, 1))
    assert Cursors(store.db).fetch("alerts", 0, 1)[0].doc["host"]["name"] == "web1.example.org"


# -- configuration -----------------------------------------------------------------------

def config(tmp_path, text, **kw):
    path = tmp_path / "immune.toml"
    path.write_text(text)
    return load_config(path, **kw)


def test_the_documented_output_example_loads(tmp_path):
    from node._config import __file__ as config_module
    from pathlib import Path

    text = Path(config_module).with_name("immune.example.toml").read_text()
    block = text[text.index("# [[outputs]]"):]
    cfg = config(tmp_path, "\n".join(line[2:] if line.startswith("# ") else "" for line in block.splitlines()))
    assert [(o.name, o.kind, o.what) for o in cfg.outputs] == [
        ("siem", "syslog", "alerts"), ("archive", "file", "alerts"), ("soar", "webhook", "alerts")]
    first = msgspec.structs.replace(cfg.outputs[0], name="x", kind="file", target="f")
    from node._config import OutputConfig
    assert first == OutputConfig(name="x", kind="file", target="f")  # the comments state the defaults


@pytest.mark.parametrize("table, reason", [
    ('name = "a b"\nkind = "file"\ntarget = "/tmp/x"', r"outputs\[0\]\.name: 'a b': 1 to 64"),
    ('name = "a"\nkind = "kafka"\ntarget = "x"', r"outputs\[0\]\.kind: 'kafka' is not one of file, syslog, webhook"),
    ('name = "a"\nkind = "file"\ntarget = "/tmp/x"\nwhat = "all"', r"outputs\[0\]\.what: 'all' is not one of"),
    ('name = "a"\nkind = "syslog"\ntarget = "http://h:514"', r"outputs\[0\]\.target: 'http://h:514' is not udp://"),
    ('name = "a"\nkind = "syslog"\ntarget = "tcp://h:0"', r"outputs\[0\]\.target: .*\(port 1 to 65535\)"),
    ('name = "a"\nkind = "syslog"\ntarget = "tcp://h:99999"', r"outputs\[0\]\.target:"),
    ('name = "a"\nkind = "syslog"\ntarget = "tcp://[::1:514"', r"outputs\[0\]\.target:"),
    ('name = "a"\nkind = "syslog"\ntarget = "tcp://h"', r"outputs\[0\]\.target:"),
    ('name = "a"\nkind = "webhook"\ntarget = "ftp://h/x"', r"outputs\[0\]\.target: 'ftp://h/x' is not an http"),
    ('name = "a"\nkind = "file"\ntarget = ""', r"outputs\[0\]\.target: must name a file"),
    ('name = "a"\nkind = "syslog"\ntarget = "tcp://h:1"\nca = "/etc/hosts"', r"outputs\[0\]\.ca: only for a tls://"),
    ('name = "a"\nkind = "webhook"\ntarget = "https://h/"\ntoken = "a\\r\\nX-Evil: 1"',
     r"outputs\[0\]\.token: 1 to 4096 printable ASCII"),
    ('name = "a"\nkind = "file"\ntarget = "/tmp/x"\ntoken = "t"', r"outputs\[0\]\.token: only for a webhook"),
    ('name = "a"\nkind = "syslog"\ntarget = "udp://h:1"\nfacility = "local9"', r"outputs\[0\]\.facility: 'local9'"),
    ('name = "a"\nkind = "syslog"\ntarget = "udp://h:1"\ntimeout = 0', r"outputs\[0\]\.timeout: must be a number greater than 0"),
    ('name = "a"\nkind = "file"\ntarget = "/tmp/x"\nkeep = 0', r"outputs\[0\]\.keep: must be an integer from 1 to 1000, not 0"),
    ('name = "a"\nkind = "file"\ntarget = "/tmp/x"\nmax_mb = "big"', r"outputs\[0\]\.max_mb: must be an integer from 1 to 1048576, not .big."),
    ('name = "a"\nkind = "file"', r"outputs\[0\]: object missing required field `target`"),
    ('name = "a"\nkind = "file"\ntarget = "/tmp/x"\nurl = "y"', r"outputs\[0\]: object contains unknown field `url`"),
    ('name = "a\\u0000"\nkind = "file"\ntarget = "/tmp/x"', r"outputs\[0\]\.name: contains a NUL character"),
])
def test_a_bad_output_is_refused_in_one_line_naming_its_key(tmp_path, table, reason):
    with pytest.raises(ConfigError) as e:
        config(tmp_path, f"[[outputs]]\n{table}\n")
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"config {tmp_path / 'immune.toml'}: ")
    assert re.search(reason, text), text


def test_output_names_are_unique_and_outputs_a_list_of_tables(tmp_path):
    with pytest.raises(ConfigError, match=r"outputs\[1\]\.name: 'a' is the name of an earlier output"):
        config(tmp_path, '[[outputs]]\nname="a"\nkind="file"\ntarget="/tmp/x"\n'
                         '[[outputs]]\nname="a"\nkind="file"\ntarget="/tmp/y"\n')
    with pytest.raises(ConfigError, match=r"outputs: is a list: write each output as an \[\[outputs\]\] table"):
        config(tmp_path, '[outputs]\nname="a"\n')


def test_the_hive_checks_the_ca_file_and_the_file_output_folder(tmp_path):
    from node._config import HIVE_FOLDERS

    good = config(tmp_path, f'[[outputs]]\nname="a"\nkind="file"\ntarget="{tmp_path}/out.json"\n', check={HIVE_FOLDERS})
    assert good.outputs[0].target == f"{tmp_path}/out.json"
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.target: .*/nowhere: no such folder"):
        config(tmp_path, f'[[outputs]]\nname="a"\nkind="file"\ntarget="{tmp_path}/nowhere/x"\n', check={HIVE_FOLDERS})
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.ca: .*/ca.pem: No such file"):
        config(tmp_path, f'[[outputs]]\nname="a"\nkind="syslog"\ntarget="tls://h:6514"\nca="{tmp_path}/ca.pem"\n',
               check={HIVE_FOLDERS})
