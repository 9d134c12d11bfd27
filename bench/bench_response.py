"""Response latency: from a malicious exec to the kill (root).

    .venv/bin/python bench/bench_response.py [--runs 100] [--parts kernel,actors,objects]

The victim each time is a fresh shell whose command line has the shape of a
reverse shell (``bash -c 'sleep 300; : /dev/tcp/10.77.0.2/4444 0>&1 TAG'``, which
calls nowhere) with a child ``sleep``, started outside this process's tree
as an attacker's would be.  The default playbooks are used (their rate
limits lifted: 100 runs in a minute is the benchmark, not a storm).

kernel   the part of the path that lives in one agent and the hive's plain
         objects, for real: the exec in a network namespace, seen by a kmod
         sensor (default latency), decoded, matched by the sentinel's rule
         engine with the built-in rules, decided by the playbook engine, and
         killed (tree) by the executor.  Hops:
           exec -> drained      kernel, ring buffer, reader wake-up, decode
           drained -> alert     hive.sigma.RuleEngine
           alert -> decision    hive.playbook.PlaybookEngine.on_alert
           decision -> dead     agent.response.Executor (scan, freeze, SIGKILL, deaths confirmed)
         Not in it: the relay (enrich, spool), the network to the hive and
         back, the router and the store's commit before detection.
actors   alert pushed to the playbook actor -> victim dead (seen on a pidfd),
         through the playbook actor, a stand-in router/relay and the executor
         actor over inproc ZeroMQ sockets in one process.
objects  the two hops of this part alone, without sockets: the engine's
         decision, and the executor's kill.
edge     the same victims on a demo node whose agent runs the reverse-shell
         rule and playbook itself (a pushed bundle): exec -> dead with no
         hive in the path, and its ratio to e2e when both run.
e2e      the whole path on a real ``immune-node demo`` process: kernel,
         sensor, relay (enrich, spool with fsync), CURVE uplink, router,
         store commit, sentinel and correlate (child processes), playbook,
         router, relay, executor.  Runs are paced under the playbook's rate
         limit (60 a minute; each victim raises two alerts, since the shell
         that launches it carries the same command line).  Hops, from the store's audit trail:
           exec -> decision     everything up to the playbook's command
           decision -> dead     router, agent, executor, death seen here
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import select
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import wire
from agent.response import Executor, SensorSlot
from hive.playbook import DEFAULT_PLAYBOOKS, Limits, PlaybookEngine, check_playbooks

REVERSE_SHELL = "139f073e-48c0-48af-af1c-71581a80d7da"


def playbooks():
    report = check_playbooks(DEFAULT_PLAYBOOKS)
    assert report.ok, report.format()
    return [dataclasses.replace(p, limits=Limits()) for p in report.playbooks]


def victim(tag: str, netns: str | None = None) -> int:
    # The script travels in the environment: only the victim's own command line
    # has a reverse shell's shape, so each run raises one alert, not a second
    # one (and its kill and block queued ahead of the victim's) for the launcher.
    script = f"sleep 300; : /dev/tcp/10.77.0.2/4444 0>&1 {tag}"
    inner = (f'exec ip netns exec {netns} bash -c "$IMMUNE_VICTIM"' if netns
             else 'exec bash -c "$IMMUNE_VICTIM"')
    out = subprocess.run(["bash", "-c", f"({inner}) </dev/null >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True, env={**os.environ, "IMMUNE_VICTIM": script})
    return int(out.stdout)


def wait_child(pid: int, timeout: float = 5.0) -> None:
    """Until the victim has started its sleep (its tree is complete)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    stat = Path(f"/proc/{name}/stat").read_text()
                except OSError:
                    continue
                if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                    return
        time.sleep(0.005)
    raise RuntimeError(f"victim {pid} never started its child")


def alert_for(pid: int, tag: str) -> wire.Alert:
    ev = wire.Exec(pid=pid, agent="bench", exe="/usr/bin/bash", argv=["bash", "-c", f"sleep 300; : {tag}"],
                   cmdline=f"bash -c sleep 300; : /dev/tcp/10.77.0.2/4444 {tag}")
    return wire.Alert(id=f"al-{tag}", rule_id=REVERSE_SHELL, title="Reverse Shell Command Line", level="critical",
                      agent="bench", events=[ev])


def summary(name: str, values_ms: list[float]) -> str:
    v = sorted(values_ms)
    p99 = v[min(len(v) - 1, round(len(v) * 0.99) - 1)]
    return f"| {name} | {statistics.median(v):.3f} | {p99:.3f} | {v[-1]:.3f} |"


