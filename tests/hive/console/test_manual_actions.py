"""An operator's own action (kill a process, block an address, isolate a
host, collect evidence) as plain objects, without sockets: what
``Records.run`` accepts and writes, how the engine checks it again and sends
it, and every refusal's one line."""

from __future__ import annotations

import time

import pytest

import wire
from hive import Store
from hive.playbook import PlaybookEngine, Records, check_manual

AGENTS = {"web1": frozenset({4242})}


@pytest.mark.parametrize("action, agent, params, ttl, why", [
    ("kill_process", "web1", {"pid": 0}, 0, "pid must be a positive integer"),
    ("kill_process", "web1", {"pid": -5}, 0, "pid must be a positive integer"),
    ("kill_process", "web1", {"pid": "12"}, 0, "pid must be a positive integer"),
    ("kill_process", "web1", {"pid": True}, 0, "pid must be a positive integer"),
    ("kill_process", "web1", {}, 0, "pid: kill_process needs the pid"),
    ("kill_process", "web1", {"pid": 1}, 0, "refused: pid 1 is init"),
    ("kill_process", "web1", {"pid": 4242}, 0, "refused: pid 4242 is the agent itself"),
    ("kill_process", "web1", {"pid": 7}, 60, "ttl: kill_process cannot be undone"),
    ("kill_process", "db9", {"pid": 7}, 0, "agent 'db9' is unknown or revoked"),
    ("kill_process", "", {"pid": 7}, 0, "agent: name the agent"),
    ("kill_process", "web1", {"pid": 7, "address": "10.0.0.1"}, 0, "address: kill_process takes pid, tree"),
    ("block_connect", "web1", {"address": "10.9.0.0/16"}, 0, "refused: 10.9.0.0/16 covers the hive's address"),
    ("block_connect", "web1", {"address": "0.0.0.0/0"}, 0, "covers the hive's address"),
    ("block_connect", "web1", {"address": "not an address"}, 0, "does not appear to be an IPv4 or IPv6"),
    ("block_connect", "web1", {}, 0, "address: block_connect needs an address"),
    ("block_connect", "web1", {"address": "192.0.2.1"}, -1, "ttl must be"),
    ("block_connect", "web1", {"address": "192.0.2.1"}, float("nan"), "ttl must be"),
    ("isolate_host", "web1", {"pid": 3}, 0, "pid: isolate_host takes no parameters"),
    ("collect_evidence", "web1", {"pid": 4194305}, 0, "pid must be"),
    ("notify", "web1", {}, 0, "cannot be run by hand"),
    ("unblock", "web1", {}, 0, "cannot be run by hand"),
])
def test_bad_manual_actions_are_refused_with_one_line(action, agent, params, ttl, why):
    with pytest.raises(ValueError) as e:
        check_manual(action, agent, params, ttl, agents=AGENTS, protected=["10.9.8.7"])
    assert why in str(e.value) and "\n" not in str(e.value)


def test_good_manual_actions_keep_their_parameters():
    assert check_manual("kill_process", "web1", {"pid": 77, "tree": True}, agents=AGENTS) == {"pid": 77, "tree": True}
    assert check_manual("block_connect", "web1", {"address": "192.0.2.0/24"}, 600, agents=AGENTS) == {
        "address": "192.0.2.0/24"}
    assert check_manual("isolate_host", "web1", {}, 3600, agents=AGENTS) == {}
    assert check_manual("collect_evidence", "web1", {"pid": 77}, agents=AGENTS) == {"pid": 77}


@pytest.fixture
def store(store_location, tmp_path):
    s = Store(store_location)
    s.agent_seen("web1", time.time(), hello=wire.Hello(agent="web1", hostname="web1", pid=4242))
    yield s
    s.close()


def test_records_run_writes_a_requested_row_and_refuses_before_writing(store):
    records = Records(store.db)
    a = records.run("block_connect", "web1", {"address": "192.0.2.9"}, ttl=60, by="rick", why="C2", alert="al-1",
                    protected=["10.0.0.1"])
    [row] = records.actions()
    assert (row.id, row.state, row.mode, row.ttl, row.alert, row.params) == (
        a.id, "requested", "manual", 60, "al-1", {"address": "192.0.2.9"})
    assert row.reason == "run by rick: C2"
    assert records.requested() == [(a.id, "run", "rick", "C2")]
    [trail] = records.audit()
    assert (trail.actor, trail.result, trail.what) == (
        "operator:rick", "requested", "run block_connect address=192.0.2.9 on web1")
    for bad in ({"pid": 4242}, {"pid": 0}):  # the agent's own pid (from its Hello), and no pid
        with pytest.raises(ValueError):
            records.run("kill_process", "web1", bad, by="rick")
    with pytest.raises(ValueError, match="covers the hive's address"):
        records.run("block_connect", "web1", {"address": "10.0.0.0/8"}, by="rick", protected=["10.0.0.1"])
    assert len(records.actions()) == 1 and len(records.audit()) == 1  # a refusal writes nothing


def test_the_engine_sends_an_operators_action_and_reverts_it_at_its_ttl(store):
    now = [1000.0]
    engine = PlaybookEngine(clock=lambda: now[0], protected=["10.0.0.1"])
    engine.agent_online("web1", pids=[4242])
    records = Records(store.db)
    a = records.run("isolate_host", "web1", {}, ttl=30, by="rick")
    d = engine.run(records.actions(action_id=a.id)[0], "rick")
    [(agent, cmd)] = d.send
    assert agent == "web1" and isinstance(cmd, wire.IsolateHost) and cmd.ttl == 30 and cmd.id == a.id
    assert [(r.actor, r.result) for r in d.audit] == [("operator:rick", "sent")]
    records.write(d)
    assert records.requested() == []
    assert not engine.run(records.actions(action_id=a.id)[0], "rick")  # taken once
    d = engine.on_result("web1", wire.CommandResult(command=a.id, ok=True, detail="isolated"))
    assert d.actions[0].state == "active"
    now[0] += 31
    [(_, revert)] = engine.tick().send
    assert isinstance(revert, wire.Unisolate)


def test_the_engine_refuses_what_it_knows_better(store):
    engine = PlaybookEngine(clock=lambda: 1000.0, protected=["10.0.0.1"])
    records = Records(store.db)
    a = records.run("kill_process", "web1", {"pid": 5000}, by="rick")
    row = records.actions(action_id=a.id)[0]
    d = engine.run(row, "rick")  # the engine has not heard of web1 (yet)
    assert not d.send and d.actions[0].state == "refused"
    assert d.actions[0].result == "refused: agent 'web1' is unknown or revoked"
    engine.agent_online("web1", pids=[5000])  # it now says 5000 is the agent itself
    row = records.actions(action_id=a.id)[0]
    row.id = "a-other"
    d = engine.run(row, "rick")
    assert not d.send and "is the agent itself" in d.actions[0].result
    assert d.audit[0].actor == "operator:rick"


def test_an_offline_agent_gets_the_operators_action_when_it_returns(store):
    engine = PlaybookEngine(clock=lambda: 1000.0)
    engine.agent_offline("web1")
    records = Records(store.db)
    a = records.run("collect_evidence", "web1", {"pid": 77}, by="rick")
    d = engine.run(records.actions(action_id=a.id)[0], "rick")
    assert not d.send and d.actions[0].state == "queued"
    [(_, cmd)] = engine.agent_online("web1").send
    assert isinstance(cmd, wire.CollectEvidence) and cmd.pid == 77
