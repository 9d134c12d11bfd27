"""An agent that speaks another wire version than the hive's is told apart:
a warning, a Notice in its events, and the registry's count."""

import logging

import trio

import wire
from hive import Store

from tests.hive.test_router import Agent, hive, root_ctx_factory  # noqa: F401  (fixtures)


async def notices(db, agent, n, timeout=10.0):
    with trio.fail_after(timeout):
        while True:
            found = [e for e in Store(db, readonly=True).events(agent=agent, kind="notice")
                     if e.what == "wire_version_mismatch"]
            if len(found) >= n:
                return found
            await trio.sleep(0.05)


async def test_an_agent_of_another_wire_version_is_reported_once(hive, runtime, caplog):
    caplog.set_level(logging.WARNING)
    old = Agent(runtime, hive, hive.enroll("old-agent"))
    new = Agent(runtime, hive, hive.enroll("new-agent"))
    new.send(wire.Hello(agent="new-agent"))
    old.send(wire.Hello(agent="old-agent", wire_version=1))
    (notice,) = await notices(hive.db, "old-agent", 1)
    assert notice.detail == (f"the agent speaks wire version 1, the hive {wire.WIRE_VERSION}, which takes "
                             f"{wire.COMMANDS_SINCE} to {wire.WIRE_VERSION}: upgrade the agent")
    old.send(wire.Hello(agent="old-agent", wire_version=1))  # a reconnect: said already
    new.send(wire.Heartbeat())
    registry = runtime.registry["hive.registry"]
    with trio.fail_after(5):
        while registry.msgs_in < 4:
            await trio.sleep(0.05)
    await trio.sleep(0.3)
    old.close()
    new.close()
    assert len(await notices(hive.db, "old-agent", 1)) == 1
    assert await notices(hive.db, "new-agent", 0) == []
    assert registry.extra["wire_mismatch"] == 1
    warnings = [r.getMessage() for r in caplog.records if "wire_version_mismatch" in r.getMessage()]
    assert len(warnings) == 1 and "old-agent" in warnings[0]


async def test_an_agent_on_another_wire_version_is_shown_and_sent_no_command(hive, runtime):
    import json
    import subprocess
    import sys

    import zmq

    from actors import Context
    from hive import DELIVER, RESULTS, Deliver, Result
    from hive._actors import internal_codec

    ctx = Context(runtime, "playbook")
    deliver = ctx.socket(zmq.PUSH, connect=DELIVER, codec=internal_codec())
    results = ctx.socket(zmq.PULL, connect=RESULTS, codec=internal_codec())
    old = Agent(runtime, hive, hive.enroll("old-agent"))
    new = Agent(runtime, hive, hive.enroll("new-agent"))
    old.send(wire.Hello(agent="old-agent", wire_version=1))
    new.send(wire.Hello(agent="new-agent"))
    await trio.sleep(0.3)  # the router has both Hellos
    for agent in ("old-agent", "new-agent"):
        await deliver.send(Deliver(agent=agent, command=wire.KillProcess(id=f"k-{agent}", pid=4343)))
    with trio.fail_after(5):
        [refused] = await results.recv()
    assert isinstance(refused, Result) and refused.agent == "old-agent"
    assert refused.result.command == "k-old-agent" and not refused.result.ok
    assert refused.result.detail == (f"refused: the agent speaks wire version 1, the hive {wire.WIRE_VERSION}, "
                                     f"which takes {wire.COMMANDS_SINCE} to {wire.WIRE_VERSION}: upgrade the agent")
    assert [c.id for c in await new.replies(1)] == ["k-new-agent"]
    # Never sent what it cannot read: only the refusal of its Hello.
    assert [(type(m), bool(m.refused)) for m in await old.replies(2, timeout=0.5)] == [(wire.Ack, True)]
    assert runtime.registry["hive.router"].extra["commands_refused"] == 1
    with trio.fail_after(5):  # the registry writes once a second
        while {a.id: a.wire_version for a in Store(hive.db, readonly=True).agents()} != {
                "old-agent": 1, "new-agent": wire.WIRE_VERSION}:
            await trio.sleep(0.05)
    old.close()
    new.close()
    ctx.close()

    def agents(*args):
        r = subprocess.run([sys.executable, "-m", "node.cli", "agents", "--data", str(hive.db.parent), *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert {a["id"]: a["wire_version"] for a in json.loads(agents("--json"))} == {"old-agent": 1, "new-agent": wire.WIRE_VERSION}
    table = agents().splitlines()
    assert table[0].split()[7:9] == ["VERSION", "WIRE"]
    row = next(line for line in table if line.startswith("old-agent "))
    assert f"  1 (hive {wire.WIRE_VERSION}: refused)  " in row


async def test_an_agent_whose_wire_version_the_hive_does_not_speak_is_refused_and_keeps_its_batches(hive, runtime):
    # One version newer (hives are upgraded before agents) and one too old:
    # every batch is answered with the reason, none is stored; one version
    # back is taken.
    newer = wire.WIRE_VERSION + 1
    agents = {name: Agent(runtime, hive, hive.enroll(name)) for name in ("newer", "ancient", "one-back")}
    for name, version in (("newer", newer), ("ancient", wire.COMMANDS_SINCE - 1), ("one-back", wire.COMMANDS_SINCE)):
        agents[name].send(wire.Hello(agent=name, wire_version=version))
        agents[name].send(wire.EventBatch(stream="s", seq=1, events=[wire.Exec(time=1, pid=7, filename="/bin/true")]))
    [hello_ack, batch_ack] = await agents["newer"].replies(2)
    assert hello_ack.refused == batch_ack.refused == (
        f"the agent speaks wire version {newer}, the hive {wire.WIRE_VERSION}, which takes "
        f"{wire.COMMANDS_SINCE} to {wire.WIRE_VERSION}: upgrade the hive first (hives before agents)")
    assert batch_ack.seq == 0 and batch_ack.stream == "s"
    [_, ancient_ack] = await agents["ancient"].replies(2)
    assert ancient_ack.refused.endswith(": upgrade the agent")
    [one_back] = await agents["one-back"].replies(1)
    assert (one_back.seq, one_back.refused) == (1, "")
    assert runtime.registry["hive.router"].extra["wire_refused"] == 4
    store = Store(hive.db, readonly=True)
    assert {e.agent for e in store.events(kind="exec")} == {"one-back"}
    store.close()
    for a in agents.values():
        a.close()
