"""The supervisor runtime with real trio tasks and real child processes."""

import os
import signal

import pytest
import trio

from actors import ActorError, Child, Escalation, Restart, StartError, Supervisor

from ._children import (
    crash_after, fail_to_start, forever, return_after, stubborn, stubborn_process, write_pid,
)


async def started(nursery, sup, ctx):
    return await nursery.start(sup, ctx)


def kids(journal, *specs):
    return [Child(name, fn, args={"journal": journal, **extra}, restart=restart, shutdown=1.0)
            for name, fn, restart, extra in specs]


async def wait_for(predicate, timeout=5.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_children_start_in_order_and_stop_in_reverse(root_ctx):
    journal = []
    sup = Supervisor(kids(journal, *[(n, forever, Restart.PERMANENT, {}) for n in "abc"]))
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        assert journal == [("start", "t.a"), ("start", "t.b"), ("start", "t.c")]
        n.cancel_scope.cancel()
    assert journal[3:] == [("stop", "t.c"), ("stop", "t.b"), ("stop", "t.a")]


@pytest.mark.parametrize("strategy,restarted", [
    ("one_for_one", ["t.b"]),
    ("one_for_all", ["t.a", "t.b", "t.c"]),
    ("rest_for_one", ["t.b", "t.c"]),
])
async def test_strategies(root_ctx, runtime, strategy, restarted):
    journal = []
    sup = Supervisor(
        kids(journal, ("a", forever, Restart.PERMANENT, {}),
             ("b", crash_after, Restart.TEMPORARY, {"delay": 0.05}),
             ("c", forever, Restart.PERMANENT, {})),
        strategy=strategy,
    )
    # b is temporary so that it crashes once; the strategy decides what else moves.
    sup.children[1] = Child("b", crash_after, args={"journal": journal, "delay": 0.05}, shutdown=1.0)
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        del journal[:]
        await wait_for(lambda: runtime.registry["t.b"].restarts >= 1)
        await trio.sleep(0.02)
        n.cancel_scope.cancel()
    starts = [who for what, who in journal if what == "start"]
    assert starts[: len(restarted)] == restarted
    stopped = [who for what, who in journal if what == "stop"]
    expected_stops = {"one_for_one": [], "one_for_all": ["t.c", "t.a"], "rest_for_one": ["t.c"]}[strategy]
    assert stopped[: len(expected_stops)] == expected_stops


async def test_transient_normal_exit_is_not_restarted_but_a_crash_is(root_ctx, runtime):
    journal = []
    sup = Supervisor(kids(journal,
                          ("ok", return_after, Restart.TRANSIENT, {}),
                          ("bad", crash_after, Restart.TRANSIENT, {"delay": 0.2})),
                     intensity=100)
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        await wait_for(lambda: runtime.registry["t.bad"].restarts >= 2)
        await trio.sleep(0.1)
        n.cancel_scope.cancel()
    assert runtime.registry["t.ok"].restarts == 0
    assert runtime.registry["t.ok"].exits == 1
    assert journal.count(("start", "t.ok")) == 1
    assert runtime.registry["t.bad"].last_error == "RuntimeError: boom"


async def test_temporary_child_is_never_restarted_even_under_one_for_all(root_ctx, runtime):
    journal = []
    sup = Supervisor(kids(journal,
                          ("temp", forever, Restart.TEMPORARY, {}),
                          ("crasher", crash_after, Restart.PERMANENT, {"delay": 0.1})),
                     strategy="one_for_all", intensity=100)
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        await wait_for(lambda: runtime.registry["t.crasher"].restarts >= 2)
        n.cancel_scope.cancel()
    assert journal.count(("start", "t.temp")) == 1
    assert ("stop", "t.temp") in journal
    assert runtime.registry["t.temp"].state == "stopped"


async def test_intensity_exceeded_escalates_to_the_parent(root_ctx, runtime, caplog):
    journal = []
    inner = Supervisor(kids(journal, ("x", crash_after, Restart.PERMANENT, {}),
                            ("y", forever, Restart.PERMANENT, {})),
                       intensity=2, period=10)
    outer = Supervisor([Child("inner", inner, restart=Restart.TRANSIENT)], intensity=0)
    with pytest.RaisesGroup(Escalation) as info:
        async with trio.open_nursery() as n:
            await n.start(outer, root_ctx)
    # inner escalated to outer (a crash of its child "inner"), outer has
    # intensity 0 so it escalated in turn: the whole tree stopped.
    assert str(info.value.exceptions[0]).startswith("t: 1 restarts within 5s exceed")
    assert runtime.registry["t.inner"].escalations == 1
    assert runtime.registry["t"].escalations == 1
    assert runtime.registry["t.inner.x"].restarts == 2
    assert ("stop", "t.inner.y") in journal
    events = [r.event for r in caplog.records if hasattr(r, "event")]
    assert "supervisor.escalate" in events and "child.restart" in events


async def test_a_child_that_fails_to_start_fails_the_start(root_ctx):
    journal = []
    sup = Supervisor([Child("a", forever, args={"journal": journal}),
                      Child("b", fail_to_start), Child("c", forever, args={"journal": journal})])
    with pytest.raises(StartError, match="t.b failed to start: OSError: cannot bind"):
        await sup(root_ctx)
    assert journal == [("start", "t.a"), ("stop", "t.a")]


async def test_a_child_ignoring_cancellation_is_abandoned_after_its_timeout(root_ctx, runtime):
    sup = Supervisor([Child("mule", stubborn, args={"hold": 2.0}, shutdown=0.3)])
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        t0 = trio.current_time()
        n.cancel_scope.cancel()
    assert trio.current_time() - t0 < 1.5
    assert runtime.registry["t.mule"].state == "abandoned"


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not alive
        return f.read().split(") ")[1][0] != "Z"


async def test_a_process_child_killed_with_sigkill_is_restarted(root_ctx, runtime, tmp_path):
    pids = tmp_path / "pids"
    sup = Supervisor([Child("proc", write_pid, args={"path": str(pids)}, process=True, shutdown=2.0)])
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        first = int(pids.read_text().split()[0])
        assert first != os.getpid() and runtime.registry["t.proc"].pid == first
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: len(pids.read_text().split()) == 2 and runtime.registry["t.proc"].state == "running")
        second = int(pids.read_text().split()[1])
        assert second != first and alive(second)
        assert runtime.registry["t.proc"].restarts == 1
        assert "SIGKILL" in runtime.registry["t.proc"].last_error
        n.cancel_scope.cancel()
    await wait_for(lambda: not alive(second))


