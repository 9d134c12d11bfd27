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
    assert notice.detail == "the agent speaks wire version 1, the hive 2: it cannot decode the hive's commands"
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
