"""The playbook actor and the executor actor over real ZeroMQ sockets, with
a stand-in for the router and the relay between them (it carries Deliver to
the executor's commands endpoint and results back as Result): alerts in,
real processes killed, the trail in the hive's store."""

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
import trio
import zmq

import wire
from actors import Child, Codec, Context, Supervisor
from agent.response import executor_actor
from hive import Deliver, Result, Store
from hive._actors import internal_codec
from hive.playbook import Records, playbook_actor

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="killing other processes needs root")

KILL = """
id: kill
title: Kill
trigger: {rules: [r1]}
steps:
  - action: kill_process
    params: {pid: "{{ event.pid }}", tree: true}
"""
EVIDENCE = """
id: evidence
title: Collect evidence
trigger: {rules: [r3]}
steps:
  - action: collect_evidence
    params: {pid: "{{ event.pid }}", exe: false}
"""
APPROVE = """
id: kill-approved
title: Kill when approved
mode: approval
trigger: {rules: [r2]}
steps:
  - action: kill_process
    params: {pid: "{{ event.pid }}"}
"""

AI_KILL = """
id: ai-kill
title: Kill what the AI calls critical
trigger: {ai_verdict: {min_severity: critical, min_confidence: 0.8}}
steps:
  - action: kill_process
    params: {pid: "{{ event.pid }}"}
"""


async def bridge(ctx: Context, *, task_status=trio.TASK_STATUS_IGNORED, ep: dict) -> None:
    """The router and the relay in one: Deliver -> Command, CommandResult -> Result
    (and Results as they come on ``forged``, as if from any agent)."""
    deliver = ctx.socket(zmq.PULL, bind=ep["deliver"], codec=internal_codec())
    commands = ctx.socket(zmq.PUSH, bind=ep["commands"], codec=Codec(wire.HiveMessage))
    results_in = ctx.socket(zmq.PULL, bind=ep["agent_results"], codec=Codec(wire.AgentMessage))
    forged = ctx.socket(zmq.PULL, bind=ep["forged"], codec=internal_codec())
    results_out = ctx.socket(zmq.PUSH, bind=ep["results"], codec=internal_codec())
    task_status.started()

    async def down():
        while True:
            for d in await deliver.recv():
                if isinstance(d, Deliver):
                    await commands.send(d.command)

    async def up():
        while True:
            for r in await results_in.recv():
                await results_out.send(Result(agent="web1", result=r))

    async def relay_forged():
        while True:
            for r in await forged.recv():
                await results_out.send(r)

    async with trio.open_nursery() as n:
        n.start_soon(down)
        n.start_soon(up)
        n.start_soon(relay_forged)


