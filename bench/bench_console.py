"""Console latency with a full store: 1 million events and 10,000 alerts
(written straight through ``Store.ingest``), then a real ``immune-node hive``
serving the console over HTTPS, and p50/p99 of:

* ``/health``: the server's own floor (TLS, routing, the middleware, no store),
* ``/api/alerts`` (a page of 50, newest first) and its filtered forms,
* ``/alerts`` (the HTML page a browser gets, the same page rendered),
* ``/api/events`` (a page of the event tail), ``/api/alerts/ID/tree`` (a process tree),

each over one kept-alive connection, requests one after another, with a
bearer token.  The raw store query behind the alerts page is timed in the
same run too, so the ratios say what the console adds.  Not a timed test;
see BENCHMARKS.md.  The target is a p99 under 200 ms.

    .venv/bin/python bench/bench_console.py [--events 1000000] [--alerts 10000] [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

import wire  # noqa: E402
from hive import Ingest, Store  # noqa: E402
from hive.console import _read as read  # noqa: E402
from hive.console._users import Users  # noqa: E402
from tests.ports import free_port  # noqa: E402

AGENTS = [f"web{i}" for i in range(20)]
LEVELS = ("low", "medium", "high", "critical")
PROGRAMS = [("/usr/bin/bash", ["bash", "-c", "make all"]), ("/usr/bin/python3", ["python3", "worker.py"]),
            ("/usr/bin/git", ["git", "fetch", "origin"]), ("/usr/bin/ls", ["ls", "-la", "/srv"]),
            ("/usr/bin/curl", ["curl", "-s", "https://api.example/v1"]), ("/tmp/x", ["/tmp/x"])]


def fill(db: Path, events: int, alerts: int, batch: int = 20_000) -> float:
    """Write ``events`` events (process trees: forks, execs, exits, opens)
    and ``alerts`` alerts spread among them; returns the seconds it took."""
    rng = random.Random(7)
    store = Store(db)
    start = time.perf_counter()
    now = time.time_ns() - events * 1000  # the last event about now, one per microsecond
    every = max(events // alerts, 1)
    pid = 1000
    made = n_alerts = 0
    while made < events:
        rows: list = []
        found: list[wire.Alert] = []
        for _ in range(min(batch, events - made)):
            t = now + made * 1000
            agent = AGENTS[made % len(AGENTS)]
            kind = made % 4
            if kind == 0:
                pid += 1
                e: object = wire.Fork(time=t, pid=pid - 1, ppid=1, child_pid=pid)
            elif kind == 1:
                image, argv = rng.choice(PROGRAMS)
                blocked = image.startswith("/tmp/")
                e = wire.Exec(time=t, pid=pid, ppid=pid - 1, filename=image, argv=argv, user="alice", uid=1000,
                              verdict="block" if blocked else "allow", result=-1 if blocked else 0,
                              sha256=f"{pid:064x}")
            elif kind == 2:
                e = wire.Open(time=t, pid=pid, path="/etc/hosts", user="alice")
            else:
                e = wire.Exit(time=t, pid=pid, code=0)
            rows.append((agent, e))
            made += 1
            if made % every == 0 and n_alerts < alerts:
                n_alerts += 1
                found.append(wire.Alert(id=f"al-{n_alerts:06d}", rule_id=f"rule-{n_alerts % 40}",
                                        title=f"Suspicious thing {n_alerts % 40}", level=LEVELS[n_alerts % 4],
                                        agent=agent, time=t, events=[e]))  # type: ignore[list-item]
        by_agent: dict[str, list] = {}
        for agent, e in rows:
            by_agent.setdefault(agent, []).append(e)
        store.ingest([Ingest(agent=a, events=evs) for a, evs in by_agent.items()], alerts=found)
    took = time.perf_counter() - start
    store.close()
    return took


def timings(client: httpx.Client, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path)
        out.append(time.perf_counter() - t)
        if r.status_code != 200:
            raise SystemExit(f"{path}: {r.status_code} {r.text[:200]}")
    return out


def store_timings(db: Path, n: int) -> list[float]:
    store = Store(db, readonly=True)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        read.alerts(store, read.AlertQuery(limit=50))
        out.append(time.perf_counter() - t)
    store.close()
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--alerts", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--keep", metavar="DIR", help="build (or reuse) the store in DIR and leave it there")
    args = ap.parse_args()

    data = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-console-", dir="/var/tmp"))
    db = data / "hive.db"
    try:
        if not db.exists():
            took = fill(db, args.events, args.alerts)
            print(f"store: {args.events} events, {args.alerts} alerts written in {took:.1f} s "
                  f"({args.events / took:,.0f} events/s), {db.stat().st_size / 2**20:.0f} MiB")
        store = Store(db)
        users = Users(store)
        name = f"bench{os.getpid()}"
        users.add(name, "viewer", "bench password 123", actor="bench")
        token = users.new_token(name, actor="bench")[1]
        alert_id = read.alerts(store, read.AlertQuery(limit=1, level="critical")).items[0].id
        store.close()

        port = free_port()
        node = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "hive", "--data", str(data), "--log-level", "warning",
             "--listen", f"tcp://127.0.0.1:{free_port()}", "--console-listen", f"https://127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=open(data / "hive.log", "ab"))
        try:
            base = f"https://127.0.0.1:{port}"
            # The bench trusts the certificate the hive made in its data folder, nothing else.
            deadline = time.monotonic() + 120
            while True:
                try:
                    c = httpx.Client(base_url=base, verify=_pinned(data), headers={"authorization": f"Bearer {token}"},
                                     timeout=30)
                    if c.get("/health").status_code == 200:
                        break
                except (httpx.HTTPError, OSError, ssl.SSLError):
                    pass
                if node.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the hive did not serve the console:\n{(data / 'hive.log').read_text()[-2000:]}")
                time.sleep(0.5)
            n = args.requests
            paths = {
                "/health (floor)": "/health",
                "/api/alerts": "/api/alerts?limit=50",
                "/api/alerts level=high": "/api/alerts?limit=50&level=high",
                "/api/alerts text=thing 7": "/api/alerts?limit=50&text=thing%207",
                "/api/alerts page 100": None,
                "/alerts (HTML)": "/alerts",
                "/api/events": "/api/events?limit=50",
                "/api/alerts/ID/tree": f"/api/alerts/{alert_id}/tree",
                "/ (overview HTML)": "/",
            }
            deep = c.get("/api/alerts?limit=50").json()
            for _ in range(99):
                deep = c.get(f"/api/alerts?limit=50&before={deep['next']}").json()
            paths["/api/alerts page 100"] = f"/api/alerts?limit=50&before={deep['next']}"
            for path in paths.values():
                timings(c, path, 10)  # warm: connections, caches, the page cache of the file
            results = {label: timings(c, path, n) for label, path in paths.items()}
            raw = store_timings(db, n)
        finally:
            node.send_signal(signal.SIGTERM)
            node.wait(60)
        floor50, floor99 = pct(results["/health (floor)"], 0.5), pct(results["/health (floor)"], 0.99)
        print(f"\n{n} requests each, one after another, over one HTTPS connection (p99 target < 200 ms)")
        print(f"{'route':28} {'p50 ms':>8} {'p99 ms':>8} {'p50 / floor':>12} {'p99 / floor':>12}")
        print(f"{'store query (no HTTP)':28} {pct(raw, 0.5):8.2f} {pct(raw, 0.99):8.2f}")
        for label, values in results.items():
            p50, p99 = pct(values, 0.5), pct(values, 0.99)
            print(f"{label:28} {p50:8.2f} {p99:8.2f} {p50 / floor50:11.1f}x {p99 / floor99:11.1f}x")
        worst = max(pct(results[k], 0.99) for k in ("/api/alerts", "/alerts (HTML)"))
        print(f"\nalerts page and API list: worst p99 {worst:.1f} ms "
              f"({'within' if worst < 200 else 'OVER'} the 200 ms target)")
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)


def _pinned(data: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(data / "console.crt"))
    ctx.check_hostname = False  # the self-signed certificate names the host it was made on
    return ctx


if __name__ == "__main__":
    main()
