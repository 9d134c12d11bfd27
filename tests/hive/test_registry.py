"""The registry's plain object: what to write each interval, and what to
keep when the store could not write it."""

import wire
from hive import AgentRow, AgentSeen
from hive._registry import Presence, WireVersions


def row(agent, online=True):
    return AgentRow(agent, None, None, None, "", [], "", "", "", "", 1.0, 1.0 if online else None, online, 0, 0, 0)


def seen(agent, t, **kw):
    return AgentSeen(agent=agent, time=int(t * 1e9), **kw)


def test_signs_of_life_are_merged_per_agent_until_written():
    p = Presence(30, [], now=0)
    p.seen(seen("a", 1, hello=wire.Hello(agent="a", pid=7), address="10.0.0.1"))
    p.seen(seen("a", 1.5, bundle=wire.BundleStatus(version=4, detail="not newer", running=3)))
    p.seen(seen("a", 2, heartbeat=wire.Heartbeat(spooled=3)))
    p.seen(seen("b", 2))
    due, gone = p.due(now=2.5)
    assert gone == [] and [m.agent for m in due] == ["a", "b"]
    a = due[0]
    assert (a.time, a.hello.pid, a.heartbeat.spooled, a.address) == (2 * 10**9, 7, 3, "10.0.0.1")
    assert (a.bundle.version, a.bundle.running) == (4, 3)  # a bundle status is not lost in the merge
    assert p.due(now=3) == ([], [])  # nothing new: nothing to write


def test_silent_agents_go_offline_once():
    p = Presence(10, [row("old"), row("gone", online=False)], now=100)
    p.seen(seen("a", 100))
    p.due(now=100)
    assert p.due(now=105) == ([], [])
    assert p.due(now=111) == ([], ["a", "old"])
    assert p.due(now=120) == ([], [])
    p.seen(seen("a", 121))
    assert [m.agent for m in p.due(now=121)[0]] == ["a"]


def test_a_failed_write_is_retried_with_what_came_since():
    p = Presence(10, [row("x")], now=0)
    p.seen(seen("a", 1, hello=wire.Hello(agent="a", hostname="h")))
    due, gone = p.due(now=11)
    assert gone == ["x"]
    p.seen(seen("a", 12))  # arrived while the write failed
    p.retry(due, gone)
    due, gone = p.due(now=12)
    assert gone == ["x"] and len(due) == 1
    assert (due[0].time, due[0].hello.hostname) == (12 * 10**9, "h")


def test_a_wire_version_other_than_the_hives_is_reported_once_per_agent_and_version():
    v = WireVersions()
    old = wire.COMMANDS_SINCE - 1
    assert not v.hello("a", wire.WIRE_VERSION) and not v.mismatched
    assert not v.hello("c", wire.COMMANDS_SINCE) and not v.mismatched  # one back: decodes our commands
    del v.latest["c"]
    assert v.hello("b", old) and v.mismatched == {"b"}
    assert not v.hello("b", old)  # it reconnected: said already
    assert not v.hello("b", wire.WIRE_VERSION) and not v.mismatched  # upgraded
    assert not v.hello("b", old) and v.mismatched == {"b"}  # and back: said already
    assert v.hello("b", wire.WIRE_VERSION + 1)
    assert v.latest == {"a": wire.WIRE_VERSION, "b": wire.WIRE_VERSION + 1}
    assert WireVersions.why(old).endswith(": upgrade the agent")