def detached(script: str) -> int:
    out = subprocess.run(["bash", "-c", f"({script}) </dev/null >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def wait_for(predicate, timeout=5.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


@pytest.fixture
async def response(tmp_path, runtime):
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "kill.yml").write_text(KILL)
    (tmp_path / "playbooks" / "approve.yml").write_text(APPROVE)
    (tmp_path / "playbooks" / "evidence.yml").write_text(EVIDENCE)
    (tmp_path / "playbooks" / "ai_kill.yml").write_text(AI_KILL)
    db = tmp_path / "hive.db"
    Store(db).close()
    tag = f"{os.getpid()}.{time.monotonic_ns()}"
    ep = {k: f"inproc://test.{k}.{tag}" for k in ("alerts", "deliver", "results", "commands", "agent_results", "forged")}
    tree = Supervisor([
        Child("bridge", bridge, args={"ep": ep}),
        Child("playbook", playbook_actor, args={
            "path": db, "playbook_dirs": [tmp_path / "playbooks"], "evidence_dir": tmp_path / "evidence",
            "alerts_endpoint": ep["alerts"], "deliver_endpoint": ep["deliver"], "results_endpoint": ep["results"],
            "tick": 0.05}),
        Child("executor", executor_actor, args={
            "data_dir": tmp_path / "agent", "commands": ep["commands"], "results": ep["agent_results"]}),
    ], strategy="one_for_all")
    alerts = Context(runtime, "test").socket(zmq.PUSH, connect=ep["alerts"], codec=internal_codec())
    async with trio.open_nursery() as n:
        await n.start(tree, Context(runtime, "resp"))
        yield alerts, db, tmp_path, ep
        n.cancel_scope.cancel()
    alerts.close()


def alert(rule, pid, agent="web1"):
    return wire.Alert(id=f"al-{time.monotonic_ns()}", rule_id=rule, title="Reverse shell", level="critical",
                      agent=agent, events=[wire.Exec(pid=pid, agent=agent)])


def rows(db, **kw):
    store = Store(db)
    try:
        return Records(store.db).actions(**kw)
    finally:
        store.close()


async def test_an_alert_kills_a_real_process_tree_and_the_store_keeps_the_trail(response, runtime):
    alerts, db, _, _ = response
    pid = detached("sleep 300 & sleep 300 & wait")
    await trio.sleep(0.1)
    await alerts.send(alert("r1", pid))
    await wait_for(lambda: not alive(pid))
    await wait_for(lambda: [r.state for r in rows(db)] == ["done"])
    [row] = rows(db)
    assert row.action == "kill_process" and row.params == {"pid": pid, "tree": True}
    assert row.result.startswith("ok: killed 3 process(es)")
    store = Store(db)
    trail = Records(store.db).audit(action_id=row.id)
    store.close()
    assert [(t.actor, t.result.split(":")[0]) for t in reversed(trail)] == [("playbook:kill", "sent"),
                                                                          ("agent:web1", "ok")]
    stats = runtime.registry["resp.executor"].extra
    assert stats["ok"] == 1


async def test_approval_through_the_store_then_the_kill(response):
    alerts, db, _, _ = response
    pid = detached("exec sleep 300")
    try:
        await alerts.send(alert("r2", pid))
        await wait_for(lambda: [r.state for r in rows(db)] == ["pending_approval"])
        await trio.sleep(0.3)
        assert alive(pid)  # nothing happens until someone approves
        [row] = rows(db)
        store = Store(db)
        Records(store.db).approve(row.id, "alice")  # what `immune-node actions --approve` does
        store.close()
        await wait_for(lambda: not alive(pid))
        await wait_for(lambda: rows(db)[0].state == "done")
        assert "approved by alice" in rows(db)[0].reason
    finally:
        if alive(pid):
            os.kill(pid, 9)


async def test_an_offline_agent_gets_its_action_when_it_returns(response):
    alerts, db, _, _ = response
    store = Store(db)
    store.agent_seen("web1", time.time())
    store.mark_offline("web1")
    pid = detached("exec sleep 300")
    try:
        await trio.sleep(0.2)  # the actor has seen it offline
        await alerts.send(alert("r1", pid))
        await wait_for(lambda: [r.state for r in rows(db)] == ["queued"])
        await trio.sleep(0.3)
        assert alive(pid)
        store.agent_seen("web1", time.time())  # the registry, when the agent says hello again
        await wait_for(lambda: not alive(pid))
        await wait_for(lambda: rows(db)[0].state == "done")
    finally:
        store.close()
        if alive(pid):
            os.kill(pid, 9)


async def test_a_kill_of_the_agent_is_refused_on_the_agent_with_its_reason(response):
    alerts, db, _, _ = response
    await alerts.send(alert("r1", os.getpid()))  # the executor runs in this process
    await wait_for(lambda: [r.state for r in rows(db)] == ["failed"])
    assert rows(db)[0].result == f"failed: refused: pid {os.getpid()} is the agent itself"


async def test_evidence_comes_back_to_the_hive_and_verifies(response):
    from agent.response import unpack, verify_bundle

    alerts, db, tmp_path, _ = response
    pid = detached("exec sleep 300")
    try:
        await trio.sleep(0.1)
        await alerts.send(alert("r3", pid))
        await wait_for(lambda: [r.state for r in rows(db)] == ["done"])
    finally:
        os.kill(pid, 9)
    [row] = rows(db)
    kept = Path(row.data["archive_kept"])
    assert kept == tmp_path / "evidence" / "web1" / f"{row.id}.tar.gz"
    assert "archive" not in row.data  # the bytes went to the file, not the table
    bundle = unpack(kept.read_bytes(), tmp_path / "analyst")
    assert verify_bundle(bundle) == []
    assert row.data["manifest"]["pid"] == pid


async def test_an_archive_nobody_asked_for_is_not_written(response, runtime):
    _, db, tmp_path, ep = response
    forged = Context(runtime, "forger").socket(zmq.PUSH, connect=ep["forged"], codec=internal_codec())
    archive = b"x" * 100
    data = {"archive_sha256": hashlib.sha256(archive).hexdigest()}
    await forged.send(Result(agent="../../etc", result=wire.CommandResult(command="../../../x", ok=True, data=data,
                                                                          archive=archive)))
    await trio.sleep(0.3)
    forged.close()
    assert not (tmp_path / "evidence").exists()
    store = Store(db)
    [rec] = Records(store.db).audit(limit=1)
    store.close()
    assert (rec.actor, rec.result) == ("agent:../../etc", "ignored: no such command")


async def test_an_operators_own_kill_reaches_the_agent_and_the_trail_names_them(response):
    _, db, _, _ = response
    store = Store(db)
    store.agent_seen("web1", time.time())
    pid = detached("sleep 300 & wait")
    try:
        # What the console's action form and `immune-node actions run` do.
        a = Records(store.db).run("kill_process", "web1", {"pid": pid, "tree": True}, by="rick", why="by hand")
        await wait_for(lambda: not alive(pid))
        await wait_for(lambda: rows(db, action_id=a.id)[0].state == "done")
        trail = Records(store.db).audit(action_id=a.id)
        assert [(t.actor, t.result.split(":")[0]) for t in reversed(trail)] == [
            ("operator:rick", "requested"), ("operator:rick", "sent"), ("agent:web1", "ok")]
        # A request the hive's own checks refuse at pickup (here: no such agent any more) never goes out.
        store.db.execute("UPDATE agents SET revoked=1 WHERE id='web1'")
        with pytest.raises(ValueError, match="unknown or revoked"):
            Records(store.db).run("kill_process", "web1", {"pid": pid}, by="rick")
    finally:
        store.close()
        if alive(pid):
            os.kill(pid, 9)


async def test_a_stored_ai_verdict_fires_its_playbook_and_only_that(response):
    from hive.correlate import Incident

    _, db, _, _ = response
    pid = detached("exec sleep 300")
    try:
        store = Store(db)
        a = alert("r9", pid)
        a.incident = "inc-1"
        store.ingest([], [a], [Incident(id="inc-1", title="t", opened=1.0, updated=1.0, agents=["web1"],
                                        alerts=[a.id])])
        verdict = {"severity": "critical", "techniques": ["T1059"], "explanation": "x", "playbook": "",
                   "confidence": 0.7}
        # A failure and a verdict under the playbook's confidence do nothing.
        store.add_triage("inc-1", state="failed", requested_by="auto", reason="the verdict is not JSON")
        store.add_triage("inc-1", state="done", requested_by="auto", model="m", verdict=verdict)
        await trio.sleep(0.3)
        assert alive(pid) and rows(db) == []
        store.add_triage("inc-1", state="done", requested_by="cli", model="m", verdict={**verdict, "confidence": 0.9})
        store.close()
        await wait_for(lambda: not alive(pid))
        await wait_for(lambda: [r.state for r in rows(db)] == ["done"])
        [row] = rows(db)
        assert row.playbook == "ai-kill" and row.alert == a.id and "AI verdict on incident inc-1" in row.reason
    finally:
        if alive(pid):
            os.kill(pid, 9)
