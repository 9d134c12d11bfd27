"""The agent's fleet actor over real inproc sockets, with no kernel: the
sensor's part is played by setting what its policy watcher would."""

import uuid

import trio
import zmq

import fleet
import wire
from actors import Codec, Context, Runtime
from agent._fleet import PolicyLink, fleet_actor
from kmod import DEFAULT_POLICY, Policy
from kmod._reload import PolicyFile

KEY = fleet.SigningKey.generate()
GOOD = DEFAULT_POLICY.read_text() + '\n[[rule]]\nname = "x"\nhook = "exec"\naction = "audit"\nmatch.path = ["/opt/x/**"]\n'


def offer(version: int, policy: str = GOOD) -> wire.PolicyBundle:
    signed = KEY.sign(fleet.Bundle(name="web", version=version, policy=policy))
    return wire.PolicyBundle(version=version, signed=fleet.encode(signed))


async def run(tmp_path, messages, *, sensor_applies: bool, apply_timeout=0.5):
    """Send ``messages`` to a fleet actor; the statuses it answers, and the link."""
    ctx = Context(Runtime(), "agent.fleet")
    tag = uuid.uuid4().hex
    bundles, results = f"inproc://fleet-{tag}", f"inproc://results-{tag}"
    push = ctx.socket(zmq.PUSH, bind=bundles, codec=Codec(wire.HiveMessage))
    pull = ctx.socket(zmq.PULL, bind=results, codec=Codec(wire.AgentMessage))
    keeper = fleet.Keeper(tmp_path / "fleet", KEY.public)
    keeper.start()
    link = PolicyLink(tmp_path / "fleet", DEFAULT_POLICY)
    link.start(keeper.running)
    source = PolicyFile.of(link.path)
    source.applied = Policy.default()
    statuses = []

    async def sensor():  # what the sensor's watcher does when the link changes
        while sensor_applies:
            if source.changed():
                source.applied = source.load()
            await trio.sleep(0.01)

    async with trio.open_nursery() as n:
        n.start_soon(sensor)
        await n.start(lambda task_status: fleet_actor(ctx.child("a"), task_status=task_status, keeper=keeper,
                                                      link=link, sensor=True, bundles=bundles, results=results,
                                                      apply_timeout=apply_timeout))
        for m in messages:
            await push.send(m)
            with trio.fail_after(5):
                statuses += await pull.recv()
        n.cancel_scope.cancel()
    ctx.close()
    return statuses, keeper, link


async def test_a_bundle_the_sensor_puts_in_force_is_kept_and_a_resend_is_no_change(tmp_path):
    statuses, keeper, link = await run(tmp_path, [offer(3), offer(3)], sensor_applies=True)
    assert [(s.version, s.ok, s.running) for s in statuses] == [(3, True, 3), (3, True, 3)]
    assert "policy in force" in statuses[0].detail and statuses[1].detail == "already running it"
    assert link.target() == link.bundle_file(3) and keeper.version == 3


async def test_a_bundle_the_sensor_does_not_take_is_rolled_back(tmp_path):
    statuses, keeper, link = await run(tmp_path, [offer(3)], sensor_applies=False)
    [s] = statuses
    assert (s.ok, s.running) == (False, 0) and "did not put its policy in force" in s.detail
    assert link.target() == DEFAULT_POLICY.resolve() and keeper.version == 0
    assert not link.bundle_file(3).exists()
    statuses, _, _ = await run(tmp_path, [offer(3)], sensor_applies=True)
    assert statuses[0].ok  # a new keeper (a restarted agent) may try it again


async def test_a_policy_that_does_not_parse_never_reaches_the_link(tmp_path):
    statuses, keeper, link = await run(tmp_path, [offer(4, "[[rule]\n")], sensor_applies=True)
    assert not statuses[0].ok and "its policy does not load" in statuses[0].detail
    assert link.target() == DEFAULT_POLICY.resolve()
