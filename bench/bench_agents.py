"""Many agents against a clustered hive: what two nodes sustain.

    .venv/bin/python bench/bench_agents.py [--agents 10000] [--rate 10] [--nodes 2] [--seconds 60]
                                           [--procs 4] [--baseline 100]

Every agent is a real one as far as the hive can tell: its own CURVE key
enrolled in the store (in bulk, one transaction, through hive.Store), its
own TCP connection and ZeroMQ socket, a Hello when it connects, a Heartbeat
every ``--heartbeat`` seconds, and one EventBatch a second holding the
events that came since the last (``--rate`` a second, exec events as an
agent sends them), at most ``WINDOW`` batches unacknowledged, with seqs the
store checks.  What is simulated is only the host: ``--procs`` processes
each hold a share of the agents' sockets and keys, their sends spread over
each second.  Events an agent could not send (its window full) wait in its
"spool" and go in its next batch, as the real agent's do.

The hive is ``--nodes`` ``immune-node hive --role all`` nodes on a
three-server JetStream cluster, sharing one PostgreSQL 15 store (fsync and
synchronous commits on); agents are spread over the nodes.  Everything runs
on this machine, the load generators too.

Two phases in one run, each measured for ``--seconds`` after a warm-up:
the *baseline*, ``--baseline`` agents offering the same events/s in all, and
the full fleet.  The ratio of their stored rates is what many connections
cost against few.  Printed per phase: events/s offered, acknowledged and
stored; how many agents the registry saw within the last heartbeat
timeout; batch round trips (send to ack, p50/p99); the store's lag at the
end (events acked, not yet stored) and how long it took to drain; CPU (in
cores) and memory of the hive nodes, nats-servers, PostgreSQL and the load
generators.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import zmq  # noqa: E402

import wire  # noqa: E402
from _proc import cpu_seconds, postmaster, rss_bytes  # noqa: E402
from actors import Codec, KeyPair, curve_client, query_status  # noqa: E402
from tests.natsd import NatsCluster  # noqa: E402
from tests.ports import free_port  # noqa: E402

AGENT, HIVE = Codec(wire.AgentMessage), Codec(wire.HiveMessage)
WINDOW = 8
"""Batches an agent sends before it waits for an ack."""
MAX_EVENTS = 256
"""Events in one batch at most (the agent's default)."""
BASE = 1_700_000_000_000_000_000
TICK = 0.01
DRAIN = 120.0
"""Seconds to wait, once the agents stop, for the store to hold all they were acknowledged."""
"""A generator sends what is due, then reads its sockets, once per tick:
round trips are measured to within a tick."""


def _events(agent: int, first: int, n: int) -> list[wire.Exec]:
    # Fixed times far from now: all in one partition, and each (agent, time) unique.
    t = BASE + first * 1000
    return [wire.Exec(time=t + i * 1000, pid=4000 + (first + i) % 30000, ppid=1, comm="curl",
                      filename="/usr/bin/curl", argv=["curl", "-s", "https://example.org/health"],
                      image="/usr/bin/curl", cmdline="curl -s https://example.org/health", user="app",
                      verdict="allow") for i in range(n)]


def generator(index: int, agents: list[tuple[str, bytes, bytes]], endpoints: list[str], server: bytes,
              rate: float, heartbeat: float, stop, report: mp.Queue, ready) -> None:
    """One process's share of the fleet, until ``stop`` is set."""
    ctx = zmq.Context(io_threads=1)
    ctx.set(zmq.MAX_SOCKETS, len(agents) + 64)
    socks = []
    poller = zmq.Poller()
    for i, (name, public, secret) in enumerate(agents):
        z = ctx.socket(zmq.DEALER)
        z.setsockopt(zmq.LINGER, 0)
        curve_client(z, KeyPair(public, secret), server)
        z.connect(endpoints[i % len(endpoints)])
        z.send(AGENT.encode(wire.Hello(agent=name, hostname=name, os="linux")))
        socks.append(z)
        poller.register(z, zmq.POLLIN)
    index_of = {z: i for i, z in enumerate(socks)}
    n = len(agents)
    stream = f"sim{index}-{time.time_ns()}"
    seq, acked, made = [0] * n, [0] * n, [0] * n  # last sent, last acked, events made (their times)
    spooled = [0.0] * n  # events waiting for a batch
    sent_at: list[dict[int, float]] = [{} for _ in range(n)]
    sizes: list[dict[int, int]] = [{} for _ in range(n)]
    ready.set()
    start = time.monotonic()
    # Agent i sends at start + i/n + k seconds and beats at start + heartbeat*i/n + k*heartbeat:
    # one pointer each walks the agents in that order.
    due = [start + i / n for i in range(n)]
    beat = [start + heartbeat * i / n for i in range(n)]
    last = [start] * n
    at = bt = 0
    totals = dict(sent=0, acked=0, batches=0, acked_batches=0, heartbeats=0, held=0)
    rtts: list[float] = []
    next_report = start + 1.0
    while True:
        now = time.monotonic()
        tick_end = now + TICK
        for _ in range(n):
            if due[at] > now:
                break
            i, at = at, (at + 1) % n
            spooled[i] += rate * (now - last[i])
            last[i], due[i] = now, due[i] + 1.0
            # What came since its last turn, in batches of at most MAX_EVENTS.
            while spooled[i] >= 1:
                if seq[i] - acked[i] >= WINDOW:
                    totals["held"] += 1  # the events stay spooled for its next turn
                    break
                k = min(int(spooled[i]), MAX_EVENTS)
                seq[i] += 1
                socks[i].send(AGENT.encode(wire.EventBatch(seq=seq[i], stream=stream,
                                                           events=_events(i, made[i], k))))
                made[i] += k
                spooled[i] -= k
                sent_at[i][seq[i]], sizes[i][seq[i]] = now, k
                totals["sent"] += k
                totals["batches"] += 1
        for _ in range(n):
            if beat[bt] > now:
                break
            i, bt = bt, (bt + 1) % n
            beat[i] += heartbeat
            socks[i].send(AGENT.encode(wire.Heartbeat(time=time.time_ns(), spooled=int(spooled[i]))))
            totals["heartbeats"] += 1
        # One poll of all the sockets a tick: a poll per send would cost more than the sends.
        for z, _ in poller.poll(max(0.0, tick_end - time.monotonic()) * 1000):
            i = index_of[z]
            while True:
                try:
                    msg = HIVE.decode(z.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                if isinstance(msg, wire.Ack) and msg.stream == stream and msg.seq > acked[i]:
                    t = time.monotonic()
                    for q in range(acked[i] + 1, msg.seq + 1):
                        totals["acked"] += sizes[i].pop(q, 0)
                        totals["acked_batches"] += 1
                        sent = sent_at[i].pop(q, None)
                        if sent is not None:
                            rtts.append(t - sent)
                    acked[i] = msg.seq
                if isinstance(msg, wire.Ack) and msg.resend and msg.stream == stream:
                    # The hive asks for what follows its ack again: resent as new batches' events.
                    for q in range(msg.seq + 1, seq[i] + 1):
                        spooled[i] += sizes[i].pop(q, 0)
                        sent_at[i].pop(q, None)
                    seq[i] = msg.seq
        rest = tick_end - time.monotonic()
        if rest > 0:
            time.sleep(rest)
        if time.monotonic() >= next_report:
            next_report += 1.0
            report.put((index, dict(totals), rtts))
            rtts = []
            if stop.is_set():
                break
    for z in socks:
        z.close(0)
    ctx.term()


def enroll(url: str, agents: int, prefix: str) -> list[tuple[str, bytes, bytes]]:
    from hive import Store

    keys = [(f"{prefix}{i:05d}", *zmq.curve_keypair()) for i in range(agents)]
    store = Store(url)
    try:
        with store._tx() as db:  # one transaction: ten thousand are enrolled in seconds
            for name, public, _ in keys:
                Store._enroll(db, name, public.decode())
    finally:
        store.close()
    return [(name, bytes(public), bytes(secret)) for name, public, secret in keys]


def query(url: str, sql: str, *args):
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        return c.execute(sql, args or None).fetchall()


def node_config(folder: Path, url: str, port: int, nats: list[str], name: str, pack: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    servers = ", ".join(f'"{u}"' for u in nats)
    f = folder / "immune.toml"
    f.write_text(f'[node]\ndata = "{folder}"\nlog_level = "warning"\n[store]\nurl = "{url}"\n'
                 f'[hive]\nlisten = "tcp://127.0.0.1:{port}"\nenroll_listen = "tcp://127.0.0.1:{free_port()}"\n'
                 f'heartbeat_timeout = 30\n[console]\nenabled = false\n'
                 f'[cluster]\nnats = [{servers}]\nnode = "{name}"\npartitions = 16\n'
                 + ("" if pack else "pack = false\n"))
    return f


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def phase(tmp: Path, pg, nodes: int, agents: int, rate: float, heartbeat: float,
          seconds: float, procs: int, warmup: float, pack: bool) -> dict:
    url = pg.fresh_schema()
    first = tmp / "node1"
    hive_keys = KeyPair.load_or_create(first / "keys", "hive")
    import fleet

    fleet.SigningKey.load_or_create(first / "keys")
    t = time.perf_counter()
    keys = enroll(url, agents, "sim")
    enrolled = time.perf_counter() - t
    # NATS servers of its own: a phase must not start with what the last left in JetStream.
    nats = NatsCluster(tmp / "nats").start()
    running: list[tuple[Path, subprocess.Popen]] = []
    endpoints = []
    try:
        for i in range(nodes):
            folder = tmp / f"node{i + 1}"
            if i:
                shutil.copytree(first / "keys", folder / "keys", dirs_exist_ok=True)
            port = free_port()
            cfg = node_config(folder, url, port, nats.urls, f"node{i + 1}", pack)
            log = open(folder / "hive.log", "ab")
            running.append((folder, subprocess.Popen([sys.executable, "-m", "node.cli", "hive", "--config", str(cfg)],
                                                     cwd=ROOT, stdout=log, stderr=log)))
            endpoints.append(f"tcp://127.0.0.1:{port}")
        for folder, p in running:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if p.poll() is not None:
                    raise SystemExit(f"a hive node exited with {p.returncode}; see {folder}/hive.log")
                try:
                    if query_status(folder / "run", timeout=0.5).ready:
                        break
                except Exception:
                    time.sleep(0.2)
        time.sleep(3)  # leases taken
        ctx = mp.get_context("fork")
        report = ctx.Queue()
        share = [keys[i::procs] for i in range(procs)]
        readies = [ctx.Event() for _ in range(procs)]
        stop = ctx.Event()
        # Each generator's share connects to the nodes in turn.
        gens = [ctx.Process(target=generator, args=(i, share[i], endpoints[i % nodes:] + endpoints[:i % nodes],
                                                    hive_keys.public, rate, heartbeat, stop, report, readies[i]))
                for i in range(procs)]
        t0 = time.monotonic()
        for g in gens:
            g.start()
        for r in readies:
            r.wait()
        connected = time.monotonic() - t0
        latest: dict[int, dict] = {}
        rtts: list[float] = []

        def drain_reports(keep: bool) -> None:
            while True:
                try:
                    i, totals, r = report.get_nowait()
                except Exception:
                    return
                latest[i] = totals
                if keep:
                    rtts.extend(r)

        def total(key: str) -> int:
            return sum(t.get(key, 0) for t in latest.values())

        servers = [p.pid for _, p in running]
        natsd = [s.proc.pid for s in nats.servers]
        pgpid = [postmaster(pg.data)]
        gpids = [g.pid for g in gens]
        time.sleep(warmup)
        drain_reports(False)
        stored0 = int(query(url, "SELECT coalesce(sum(events), 0) FROM streams")[0][0])
        sent0, acked0, beats0, batches0, held0, abatches0 = (total(k) for k in (
            "sent", "acked", "heartbeats", "batches", "held", "acked_batches"))
        cpu0 = [cpu_seconds(x) for x in (servers, natsd, pgpid, gpids)]
        w0 = time.monotonic()
        rss_peak = 0
        while time.monotonic() - w0 < seconds:
            time.sleep(1.0)
            drain_reports(True)
            rss_peak = max(rss_peak, rss_bytes(servers))
        drain_reports(True)
        wall = time.monotonic() - w0
        cpu = [(cpu_seconds(x) - c) / wall for x, c in zip((servers, natsd, pgpid, gpids), cpu0)]
        stored1 = int(query(url, "SELECT coalesce(sum(events), 0) FROM streams")[0][0])
        sent, acked = total("sent") - sent0, total("acked") - acked0
        beats, batches, held = total("heartbeats") - beats0, total("batches") - batches0, total("held") - held0
        acked_batches = total("acked_batches") - abatches0
        seen = int(query(url, "SELECT count(*) FROM agents WHERE online=1 AND last_seen > %s", time.time() - 30)[0][0])
        per_node = [rss_bytes([p]) for p in servers]
        # Where the work waits, as immune-node status shows the cluster's queues.
        shown = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config",
                                str(running[0][0] / "immune.toml")], capture_output=True, text=True, timeout=60,
                               cwd=ROOT).stdout.splitlines()
        queues = [line.strip() for line in shown[next((i for i, x in enumerate(shown) if x.startswith("queues")),
                                                       len(shown)) + 1:]]
        # Acknowledged (held by JetStream) and not yet stored, as the window closed.
        lag = total("acked") - stored1
        stop.set()
        for g in gens:
            g.join(30)
        drain_reports(False)
        t1 = time.monotonic()
        target = total("acked")  # every event acknowledged to an agent, stored
        left = target
        while time.monotonic() - t1 < DRAIN:
            left = target - int(query(url, "SELECT coalesce(sum(events), 0) FROM streams")[0][0])
            if left <= 0:
                break
            time.sleep(0.5)
        drained = time.monotonic() - t1
        return dict(agents=agents, offered=agents * rate, sent=sent / wall, acked=acked / wall,
                    stored=(stored1 - stored0) / wall, heartbeats=beats / wall, batches=batches / wall,
                    acked_batches=acked_batches / wall,
                    held=held / wall, seen=seen, p50=percentile(rtts, 0.5), p99=percentile(rtts, 0.99),
                    lag=max(0, lag), drained=drained, left=max(0, left), cpu=cpu, rss_peak=rss_peak, rss_nodes=per_node,
                    enrolled=enrolled, connected=connected, queues=queues)
    finally:
        for _, p in running:
            p.send_signal(signal.SIGTERM)
        for _, p in running:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        nats.stop()


def show(name: str, r: dict) -> None:
    cores = r["cpu"]
    print(f"{name}: {r['agents']:,} agents, offered {r['offered']:,.0f} ev/s")
    print(f"  events/s  sent {r['sent']:,.0f}  acknowledged {r['acked']:,.0f}  stored {r['stored']:,.0f} "
          f"({r['stored'] / r['offered']:.0%} of offered)")
    per_batch = cores[0] / r["acked_batches"] * 1000 if r["acked_batches"] else float("nan")
    print(f"  batches/s sent {r['batches']:,.0f} acknowledged {r['acked_batches']:,.0f} "
          f"(hive-node CPU {per_batch:.2f} ms an acknowledged batch)  heartbeats/s {r['heartbeats']:,.0f}  sends held by a full window/s "
          f"{r['held']:,.0f}  agents online in the registry {r['seen']:,} of {r['agents']:,}")
    print(f"  batch round trip p50 {r['p50'] * 1000:.0f} ms p99 {r['p99'] * 1000:.0f} ms; acked not stored at the "
          f"end {r['lag']:,} events, " + (f"drained in {r['drained']:.1f} s" if not r["left"] else
                                            f"{r['left']:,} still not stored {r['drained']:.0f} s after the agents stopped"))
    print(f"  CPU cores: hive nodes {cores[0]:.2f}  nats-servers {cores[1]:.2f}  postgresql {cores[2]:.2f}  "
          f"load generators {cores[3]:.2f}")
    print(f"  hive nodes' memory {', '.join(f'{b / 2**20:.0f}' for b in r['rss_nodes'])} MiB "
          f"(peak of all {r['rss_peak'] / 2**20:.0f} MiB); enrolled in {r['enrolled']:.1f} s, "
          f"sockets made in {r['connected']:.1f} s")
    print(f"  queues as the window closed (waiting / taken): {'; '.join(' '.join(q.split()) for q in r['queues'])}",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=10.0, help="events/s per agent")
    ap.add_argument("--heartbeat", type=float, default=5.0, help="seconds between an agent's heartbeats")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60.0, help="measured time per phase")
    ap.add_argument("--warmup", type=float, default=20.0)
    ap.add_argument("--procs", type=int, default=4, help="load generator processes")
    ap.add_argument("--baseline", type=int, default=100, help="agents of the baseline phase (0: none)")
    ap.add_argument("--no-pack", dest="pack", action="store_false",
                    help="one JetStream message a batch ([cluster] pack = false), as before packing")
    args = ap.parse_args()
    from tests import pgserver

    if why := pgserver.missing():
        sys.exit(f"bench_agents: {why}")
    base = Path(tempfile.mkdtemp(prefix="bench-agents-"))
    pg = pgserver.start(durable=True)
    load = os.getloadavg()
    try:
        results = {}
        if args.baseline:
            rate = args.rate * args.agents / args.baseline
            results["baseline"] = phase(base / "baseline", pg, args.nodes, args.baseline, rate, args.heartbeat,
                                        args.seconds, min(args.procs, args.baseline), args.warmup, args.pack)
            show("baseline", results["baseline"])
        results["fleet"] = phase(base / "fleet", pg, args.nodes, args.agents, args.rate, args.heartbeat,
                                 args.seconds, args.procs, args.warmup, args.pack)
        show("fleet", results["fleet"])
        if args.baseline:
            print(f"fleet/baseline stored events/s: {results['fleet']['stored'] / results['baseline']['stored']:.2f}x")
    finally:
        pgserver.stop(pg)
        shutil.rmtree(base, ignore_errors=True)
    print(f"({args.nodes} hive nodes, 3 nats-servers, 1 PostgreSQL, {args.procs} load generator processes, "
          f"{os.cpu_count()} cores; load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"after {' '.join(f'{x:.2f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    main()