async def test_a_process_child_that_ignores_sigterm_is_killed(root_ctx, runtime, tmp_path):
    pids = tmp_path / "pids"
    sup = Supervisor([Child("proc", stubborn_process, args={"path": str(pids)}, process=True, shutdown=0.5)])
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        pid = int(pids.read_text())
        t0 = trio.current_time()
        n.cancel_scope.cancel()
    assert trio.current_time() - t0 < 2.0
    assert not alive(pid)


@pytest.mark.slow
async def test_a_process_child_outlives_the_idle_thread_that_spawned_it(root_ctx, runtime, tmp_path):
    # trio spawns from a worker thread that it retires after 10 s idle; a
    # child tied to that thread (PR_SET_PDEATHSIG) would die with it.
    pids = tmp_path / "pids"
    sup = Supervisor([Child("proc", write_pid, args={"path": str(pids)}, process=True)])
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        pid = int(pids.read_text())
        await trio.sleep(12)
        assert alive(pid) and runtime.registry["t.proc"].restarts == 0
        n.cancel_scope.cancel()


def test_a_process_child_exits_when_its_node_is_killed(tmp_path):
    import subprocess
    import sys
    import time

    pids = tmp_path / "pids"
    script = f"""
import trio
from actors import Child, Context, Runtime, Supervisor
from tests.actors._children import write_pid
async def main():
    await Supervisor([Child("proc", write_pid, args={{"path": {str(pids)!r}}}, process=True)])(Context(Runtime(), "t"))
trio.run(main)
"""
    node = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 20
    while not (pids.exists() and pids.read_text().strip()):
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    child = int(pids.read_text())
    time.sleep(1.5)  # idle by now: it writes nothing to its report pipe
    node.kill()
    node.wait()
    deadline = time.monotonic() + 5
    while alive(child):
        assert time.monotonic() < deadline, "the child outlived its killed node"
        time.sleep(0.05)