def table(title: str, rows: dict[str, list[float]]) -> None:
    print(f"\n{title} ({len(next(iter(rows.values())))} runs)\n")
    print("| hop | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: |")
    for name, values in rows.items():
        print(summary(name, values))


# ---- objects ------------------------------------------------------------------------


def bench_objects(runs: int) -> None:
    engine = PlaybookEngine(playbooks())
    decide, kill = [], []
    with tempfile.TemporaryDirectory(dir="/var/lib") as data:
        executor = Executor(Path(data))
        for i in range(runs):
            tag = f"o{i}.{time.monotonic_ns()}"
            pid = victim(tag)
            wait_child(pid)
            t0 = time.perf_counter_ns()
            d = engine.on_alert(alert_for(pid, tag))
            t1 = time.perf_counter_ns()
            cmd = next(c for _, c in d.send if c.action == "kill_process")
            result = executor.execute(cmd)
            t2 = time.perf_counter_ns()
            assert result.ok and pid in result.data["killed"], result
            decide.append((t1 - t0) / 1e6)
            kill.append((t2 - t1) / 1e6)
    table("objects", {"alert -> decision (engine)": decide, "command -> dead (executor, tree of 2)": kill})


# ---- actors -------------------------------------------------------------------------


def bench_actors(runs: int) -> None:
    import trio
    import zmq

    from actors import Child, Codec, Context, Runtime, Supervisor
    from agent.response import executor_actor
    from hive import Deliver, Result, Store
    from hive._actors import internal_codec
    from hive.playbook import playbook_actor

    async def bridge(ctx, *, task_status=trio.TASK_STATUS_IGNORED, ep):
        deliver = ctx.socket(zmq.PULL, bind=ep["deliver"], codec=internal_codec())
        commands = ctx.socket(zmq.PUSH, bind=ep["commands"], codec=Codec(wire.HiveMessage))
        results_in = ctx.socket(zmq.PULL, bind=ep["agent_results"], codec=Codec(wire.AgentMessage))
        results_out = ctx.socket(zmq.PUSH, connect=ep["results"], codec=internal_codec())
        task_status.started()

        async def down():
            while True:
                for d in await deliver.recv():
                    if isinstance(d, Deliver):
                        await commands.send(d.command)

        async def up():
            while True:
                for r in await results_in.recv():
                    await results_out.send(Result(agent="bench", result=r))

        async with trio.open_nursery() as n:
            n.start_soon(down)
            n.start_soon(up)

    async def main(tmp: Path) -> list[float]:
        pbdir = tmp / "playbooks"
        pbdir.mkdir()
        # The reverse-shell playbook without its rate limit, as a file the actor reads.
        text = (DEFAULT_PLAYBOOKS / "reverse_shell.yml").read_text().replace("    rate: 60/1m", "    rate: 100000/1m")
        (pbdir / "reverse_shell.yml").write_text(text)
        Store(tmp / "hive.db").close()
        ep = {k: f"inproc://bench.{k}" for k in ("alerts", "deliver", "results", "commands", "agent_results")}
        runtime = Runtime()
        tree = Supervisor([
            Child("bridge", bridge, args={"ep": ep}),
            Child("playbook", playbook_actor, args={
                "path": tmp / "hive.db", "playbook_dirs": [pbdir], "alerts_endpoint": ep["alerts"],
                "deliver_endpoint": ep["deliver"], "results_endpoint": ep["results"]}),
            Child("executor", executor_actor, args={
                "data_dir": tmp / "agent", "commands": ep["commands"], "results": ep["agent_results"]}),
        ], strategy="one_for_all")
        alerts = Context(runtime, "bench").socket(zmq.PUSH, connect=ep["alerts"], codec=internal_codec())
        out = []
        async with trio.open_nursery() as n:
            await n.start(tree, Context(runtime, "resp"))
            for i in range(runs):
                tag = f"a{i}.{time.monotonic_ns()}"
                pid = await trio.to_thread.run_sync(victim, tag)
                await trio.to_thread.run_sync(wait_child, pid)
                fd = os.pidfd_open(pid)
                try:
                    t0 = time.perf_counter_ns()
                    await alerts.send(alert_for(pid, tag))
                    with trio.fail_after(5):
                        await trio.lowlevel.wait_readable(fd)
                    out.append((time.perf_counter_ns() - t0) / 1e6)
                finally:
                    os.close(fd)
                await trio.sleep(0.01)  # let the result and the records land
            n.cancel_scope.cancel()
        alerts.close()
        return out

    with tempfile.TemporaryDirectory(dir="/var/lib") as tmp:
        total = trio.run(main, Path(tmp))
    table("actors", {"alert pushed -> victim dead": total})


