"""Fail-over time of an agent between two hive nodes, against a plain
reconnect to the same node, in the same run.

    .venv/bin/python bench/bench_failover.py [--runs N] [--failover-after S]

Two real ``immune-node hive`` processes, A and B, share one SQLite store
and A's keys (copied, as the README says).  The agent is the real relay
actor in this process with ``hive = [A, B]``, fed 5,000 events/s by a
scripted sensor.  Each run times, from the relay's log line saying the
connection dropped to the first acknowledgement that moved its spool on:

* baseline: A's router restarted (``immune-node restart router``): the
  node stays up, the agent reconnects to it;
* fail-over: A killed with SIGKILL: the agent waits ``--failover-after``
  seconds without a connection, moves to B, shakes hands and resends from
  its last ack.  A is then restarted, and the agent's probe takes it back
  to A before the next run.

Fail-over time is ``failover_after`` plus the mechanics; the figures print
both, and the mechanics (fail-over minus ``failover_after``) against the
baseline.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402
import zmq  # noqa: E402

import wire  # noqa: E402
from actors import Child, Codec, Context, KeyPair, Runtime, Supervisor, query_status, request_restart  # noqa: E402
from agent import ProcessTable, relay  # noqa: E402
from hive import Store  # noqa: E402
from tests.ports import free_port  # noqa: E402

RATE_BATCHES = 100
"""Sensor batches per second, of 50 events each."""


class Hive:
    def __init__(self, data: Path, port: int, config: Path) -> None:
        self.data, self.port, self.config = data, port, config
        self.proc: subprocess.Popen | None = None
        self.endpoint = f"tcp://127.0.0.1:{port}"

    def start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        log = open(self.data / "hive.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "hive", "--data", str(self.data), "--config", str(self.config),
             "--listen", f"tcp://127.0.0.1:{self.port}", "--console-listen", f"https://127.0.0.1:{free_port()}"],
            stdout=log, stderr=log, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"hive {self.data} exited: see {self.data / 'hive.log'}")
            try:
                if query_status(self.data / "run", timeout=1.0).ready:
                    return
            except Exception:
                pass
            time.sleep(0.05)
        raise SystemExit(f"hive {self.data} not ready")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


class Seen(logging.Handler):
    """Wall-clock times of the relay's uplink log lines."""

    def __init__(self) -> None:
        super().__init__()
        self.times: dict[str, list[float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", "")
        if event.startswith("uplink."):
            self.times.setdefault(event, []).append(record.created)


def pcts(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]
    return statistics.median(xs), p99


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    store_path = tmp / "shared.db"
    config = tmp / "hive.toml"
    config.write_text(f'[store]\nurl = "sqlite://{store_path}"\n[console]\nenabled = false\n')
    ports = []
    for _ in range(2):
        ports.append(free_port())
        free_port()  # the enrollment door: port + 1
    a, b = Hive(tmp / "a", ports[0], config), Hive(tmp / "b", ports[1], config)
    try:
        await trio.to_thread.run_sync(a.start)
        (b.data / "keys").mkdir(parents=True)
        for name in ("hive.key", "hive.pub", "bundle.key", "bundle.pub"):
            shutil.copy2(a.data / "keys" / name, b.data / "keys" / name)
        await trio.to_thread.run_sync(b.start)
        agent_keys = KeyPair.generate()
        agent_keys.save(tmp / "agent" / "keys", "agent")
        store = Store(store_path)
        store.enroll("bench", agent_keys.public.decode())
        store.close()
        await run(args, tmp, a, b)
    finally:
        a.stop()
        b.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def run(args, tmp: Path, a: Hive, b: Hive) -> None:
    seen = Seen()
    logging.getLogger("immune").addHandler(seen)
    logging.getLogger("immune").setLevel(logging.INFO)
    runtime = Runtime()
    root = Context(runtime, "b")
    table = ProcessTable()
    sup = Supervisor([Child("relay", relay, args=dict(
        agent_id="bench", hive_endpoints=[a.endpoint, b.endpoint], failover_after=args.failover_after,
        probe_every=1.0, keys_dir=tmp / "agent" / "keys", hive_public=KeyPair.load(a.data / "keys", "hive").public,
        spool_dir=tmp / "agent" / "spool", batch=256, heartbeat=1.0, table=table,
        events_endpoint="inproc://bench.events", commands_endpoint="inproc://bench.commands",
        results_endpoint="inproc://bench.results", fleet_endpoint="inproc://bench.fleet"))])

    def extra() -> dict:
        return runtime.registry["b.agent.relay"].extra

    async def feed() -> None:
        sensor = root.socket(zmq.PUSH, codec=Codec(wire.AgentMessage), connect="inproc://bench.events")
        n = 0
        while True:
            evs = [wire.Open(pid=os.getpid(), tid=n + i, path=f"/etc/bench{n + i}") for i in range(50)]
            n += 50
            await sensor.send(wire.EventBatch(seq=1, events=evs))
            await trio.sleep(1 / RATE_BATCHES)

    async def wait_for(cond, timeout: float = 60.0, what: str = "") -> None:
        with trio.fail_after(timeout):
            while not cond():
                await trio.sleep(0.002)

    async def delivering_again(since: float, endpoint: str) -> float:
        """Seconds from the drop seen at ``since`` to the first ack on
        ``endpoint`` that moved the spool on."""
        await wait_for(lambda: extra().get("hive") == endpoint and extra().get("connected") == 1)
        acked = extra()["acked"]
        stream = extra()["stream"]
        await wait_for(lambda: extra()["acked"] != acked or extra()["stream"] != stream)
        return time.time() - since

    def last_drop(before: int) -> float | None:
        drops = seen.times.get("uplink.disconnected", [])
        return drops[-1] if len(drops) > before else None

    baseline, failover = [], []
    async with trio.open_nursery() as n:
        await n.start(sup, root.child("agent"))
        n.start_soon(feed)
        await wait_for(lambda: extra().get("connected") == 1 and extra().get("acked", 0) > 0)
        for i in range(args.runs):
            # Baseline: the same node, its router restarted.
            drops = len(seen.times.get("uplink.disconnected", []))
            await trio.to_thread.run_sync(lambda: request_restart(a.data / "run", "router", timeout=5.0))
            await wait_for(lambda: last_drop(drops) is not None)
            baseline.append(await delivering_again(last_drop(drops), a.endpoint))
            await trio.sleep(0.5)
            # Fail-over: A killed, the agent moves to B.
            drops = len(seen.times.get("uplink.disconnected", []))
            a.kill()
            await wait_for(lambda: last_drop(drops) is not None)
            failover.append(await delivering_again(last_drop(drops), b.endpoint))
            await trio.to_thread.run_sync(a.start)
            await wait_for(lambda: extra().get("hive") == a.endpoint and extra().get("connected") == 1, 60)
            await trio.sleep(0.5)
            print(f"run {i + 1}: reconnect {baseline[-1] * 1000:.0f} ms, fail-over {failover[-1] * 1000:.0f} ms",
                  flush=True)
        n.cancel_scope.cancel()
    b50, b99 = pcts(baseline)
    f50, f99 = pcts(failover)
    mech = [f - args.failover_after for f in failover]
    m50, m99 = pcts(mech)
    print(f"\n{args.runs} runs, failover_after = {args.failover_after:g} s, {RATE_BATCHES * 50} events/s")
    print(f"reconnect to the same node (baseline): p50 {b50 * 1000:.0f} ms  p99 {b99 * 1000:.0f} ms")
    print(f"fail-over to the next node:            p50 {f50 * 1000:.0f} ms  p99 {f99 * 1000:.0f} ms")
    print(f"  of which past failover_after:        p50 {m50 * 1000:.0f} ms  p99 {m99 * 1000:.0f} ms"
          f"  ({m50 / b50:.2f}x / {m99 / b99:.2f}x the baseline)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--failover-after", type=float, default=3.0)
    trio.run(main, p.parse_args())
