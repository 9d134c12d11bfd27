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
    assert notice.detail == f"the agent speaks wire version 1, the hive {wire.WIRE_VERSION}: it cannot decode the hive's commands"
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
    assert refused.result.detail == (f"refused: the agent speaks wire version 1, the hive {wire.WIRE_VERSION}: "
                                     "it cannot decode the hive's commands")
    assert [c.id for c in await new.replies(1)] == ["k-new-agent"]
    assert await old.replies(1, timeout=0.5) == []  # never sent what it cannot read
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
    assert f"  1 (hive {wire.WIRE_VERSION}: no commands)  " in row