# ---- kernel -------------------------------------------------------------------------


def bench_kernel(runs: int) -> None:
    from hive.sigma import BUILTIN_RULES, RuleEngine
    from kmod import LinuxSensor, Scope

    netns = f"immbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    sensor = LinuxSensor(scope=Scope.netns(f"/run/netns/{netns}"))
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        sensor.start()
        slot = SensorSlot()
        slot.attach(sensor)
        rules = RuleEngine(suppress_window=0)
        report = rules.load(BUILTIN_RULES)
        engine = PlaybookEngine(playbooks())
        hops = {"exec -> drained (sensor)": [], "drained -> alert (sigma)": [],
                "alert -> decision (playbook)": [], "decision -> dead (executor)": [], "exec -> dead": []}
        with tempfile.TemporaryDirectory(dir="/var/lib") as data:
            executor = Executor(Path(data), slot=slot)
            while sensor.drain(65536):
                pass
            for i in range(runs):
                tag = f"k{i}.{time.monotonic_ns()}"
                victim(tag, netns)
                exec_event, deadline = None, time.monotonic() + 5
                while exec_event is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the victim's exec was never seen")
                    sensor.wait(0.5)
                    events = sensor.drain()
                    t_drained = time.time_ns()
                    exec_event = next((e for e in events if isinstance(e, wire.Exec) and tag in " ".join(e.argv)
                                       and e.comm == "bash"), None)
                exec_event.agent = "bench"
                alerts = rules.process_batch([exec_event])
                t_alert = time.time_ns()
                alert = next(a for a in alerts if a.rule_id == REVERSE_SHELL)
                d = engine.on_alert(alert)
                t_decision = time.time_ns()
                results = [executor.execute(cmd) for _, cmd in d.send]
                kill = next(r for r in results if "killed" in r.data)
                assert kill.ok and exec_event.pid in kill.data["killed"], kill
                t_dead = t_decision + int(kill.data["ms"] * 1e6)  # the kill's own clock, not the block after it
                hops["exec -> drained (sensor)"].append((t_drained - exec_event.time) / 1e6)
                hops["drained -> alert (sigma)"].append((t_alert - t_drained) / 1e6)
                hops["alert -> decision (playbook)"].append((t_decision - t_alert) / 1e6)
                hops["decision -> dead (executor)"].append((t_dead - t_decision) / 1e6)
                hops["exec -> dead"].append((t_dead - exec_event.time) / 1e6)
                for name in list(slot.policy.blocks):  # the block step ran too; keep the policy small
                    slot.policy.blocks.pop(name)
            slot.apply()
        table(f"kernel (sensor latency {sensor._latency * 1000:g} ms, {report.loaded} rules)", hops)
    finally:
        sensor.close()
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


# ---- e2e ---------------------------------------------------------------------------


