"""/metrics scrape time on a store of realistic size, and what the console
costs the hive's ingest rate.

    .venv/bin/python bench/bench_metrics.py [--events N] [--alerts N] [--scrapes N] [--ingest N] [--rounds R]

1. A store is filled with N events (default 1,000,000), 10,000 alerts over
   50 rules, 100 agents and 2,000 actions; a real ``immune-node hive`` serves
   its console on it.  Over one keep-alive HTTPS connection with a viewer's
   token, ``/metrics`` is timed against ``/health`` (the console's cheapest
   answer: TLS, routing, headers) in the same run, interleaved.
2. The same agents (bench_pipeline's processes: CURVE, batches of 256, a
   window of unacknowledged batches) send ``--ingest`` events to a fresh
   hive with the console off, then to one with the console on and
   ``/metrics`` scraped every second (Prometheus' usual interval is 15 to
   60 s): events/s of each, and their ratio; ``--rounds`` pairs, the
   median ratio (a shared machine's noise is larger than the cost).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402

import wire  # noqa: E402
from actors import KeyPair, query_status  # noqa: E402
from bench_pipeline import drive  # noqa: E402
from hive import Ingest, Store  # noqa: E402
from hive.console._users import Users  # noqa: E402
from tests.ports import free_port  # noqa: E402

PASSWORD = "bench password 1234"


def fill(db: Path, events: int, alerts: int) -> None:
    store = Store(db)
    now = time.time_ns()
    agents = [f"host-{i:03d}" for i in range(100)]
    for a in agents:
        store.agent_seen(a, time.time(), hello=wire.Hello(agent=a, hostname=f"{a}.example.org"),
                         heartbeat=wire.Heartbeat(spooled=10, dropped=1))
    step = 4096
    for first in range(0, events, step):
        store.ingest([Ingest(agent=agents[first // step % 100], events=[
            wire.Exec(time=now - (events - i) * 1000, pid=1000 + i % 30000, uid=1000, comm="bash",
                      filename="/usr/bin/ls", cmdline=f"ls -la /srv/{i}", parent_image="/bin/bash")
            for i in range(first, min(events, first + step))])])
    for first in range(0, alerts, 1000):
        store.ingest([], [wire.Alert(id=f"a{i}", rule_id=f"rule-{i % 50}", title=f"rule {i % 50}",
                                     level=("low", "medium", "high", "critical")[i % 4], agent=agents[i % 100],
                                     time=now - (alerts - i) * 10**6, tags=["attack.t1059"],
                                     events=[wire.Exec(time=now, pid=4000 + i, filename="/tmp/x")])
                          for i in range(first, min(alerts, first + 1000))])
    states = ("done", "failed", "pending_approval", "reverted", "dry_run")
    with store._tx() as tx:
        tx.executemany("INSERT INTO commands(id, agent, action, params, state, created, updated) "
                       "VALUES(?,?,?,?,?,?,?)", [(f"c{i}", agents[i % 100], "kill_process", "{}", states[i % 5],
                                                   time.time(), time.time()) for i in range(2000)])
    store.close()


def viewer_token(db: Path) -> str:
    store = Store(db)
    try:
        users = Users(store)
        users.add("prometheus", "viewer", PASSWORD, actor="bench")
        return users.new_token("prometheus", actor="bench")[1]
    finally:
        store.close()


def start_hive(data: Path, console: bool, agents: int = 0) -> tuple[subprocess.Popen, int, int, list, bytes]:
    data.mkdir(parents=True, exist_ok=True)
    hive_keys = KeyPair.load_or_create(data / "keys", "hive")
    keys = []
    if agents:
        store = Store(data / "hive.db")
        for i in range(agents):
            k = KeyPair.generate()
            store.enroll(f"bench-{i}", k.public.decode())
            keys.append((k.public, k.secret))
        store.close()
    config = data / "immune.toml"
    config.write_text(f"[console]\nenabled = {'true' if console else 'false'}\n")
    port = free_port()
    console_port = free_port()
    while console_port == port + 1:  # the hive's enrollment endpoint
        console_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "hive", "--data", str(data), "--config", str(config),
                             "--listen", f"tcp://127.0.0.1:{port}", "--console-listen",
                             f"https://127.0.0.1:{console_port}", "--log-level", "error"], cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if query_status(data / "run", timeout=0.5).ready:
                return proc, port, console_port, keys, hive_keys.public
        except Exception:  # noqa: BLE001  (not up yet)
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the hive did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def client(data: Path, port: int, token: str) -> httpx.Client:
    return httpx.Client(base_url=f"https://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                        verify=ssl.create_default_context(cafile=data / "console.crt"))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def scrape_time(args: argparse.Namespace, tmp: Path) -> None:
    data = tmp / "scrape"
    data.mkdir()
    t0 = time.perf_counter()
    fill(data / "hive.db", args.events, args.alerts)
    print(f"store: {args.events:,} events, {args.alerts:,} alerts, 100 agents, 2,000 actions "
          f"({(data / 'hive.db').stat().st_size / 1e6:,.0f} MB, filled in {time.perf_counter() - t0:.0f} s)")
    token = viewer_token(data / "hive.db")
    proc, _, port, _, _ = start_hive(data, console=True)
    try:
        with client(data, port, token) as c:
            for _ in range(3):  # connection, TLS session, first reads of the store's pages
                c.get("/metrics").raise_for_status()
                c.get("/health").raise_for_status()
            metrics, health = [], []
            size = 0
            for _ in range(args.scrapes):
                t = time.perf_counter()
                r = c.get("/metrics")
                metrics.append(time.perf_counter() - t)
                size = len(r.content)
                t = time.perf_counter()
                c.get("/health")
                health.append(time.perf_counter() - t)
    finally:
        stop(proc)
    m50, m99, h50 = statistics.median(metrics) * 1e3, pct(metrics, 0.99) * 1e3, statistics.median(health) * 1e3
    print(f"/metrics ({size / 1024:.0f} KiB): p50 {m50:.1f} ms, p99 {m99:.1f} ms; /health p50 {h50:.1f} ms; "
          f"ratio {m50 / h50:.1f}x ({args.scrapes} of each, interleaved)")


def ingest_cost(args: argparse.Namespace, tmp: Path) -> None:
    ratios = []
    for round_ in range(args.rounds):
        rates = {}
        for console in (False, True):
            data = tmp / f"ingest-{round_}-{console}"
            data.mkdir()
            rates[console], scrapes = ingest_once(args, data, console)
            extra = f" ({len(scrapes)} scrapes, p50 {statistics.median(scrapes) * 1e3:.0f} ms)" if scrapes else ""
            print(f"round {round_ + 1}: ingest, console {'on, scraped every 1 s' if console else 'off'}: "
                  f"{rates[console]:,.0f} events/s{extra}")
            shutil.rmtree(data, ignore_errors=True)
        ratios.append(rates[True] / rates[False])
    print(f"ingest ratio console on / off: median {statistics.median(ratios):.2f} "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


def ingest_once(args: argparse.Namespace, data: Path, console: bool) -> tuple[float, list[float]]:
    token = viewer_token(data / "hive.db") if console else ""
    proc, port, console_port, keys, server = start_hive(data, console, agents=args.agents)
    stop_scraping = threading.Event()
    scrapes: list[float] = []

    def scrape() -> None:
        with client(data, console_port, token) as c:
            while not stop_scraping.wait(1.0):
                t = time.perf_counter()
                c.get("/metrics").raise_for_status()
                scrapes.append(time.perf_counter() - t)

    scraper = threading.Thread(target=scrape, daemon=True)
    try:
        if console:
            scraper.start()
        rate = drive(f"tcp://127.0.0.1:{port}", args.agents, args.ingest, keys, server)
    finally:
        stop_scraping.set()
        if console:
            scraper.join(10)
        stop(proc)
    return rate, scrapes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="events in the scraped store")
    ap.add_argument("--alerts", type=int, default=10_000)
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--ingest", type=int, default=2_000_000, help="events per ingest run (0: skip)")
    ap.add_argument("--rounds", type=int, default=3, help="ingest runs with the console off, then on")
    ap.add_argument("--agents", type=int, default=4, help="agent processes sending in the ingest runs")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    try:
        scrape_time(args, tmp)
        if args.ingest:
            ingest_cost(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    main()
