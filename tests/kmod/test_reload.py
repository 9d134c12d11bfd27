"""Reloading the policy from its file, on change and on SIGHUP: the watcher
with a plain apply (real inotify, real signals), then the reader actor with
the real sensor (kernel)."""

import errno
import os
import signal
import time

import pytest
import trio
import zmq

import wire
from actors import Codec, Context, Runtime
from agent.response import SensorSlot
from agent.response._policy import Block
from kmod import Policy, PolicyError, reader_actor
from kmod._reload import PolicyFile, sighup_receiver, watch_policy

from .conftest import _REASON, dropped_script, free_port, kernel, private_rules, run_child

RULE = '[[rule]]\nname = "{name}"\nhook = "exec"\naction = "block"\nmatch.path = "{path}"\n'


def test_a_policy_file_knows_when_it_changed_and_refuses_a_broken_one_once(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(RULE.format(name="a", path="/opt/a/**"))
    source = PolicyFile.of(path)
    assert PolicyFile.of(str(path)) is source and PolicyFile.of(Policy()) is None
    assert source.changed()
    assert source.load().rules[0].name == "a" and not source.changed()
    path.write_text("[[rule]\n")
    assert source.changed()
    with pytest.raises(PolicyError, match="not valid TOML"):
        source.load()
    assert not source.changed()  # refused once, not at every look
    os.replace(tmp_path / "policy.toml", tmp_path / "gone.toml")
    assert source.changed()


def test_the_policy_in_force_is_the_last_one_applied_and_the_hello_names_it(tmp_path):
    """What a (re)started relay says in its Hello: the policy the sensor runs,
    not the file's bytes at the node's start, nor a broken edit since."""
    import hashlib

    from node._trees import policy_version

    path = tmp_path / "p.toml"
    path.write_text(RULE.format(name="a", path="/opt/a/**"))
    first = hashlib.sha256(path.read_bytes()).hexdigest()
    assert policy_version(path) == f"p.toml:{first[:12]}"  # no reader ran yet: the file
    source = PolicyFile.of(path)
    source.applied = source.load()
    path.write_text(RULE.format(name="b", path="/opt/b/**"))
    source.applied = second = source.load()  # a reload the sensor accepted
    path.write_text("[[rule]\n")  # then a broken edit, refused: the second stays in force
    assert source.in_force() == second.digest != first
    assert policy_version(path) == f"p.toml:{second.digest[:12]}"
    path.unlink()
    assert policy_version(path) == f"p.toml:{second.digest[:12]}"
    assert policy_version(tmp_path / "none.toml") == "none.toml (unreadable)"


async def wait_for(condition, timeout: float = 2.0) -> float:
    began = trio.current_time()
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)
    return trio.current_time() - began


