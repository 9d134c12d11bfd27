"""The audit trail in the hive's store, operators' approvals through it,
and notify against a real HTTP server on loopback."""

import http.server
import json
import threading
from typing import ClassVar

import pytest
from test_playbook_engine import Clock, alert, ids

import wire
from hive import Store
from hive.playbook import (
    Notifier,
    Notify,
    PlaybookEngine,
    Records,
    RecordsError,
    parse_playbook,
)

PB = """
id: approve-kill
title: Kill, approved
mode: approval
trigger: {rules: [r1]}
steps:
  - action: collect_evidence
    mode: auto
    params: {pid: "{{ event.pid }}"}
  - action: kill_process
    params: {pid: "{{ event.pid }}"}
"""


@pytest.fixture
def records(store_location, tmp_path):
    store = Store(store_location)
    yield Records(store.db)
    store.close()


def test_decisions_are_written_and_read_back(records):
    clock = Clock()
    e = PlaybookEngine([parse_playbook(PB)], clock=clock, new_id=ids())
    a = alert()
    records.write(e.on_alert(a))
    rows = {r.action: r for r in records.actions()}
    assert rows["collect_evidence"].state == "sent"
    assert rows["kill_process"].state == "pending_approval"
    assert rows["kill_process"].params == {"pid": 4242}
    assert rows["kill_process"].alert == a.id and rows["kill_process"].playbook == "approve-kill"
    trail = records.audit(action_id=rows["kill_process"].id)
    assert [t.result for t in trail] == ["awaiting approval (immune-node actions --approve a-2) for 3600s"]
    assert [r.id for r in records.actions(states=["pending_approval"])] == ["a-2"]


def test_a_damaged_row_is_read_with_what_can_be_read(records):
    """A row the engine cannot parse (nested past the decoder's recursion
    limit, not JSON, not an object) must not stop the hive taking back the
    others after a restart."""
    e = PlaybookEngine([parse_playbook(PB)], clock=Clock(), new_id=ids())
    records.write(e.on_alert(alert()))
    deep = "[" * 100_000 + "]" * 100_000
    records.db.execute("UPDATE commands SET params=?, result=? WHERE id='a-2'", (deep, "not json"))
    records.db.execute("UPDATE commands SET params='[1]' WHERE id='a-1'")
    rows = {r.id: r for r in records.open_actions()}
    assert (rows["a-2"].params, rows["a-2"].result, rows["a-2"].state) == ({}, "not json", "pending_approval")
    assert rows["a-1"].params == {}


def test_an_operator_approves_through_the_store_and_the_engine_carries_it_out(records):
    clock = Clock()
    e = PlaybookEngine([parse_playbook(PB)], clock=clock, new_id=ids())
    records.write(e.on_alert(alert()))
    with pytest.raises(RecordsError, match="action a-1 is sent, not awaiting approval"):
        records.approve("a-1", "alice")
    with pytest.raises(RecordsError, match="no action 'a-9'"):
        records.approve("a-9", "alice")
    records.approve("a-2", "alice")
    assert records.actions(action_id="a-2")[0].state == "approved"
    # what the playbook actor does each second
    [(action_id, verb, by, _)] = records.requested()
    assert (action_id, verb, by) == ("a-2", "approve", "alice")
    d = e.approve(action_id, by)
    assert [c.id for _, c in d.send] == ["a-2"]
    records.write(d)
    assert not records.requested()
    row = records.actions(action_id="a-2")[0]
    assert row.state == "sent" and "approved by alice" in row.reason
    actors = [t.actor for t in records.audit(action_id="a-2")]
    assert actors == ["operator:alice", "operator:alice", "playbook:approve-kill"]  # newest first


def test_a_restarted_engine_takes_back_what_was_open(records):
    clock = Clock()
    pb = parse_playbook("""
id: kill-and-block
title: Kill on approval, block now
trigger: {rules: [r1]}
steps:
  - action: kill_process
    mode: approval
    params: {pid: "{{ event.pid }}"}
  - action: block_connect
    ttl: 10m
    params: {address: "{{ event.address }}"}
""")
    e = PlaybookEngine([pb], clock=clock, new_id=ids())
    records.write(e.on_alert(alert(events=[wire.Connect(pid=9, agent="web1", address="10.1.1.1", port=1)])))
    records.write(e.on_result("web1", wire.CommandResult(command="a-2", ok=True, data={"rule": "resp-a-2"})))
    records.deny("a-1", "bob", "known scanner")
    fresh = PlaybookEngine([pb], clock=clock, new_id=lambda: "a-new")
    fresh.restore(records.open_actions())
    assert fresh.action("a-2").state == "active"
    [(_, _, by, why)] = records.requested()
    d = fresh.reject("a-1", by, why)
    assert d.actions[0].state == "rejected" and "known scanner" in d.actions[0].reason
    clock.advance(600)
    [(_, revert)] = fresh.tick().send
    assert isinstance(revert, wire.Unblock) and revert.rule == "resp-a-2"


class Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list] = []
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(Hook.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Hook.received = []
    Hook.status = 200
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_notify_posts_the_alert_and_does_not_storm_a_failing_hook(webhook):
    clock = Clock()
    notifier = Notifier(backoff=30, clock=clock)
    a = alert()
    cmd = Notify(id="n1", url=webhook, alert={"id": a.id, "title": "T", "level": "high", "agent": "web1"})
    r = notifier.notify(cmd, playbook="pb")
    assert r.ok and r.data == {"status": 200}
    [(ctype, body)] = Hook.received
    assert ctype == "application/json"
    assert body["alert"]["id"] == a.id and body["playbook"] == "pb"
    assert body["text"] == f"[high] T on web1 (playbook pb, alert {a.id})"
    Hook.status = 500
    r = notifier.notify(cmd)
    assert not r.ok and "HTTP 500" in r.detail
    r = notifier.notify(cmd)
    assert not r.ok and "next attempt after 30s" in r.detail
    assert len(Hook.received) == 2  # the third was never sent
    clock.advance(30)
    Hook.status = 200
    assert notifier.notify(cmd).ok


def test_notify_refuses_other_schemes():
    with pytest.raises(ValueError, match="url must be an http:// or https:// URL, not 'file:///etc/shadow'"):
        Notify(id="n", url="file:///etc/shadow")