async def test_a_requested_restart_is_a_crash_the_strategy_answers(root_ctx, runtime, tmp_path):
    journal = []
    pids = tmp_path / "pids"
    sup = Supervisor(kids(journal, *[(n, forever, Restart.PERMANENT, {}) for n in "abc"])
                     + [Child("proc", write_pid, args={"path": str(pids)}, process=True, shutdown=2.0)],
                     strategy="rest_for_one")
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        del journal[:]
        assert runtime.request_restart("b") == "t.b"
        await wait_for(lambda: runtime.registry["t.proc"].restarts == 1 and runtime.registry["t.proc"].state == "running")
        assert journal == [("stop", "t.b"), ("stop", "t.c"), ("start", "t.b"), ("start", "t.c")]
        assert runtime.registry["t.a"].restarts == 0 and runtime.registry["t.b"].restarts == 1
        assert runtime.registry["t.b"].last_error == "restart requested"
        # A process child too, by its full name.
        first = int(pids.read_text().split()[-1])
        assert runtime.request_restart("t.proc", "by hand") == "t.proc"
        await wait_for(lambda: runtime.registry["t.proc"].restarts == 2 and runtime.registry["t.proc"].state == "running")
        assert not alive(first) and runtime.registry["t.proc"].last_error == "by hand"
        with pytest.raises(ActorError, match="no running actor named 'nobody'"):
            runtime.request_restart("nobody")
        n.cancel_scope.cancel()


async def test_requested_restarts_count_against_the_intensity(root_ctx, runtime):
    sup = Supervisor(kids([], ("a", forever, Restart.PERMANENT, {})), intensity=2, period=30)
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as n:
            await n.start(sup, root_ctx)
            for _ in range(3):
                await wait_for(lambda: runtime.registry["t.a"].state == "running")
                runtime.request_restart("a")
                await trio.sleep(0.05)
            await trio.sleep_forever()
    assert info.group_contains(Escalation, match="3 restarts within 30s exceed the intensity of 2", depth=None)


def test_an_operator_restarts_an_actor_of_a_running_node(tmp_path):
    import threading

    from actors import Node, request_restart

    node = Node("n", Supervisor(kids([], ("a", forever, Restart.PERMANENT, {}))), tmp_path / "run")
    done = threading.Event()

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await trio.to_thread.run_sync(done.wait)
            nursery.cancel_scope.cancel()

    runner = threading.Thread(target=trio.run, args=(main,))
    runner.start()
    try:
        import time
        t0 = time.monotonic()
        while not (tmp_path / "run" / "node.json").exists():
            assert time.monotonic() - t0 < 10
            time.sleep(0.02)
        assert request_restart(tmp_path / "run", "a") == "n.a"
        t0 = time.monotonic()
        while node.status().actors[-1].restarts != 1 or node.status().actors[-1].state != "running":
            assert time.monotonic() - t0 < 5
            time.sleep(0.02)
        with pytest.raises(ActorError, match="no running actor named 'zz'"):
            request_restart(tmp_path / "run", "zz")
    finally:
        done.set()
        runner.join()


async def test_a_child_still_starting_is_not_restarted_and_says_so(root_ctx, runtime):
    from ._children import slow_start

    sup = Supervisor([Child("a", forever), Child("slow", slow_start, args={"delay": 1.0})])
    async with trio.open_nursery() as n:
        n.start_soon(sup, root_ctx)
        await wait_for(lambda: runtime.registry.get("t.slow") and runtime.registry["t.slow"].state == "starting")
        with pytest.raises(ActorError, match="t.slow is starting, not running"):
            runtime.request_restart("slow")
        with pytest.raises(ActorError, match=r"no running actor named 'x' \(running: t.a, t.slow\)"):
            runtime.request_restart("x")
        n.cancel_scope.cancel()
    assert runtime.crashers == {}


async def test_a_crash_inside_an_actors_nursery_is_reported_as_the_error_itself(root_ctx, runtime):
    from ._children import fail_in_nursery

    sup = Supervisor([Child("door", fail_in_nursery)])
    with pytest.raises(StartError, match=r"^t.door failed to start: OSError: \[Errno 98\] Address already in use$"):
        await sup(root_ctx)