async def test_the_watcher_applies_a_good_file_and_refuses_a_broken_one(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(RULE.format(name="a", path="/opt/a/**"))
    source = PolicyFile.of(path)
    source.applied = source.load()
    applied, notices = [], []
    ctx = Context(Runtime(), "t")
    async with trio.open_nursery() as n:
        n.start_soon(lambda: watch_policy(ctx, source, applied.append, lambda *a: notices.append(a), hups=None))
        await trio.sleep(0.1)
        path.write_text(RULE.format(name="b", path="/opt/b/**"))  # written in place
        took = await wait_for(lambda: applied)
        assert applied[-1].rules[0].name == "b" and took < 1.0
        assert notices[-1] == ("policy_reloaded", f"{path}: 1 rules, sha256 {applied[-1].digest}")

        path.write_text("[[rule]]\nname = 'c'\nhook = 'exec'\naction = 'maybe'\n")
        await wait_for(lambda: notices[-1][0] == "policy_refused")
        assert "'action' must be block, audit or allow" in notices[-1][1] and len(applied) == 1

        tmp = tmp_path / "policy.toml.new"  # as editors and sed -i do: renamed into place
        tmp.write_text(RULE.format(name="d", path="/opt/d/**"))
        os.replace(tmp, path)
        await wait_for(lambda: len(applied) == 2)
        assert applied[-1].rules[0].name == "d"
        n.cancel_scope.cancel()
    stats = ctx.stats.extra
    assert (stats["policy_reloads"], stats["policy_refusals"]) == (2, 1)


async def test_a_change_made_before_the_watch_began_is_applied(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(RULE.format(name="a", path="/opt/a/**"))
    source = PolicyFile.of(path)
    source.applied = source.load()  # the reader read it, then the file changed before its watcher ran
    path.write_text(RULE.format(name="b", path="/opt/b/**"))
    applied = []
    async with trio.open_nursery() as n:
        n.start_soon(lambda: watch_policy(Context(Runtime(), "t"), source, applied.append, lambda *a: None,
                                          hups=None))
        await wait_for(lambda: applied)
        n.cancel_scope.cancel()
    assert applied[-1].rules[0].name == "b"


async def test_sighup_reloads_and_a_refusing_sensor_keeps_the_old_policy(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(RULE.format(name="a", path="/opt/a/**"))
    source = PolicyFile.of(path)
    source.applied = first = source.load()
    applied, notices = [], []

    def apply(policy):
        if policy.rules[0].name == "bad":
            raise OSError(errno.ENOMEM, "no memory for the maps")
        applied.append(policy)

    ctx = Context(Runtime(), "t")
    with sighup_receiver() as hups:
        async with trio.open_nursery() as n:
            n.start_soon(lambda: watch_policy(ctx, source, apply, lambda *a: notices.append(a), hups=hups,
                                              on_change=False))
            path.write_text(RULE.format(name="b", path="/opt/b/**"))
            await trio.sleep(0.3)
            assert not applied  # not watched: only SIGHUP reloads
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(lambda: applied)
            assert applied[-1].rules[0].name == "b"
            path.write_text(RULE.format(name="bad", path="/opt/x/**"))
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for(lambda: notices[-1][0] == "policy_refused")
            assert "the sensor refused it" in notices[-1][1] and source.applied is applied[-1]
            n.cancel_scope.cancel()
    assert first is not source.applied


class PolicyHolder:
    """In place of the kernel sensor: keeps what it is given."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def reload(self, policy: Policy) -> None:
        self.policy = policy


def test_the_response_layer_stays_on_top_of_a_reloaded_base():
    holder = PolicyHolder(Policy.parse(RULE.format(name="a", path="/opt/a/**"), "p.toml"))
    slot = SensorSlot()
    slot.attach(holder)
    slot.policy.blocks["resp-1"] = Block("resp-1", "exec", {"path": ["/srv/evil"]})
    slot.apply()
    new = Policy.parse('[guard]\nunhashed = "block"\n' + RULE.format(name="b", path="/opt/b/**"), "p.toml")
    slot.rebase(new)
    p = holder.policy
    assert p.match_exec("/srv/evil").name == "resp-1"  # what the hive ordered survives
    assert p.match_exec("/opt/b/x").name == "b" and p.match_exec("/opt/a/x") is None
    assert p.guard.unhashed == "block"  # the file's settings too


# ---- the reader actor with the real sensor ---------------------------------------------------

EXEC_BLOCK_DIR = "blocked"


def in_kernel(test):
    for mark in kernel:
        test = mark(test)
    return test


async def start_reader(nursery, ctx, sink, policy_path, **kw):
    await nursery.start(lambda task_status: reader_actor(
        ctx.child("kmod"), task_status=task_status, sink=sink, policy=str(policy_path), **kw))


async def exec_errno(script) -> int:
    child = await trio.to_thread.run_sync(run_child, "exec", str(script))
    return child.errno or 0


async def refused_within(script, seconds: float) -> float:
    """Seconds until an exec of ``script`` is refused."""
    began = time.monotonic()
    while await exec_errno(script) != errno.EPERM:
        assert time.monotonic() - began < seconds, f"{script} still runs after {seconds} s"
        await trio.sleep(0.05)
    return time.monotonic() - began


async def notices_of(inbox, what: str) -> list:
    out = []
    with trio.fail_after(3):
        while not out:
            for batch in await inbox.recv():
                out += [e for e in batch.events if isinstance(e, wire.Notice) and e.what == what]
    return out


@pytest.fixture
async def reader_setup(tmp_path, workdir):
    if _REASON is not None:
        pytest.skip(_REASON)
    ctx = Context(Runtime(), "t")
    sink = f"ipc://{tmp_path}/events"
    inbox = ctx.socket(zmq.PULL, bind=sink, codec=Codec(wire.EventBatch))
    policy = tmp_path / "policy.toml"
    port = free_port()
    policy.write_text(private_rules(workdir / "other", port))
    script = dropped_script(workdir / EXEC_BLOCK_DIR)
    blocking = private_rules(workdir / EXEC_BLOCK_DIR, port)
    yield ctx, sink, inbox, policy, script, blocking
    ctx.close()


@in_kernel
async def test_an_edited_policy_file_is_enforced_without_a_restart(reader_setup):
    ctx, sink, inbox, policy, script, blocking = reader_setup
    async with trio.open_nursery() as n:
        await start_reader(n, ctx, sink, policy)
        assert await exec_errno(script) == 0
        policy.write_text(blocking)
        took = await refused_within(script, 2.0)
        print(f"an edited policy file was enforced {took * 1000:.0f} ms after the write")
        (reloaded,) = await notices_of(inbox, "policy_reloaded")
        assert reloaded.detail.endswith(Policy.load(policy).digest)

        policy.write_text(blocking.replace('action = "block"', 'action = "kill"', 1))
        (refused,) = await notices_of(inbox, "policy_refused")
        assert "'action' must be block, audit or allow" in refused.detail
        assert await exec_errno(script) == errno.EPERM  # the old policy is still in force
        n.cancel_scope.cancel()


@in_kernel
async def test_sighup_reloads_the_policy_file(reader_setup):
    ctx, sink, inbox, policy, script, blocking = reader_setup
    async with trio.open_nursery() as n:
        await start_reader(n, ctx, sink, policy, policy_watch=False)
        policy.write_text(blocking)
        await trio.sleep(0.5)
        assert await exec_errno(script) == 0  # not watched: the old policy until told
        os.kill(os.getpid(), signal.SIGHUP)
        await refused_within(script, 2.0)
        await notices_of(inbox, "policy_reloaded")
        n.cancel_scope.cancel()


@in_kernel
async def test_the_response_layer_survives_a_reload_of_the_file(reader_setup, workdir):
    ctx, sink, inbox, policy, script, blocking = reader_setup
    ordered = dropped_script(workdir / "ordered")
    slot = SensorSlot()
    async with trio.open_nursery() as n:
        await start_reader(n, ctx, sink, policy, on_sensor=slot.attach, on_policy=slot.rebase)
        slot.policy.blocks["resp-1"] = Block("resp-1", "exec", {"path": [str(ordered)]})
        slot.apply()
        assert await exec_errno(ordered) == errno.EPERM
        policy.write_text(blocking)
        await refused_within(script, 2.0)
        assert await exec_errno(ordered) == errno.EPERM  # what the hive ordered is still in force
        n.cancel_scope.cancel()


@in_kernel
async def test_a_policy_path_that_is_not_utf8_is_reported_not_a_crash(reader_setup):
    """The reader's own notices carry its policy's path, which the kernel's
    decoder never saw: one the encoder refused stopped the reader at the
    first reload (and with it the relay's sensor)."""
    ctx, sink, inbox, policy, script, blocking = reader_setup
    odd = os.fsdecode(os.path.join(os.fsencode(policy.parent), b"policy-\xff.toml"))
    os.replace(policy, odd)
    async with trio.open_nursery() as n:
        await start_reader(n, ctx, sink, odd)
        assert await exec_errno(script) == 0
        with open(odd, "w") as f:
            f.write(blocking)
        await refused_within(script, 2.0)
        (reloaded,) = await notices_of(inbox, "policy_reloaded")
        assert "policy-\ufffd.toml" in reloaded.detail and reloaded.detail.endswith(Policy.load(odd).digest)
        n.cancel_scope.cancel()


@in_kernel
async def test_a_restarted_reader_says_it_starts_from_another_policy(reader_setup):
    """Edited while no reader ran (it was restarting): the relay follows from
    the notice, as after a reload."""
    ctx, sink, inbox, policy, script, blocking = reader_setup
    async with trio.open_nursery() as n:
        await start_reader(n, ctx, sink, policy)
        assert await exec_errno(script) == 0
        n.cancel_scope.cancel()
    policy.write_text(blocking)
    async with trio.open_nursery() as n:
        await start_reader(n, ctx, sink, policy, policy_watch=False)
        assert await exec_errno(script) == errno.EPERM
        (reloaded,) = await notices_of(inbox, "policy_reloaded")
        assert reloaded.detail.endswith(Policy.load(policy).digest)
        n.cancel_scope.cancel()
