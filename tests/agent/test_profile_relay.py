"""The relay with learning: profiles go up as events, a novelty alert is
spooled right behind the event that was new, and the hive's update_profile
is answered by the relay itself."""

from __future__ import annotations

import os
import shutil

import pytest
import trio
import zmq

import wire
from agent._profile import Learning, ProfileSettings, decode_profile

from .test_relay import AGENT_CODEC, Rig


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_the_relay_learns_alerts_behind_the_event_and_accepts(tmp_path):
    rig = Rig(tmp_path)
    clock = Clock()
    learning = Learning("agent-1", tmp_path / "profiles", ProfileSettings(learn=10, stable=5, upload=0.0), clock=clock)
    sensor = None

    async def emit(*paths: str) -> None:
        nonlocal sensor
        if sensor is None:
            sensor = rig.root.socket(zmq.PUSH, codec=AGENT_CODEC, connect=rig.args["events_endpoint"])
        await sensor.send(wire.EventBatch(seq=1, events=[
            wire.Open(pid=os.getpid(), ppid=os.getppid(), cgroup=77, path=p) for p in paths]))

    def stored(kind):
        return [e for e in rig.hive.stored if type(e) is kind]

    async with trio.open_nursery() as n:
        await rig.start_hive(n)
        await rig.start_agent(n, learning=learning)
        await emit("/srv/app/a.conf", "/srv/app/b.conf")
        await rig.hive.wait(lambda: any(e.state == "learning" for e in stored(wire.Profile)))
        clock.now += 20  # learned long enough, and quiet: stable at the next tick
        await rig.hive.wait(lambda: any(e.state == "stable" for e in stored(wire.Profile)))
        await emit("/srv/app/a.conf", "/srv/app/secret.pem")
        await rig.hive.wait(lambda: stored(wire.Edge))
        rig.hive.send(wire.UpdateProfile(id="c-1", workload="cgroup:77", accept=stored(wire.Edge)[0].novel))
        await emit("/srv/app/a.conf")  # the scripted hive sends its outbox when it hears from the agent
        await rig.hive.wait(lambda: rig.hive.results)
        await rig.hive.wait(lambda: any("read\t/srv/app/secret.pem" in decode_profile(e.body).items.get("read", [])
                                        for e in stored(wire.Profile)))
        n.cancel_scope.cancel()
    events = [e for e in rig.hive.stored if type(e) in (wire.Open, wire.Edge)]
    i = next(i for i, e in enumerate(events) if type(e) is wire.Edge)
    assert events[i - 1].path == "/srv/app/secret.pem"  # right behind the event it came from
    [edge] = stored(wire.Edge)
    assert edge.level == "novel" and edge.rule_id == "profile.read" and "attack.t1552.001" in edge.tags
    assert edge.workload == "cgroup:77" and "read /srv/app/a.conf" in edge.detail
    [result] = rig.hive.results
    assert result.command == "c-1" and result.ok and "1 item(s) accepted" in result.detail
    assert rig.stats.extra["novel"] == 1 and rig.stats.extra["stable"] == 1
    assert list((tmp_path / "profiles").glob("*.profile"))  # kept on disk


@pytest.mark.skipif(os.geteuid() != 0, reason="signalling another process needs root")
async def test_an_enforcing_profile_has_the_executor_kill_and_reports_the_result(tmp_path):
    from actors import Child, Supervisor
    from agent.response import executor_actor

    from .test_response_process import alive, detached, wait_started

    rig = Rig(tmp_path)
    clock = Clock()
    learning = Learning("agent-1", tmp_path / "profiles", ProfileSettings(learn=10, stable=5, upload=0.0), clock=clock)
    victim = detached("exec sleep 300")  # not the agent's child: the executor spares the agent's family
    wait_started(victim, "sleep")
    sensor = None

    async def emit(*events: wire.Event) -> None:
        nonlocal sensor
        if sensor is None:
            sensor = rig.root.socket(zmq.PUSH, codec=AGENT_CODEC, connect=rig.args["events_endpoint"])
        await sensor.send(wire.EventBatch(seq=1, events=list(events)))

    def stored(kind):
        return [e for e in rig.hive.stored if type(e) is kind]

    own = wire.Open(pid=os.getpid(), cgroup=77, path="/srv/app/a.conf")
    try:
        async with trio.open_nursery() as n:
            await rig.start_hive(n)
            await rig.start_agent(n, learning=learning)
            await n.start(rig._run, "response", Supervisor([Child("executor", executor_actor, args=dict(
                data_dir=tmp_path / "response", commands=rig.args["commands_endpoint"],
                results=rig.args["results_endpoint"]))]))
            await emit(own)
            await rig.hive.wait(lambda: any(e.state == "learning" for e in stored(wire.Profile)))
            clock.now += 20
            await rig.hive.wait(lambda: any(e.state == "stable" for e in stored(wire.Profile)))
            rig.hive.send(wire.UpdateProfile(id="c-1", workload="cgroup:77", state="enforcing"))
            await emit(own)
            await rig.hive.wait(lambda: any(e.state == "enforcing" for e in stored(wire.Profile)))
            await emit(own, wire.Exec(pid=victim, exe=os.path.realpath(shutil.which("sleep")), argv=["sleep", "300"],
                                      cgroup=77))
            await rig.hive.wait(lambda: any(e.answered for e in stored(wire.Edge)))
            await rig.hive.wait(lambda: rig.stats.extra.get("enforced_kills") == 1)  # the statistics of a second
            n.cancel_scope.cancel()
    finally:
        if alive(victim):
            os.kill(victim, 9)
            pytest.fail("the enforcing profile's exec outside it was not killed")
    alert, result = stored(wire.Edge)
    assert alert.workload == "cgroup:77" and alert.detail.startswith(f"enforced: kill pid {victim} and its children")
    [done] = result.actions
    assert result.alert == alert.alert and done.id == alert.actions[0].id
    assert done.ok and done.detail == f"killed 1 process(es): {victim}"