@contextlib.contextmanager
def demo_node():
    """A real ``immune-node demo`` on loopback: its data folder while it runs."""
    import signal as _signal
    import socket as _socket

    from actors import query_status

    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = Path(tempfile.mkdtemp(prefix="bench-response-"))
    node = subprocess.Popen([sys.executable, "-m", "node.cli", "demo", "--data", str(data),
                             "--listen", f"tcp://127.0.0.1:{port}", "--log-level", "warning"],
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if query_status(data / "run", timeout=1).ready:
                    break
            except Exception:
                if time.monotonic() > deadline or node.poll() is not None:
                    raise SystemExit("the demo node did not start")
                time.sleep(0.2)
        yield data
    finally:
        node.send_signal(_signal.SIGTERM)
        node.wait(60)


def kills(runs: int, tag: str, on_dead=None) -> list[float]:
    """exec -> dead of ``runs`` victims, ms; ``on_dead(i, pid, t0, dead)`` per run."""
    total = []
    for i in range(runs):
        t0 = time.time()
        pid = victim(f"{tag}{i}")
        fd = os.pidfd_open(pid)
        if not select.select([fd], [], [], 10)[0]:
            raise SystemExit(f"run {i}: the victim was not killed within 10 s")
        dead = time.time()
        os.close(fd)
        total.append((dead - t0) * 1000)
        if on_dead is not None:
            on_dead(i, pid, t0, dead)
        time.sleep(max(0.0, 2.1 - (time.time() - t0)))  # under the playbook's 60 runs a minute
    return total


def bench_e2e(runs: int) -> None:
    from hive import Store

    with demo_node() as data:
        decide, act = [], []

        def split(i, pid, t0, dead):
            # This victim's kill, by its pid (the row may be committed a moment after the kill).
            row = None
            for _ in range(100):
                store = Store(data / "hive.db", readonly=True)
                row = next((r for r in store.db.execute(
                    "SELECT created, params FROM commands WHERE action='kill_process' AND created >= ?", (t0,))
                    if json.loads(r[1]).get("pid") == pid), None)
                store.close()
                if row is not None:
                    break
                time.sleep(0.02)
            if row is None:
                raise SystemExit(f"run {i}: no kill_process recorded for pid {pid}")
            decide.append((row[0] - t0) * 1000)
            act.append((dead - row[0]) * 1000)

        total = kills(runs, "e2e", split)
        table("e2e: a demo node, exec -> dead", {
            "exec -> decision (sensor, relay, uplink, store, sentinel, correlate, playbook)": decide,
            "decision -> dead (router, relay, executor, kill)": act,
            "**exec -> dead**": total,
        })
    return total


def bench_edge(runs: int, through_hive: list[float] | None = None) -> None:
    """The same victims on a demo node whose agent runs the reverse-shell
    rule and playbook at the edge (a pushed bundle): exec -> dead without the
    hive's round trip; its ratio to the e2e part when both ran."""
    import shutil

    from hive import Store
    from hive.sigma import BUILTIN_RULES

    with demo_node() as data:
        edge = data / "edge-bundle"
        for kind, source in (("rules", BUILTIN_RULES / "linux" / "reverse_shell.yml"),
                             ("playbooks", DEFAULT_PLAYBOOKS / "reverse_shell.yml")):
            (edge / kind).mkdir(parents=True)
            shutil.copy(source, edge / kind)
        subprocess.run([sys.executable, "-m", "node.cli", "policy", "push", "edge", "--rules", str(edge / "rules"),
                        "--playbooks", str(edge / "playbooks"), "--data", str(data)], check=True,
                       capture_output=True)
        deadline = time.monotonic() + 30
        while True:
            store = Store(data / "hive.db", readonly=True)
            running = [a.bundle_version for a in store.agents()]
            store.close()
            if running and running[0] >= 1:
                break
            if time.monotonic() > deadline:
                raise SystemExit("the agent never ran the edge bundle")
            time.sleep(0.1)
        launch, after_exec = [], []

        def split(i, pid, t0, dead):
            # The victim's exec, as the kernel timed it: the time of the Edge
            # event the agent raised on it (stored when the batch reaches the hive).
            for _ in range(100):
                store = Store(data / "hive.db", readonly=True)
                # (a second of slack: the sensor's boot-to-wall clock offset is fixed at
                # its start, and the wall clock may be stepped after it)
                row = store.db.execute("SELECT min(time) FROM events WHERE kind='edge' AND pid=? AND time >= ?",
                                       (pid, int((t0 - 1) * 1e9))).fetchone()
                store.close()
                if row[0] is not None:
                    break
                time.sleep(0.05)
            else:
                raise SystemExit(f"run {i}: no edge event stored for pid {pid}")
            launch.append((row[0] / 1e9 - t0) * 1000)
            after_exec.append((dead - row[0] / 1e9) * 1000)

        total = kills(runs, "edge", split)
        table("edge: a demo node's agent answering alone", {
            "launch -> exec (the bench starting the victim; not the agent's)": launch,
            "**exec -> dead at the edge** (sensor, relay, edge rules and playbook, executor, kill)": after_exec,
            "launch -> dead (as the through-the-hive rows count it)": total,
        })
        if through_hive:
            print(f"\nedge / through the hive: p50 {statistics.median(total) / statistics.median(through_hive):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--parts", default="kernel,actors,objects,e2e,edge")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the kernel sensor, and killing processes started elsewhere, need it")
    parts = args.parts.split(",")
    print(f"bench_response: {args.runs} runs, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    through_hive = None
    for part, fn in (("kernel", bench_kernel), ("actors", bench_actors), ("objects", bench_objects),
                     ("e2e", bench_e2e)):
        if part in parts:
            out = fn(args.runs)
            if part == "e2e":
                through_hive = out
    if "edge" in parts:
        bench_edge(args.runs, through_hive)


if __name__ == "__main__":
    main()
