"""Learned self: what profiles cost the relay, how big they are, and how
often a benign day makes them alert.

    .venv/bin/python bench/bench_profile.py [--hours 24] [--learn 6] [--repeat 5]

A replay of a day-like benign load, made here with a fixed seed: four
workloads (a web service, a Python model server, a nightly backup job, a
container image of a worker), each with its own mix of execs (new pids,
temp names, numbers and hashes in arguments), opens (its files, /proc of
its own pids, temp files), connects (a database, a /24 of peers, DNS),
binds and uid changes, at their own rates, with the variety a real day has
(rotated logs, new request ids, peers drawn from a pool).  The profiles
learn for ``--learn`` hours of it, then run stable for the rest:

* size: each profile's items and encoded bytes (what the disk and the hive
  keep), and the memory the learner holds (tracemalloc);
* cost: the relay's intake work per event (enrichment by the process
  table, fitting to the wire's bounds, packing into spool batches) without
  and with ``Profiles.observe``, on the same events in the same run, best
  of ``--repeat``, and the ratio;
* noise: novelty alerts per hour of the stable part of the day;
* the agent's memory: two processes each running the agent's relay actor
  (no sensor, no hive: its spool keeps everything), one with learning and
  one without, fed the same replay through the relay's event socket; the
  peak and last resident set size (VmHWM, VmRSS) of each, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, os.getcwd())  # the tree it is run from

import msgspec  # noqa: E402

import wire  # noqa: E402
from agent._profile import (  # noqa: E402
    Profiles, ProfileSettings, _folder, _shape, credential, generalise_path, item_of, network)
from agent._proctable import ENRICHED  # noqa: E402
from agent._spool import Spool  # noqa: E402

START = 1_700_000_000.0


def day(hours: float, seed: int = 7) -> list[tuple[float, list[wire.Event]]]:
    """(time, events) bursts of the benign day, in time order."""
    rnd = random.Random(seed)
    out: list[tuple[float, list[wire.Event]]] = []
    pid = iter(range(200_000, 4_000_000))
    peers = [f"10.20.30.{i}" for i in range(2, 60)]

    def web(t: float) -> list[wire.Event]:
        u = dict(unit="nginx.service", cgroup=101, parent_image="/usr/sbin/nginx")
        p = next(pid)
        req = rnd.getrandbits(64)
        evs: list[wire.Event] = [
            wire.Open(pid=p, path=f"/var/www/site/{rnd.choice(['index', 'about', 'shop', 'cart'])}.html", **u),
            wire.Open(pid=p, path="/var/log/nginx/access.log", flags=0o2101, **u),
            wire.Open(pid=p, path=f"/var/lib/nginx/body/{req:016x}", flags=0o101, **u),
            wire.Connect(pid=p, family=2, address=rnd.choice(peers[:20]), port=8080, **u),
        ]
        if rnd.random() < 0.05:  # a php helper now and then, with a request id
            evs.append(wire.Exec(pid=next(pid), exe="/usr/bin/php8.2", argv=["php", "-f", "/var/www/site/api.php",
                                 f"--id={req}"], **u))
        return evs

    def model(t: float) -> list[wire.Event]:
        u = dict(unit="model-server.service", cgroup=102, parent_image="/usr/lib/systemd/systemd")
        p = next(pid)
        evs: list[wire.Event] = [
            wire.Open(pid=p, path=f"/srv/models/llama-{rnd.choice(['7b', '13b'])}/weights.safetensors", **u),
            wire.Open(pid=p, path=f"/proc/{p}/status", **u),
            wire.Open(pid=p, path=f"/tmp/tmp{rnd.getrandbits(40):x}/batch.npy", flags=0o101, **u),
            wire.Connect(pid=p, family=2, address="10.0.0.5", port=6379, **u),
            wire.Connect(pid=p, family=2, address="127.0.0.53", port=53, protocol="udp", **u),
        ]
        if rnd.random() < 0.01:  # a worker restarts
            evs += [wire.Exec(pid=p, exe="/usr/bin/python3.11", argv=["python3", "-m", "server", "--port", "8000",
                                                                       f"--worker={rnd.randrange(8)}"], **u),
                    wire.Bind(pid=p, address="0.0.0.0", port=8000, **u),
                    wire.SetId(pid=p, call="setresuid", old=0, new=998, **u)]
        return evs

    def backup(t: float) -> list[wire.Event]:
        u = dict(unit="backup.service", cgroup=103, parent_image="/usr/bin/bash")
        stamp = time.strftime("%Y%m%d", time.gmtime(t))
        evs: list[wire.Event] = []
        for _ in range(200):
            p = next(pid)
            evs += [wire.Exec(pid=p, exe="/usr/bin/tar", argv=["tar", "czf", f"/backup/db-{stamp}.tgz", "/var/lib/pg"],
                              **u),
                    wire.Open(pid=p, path=f"/var/lib/pg/base/{rnd.randrange(16384, 17000)}/{rnd.randrange(1, 3000)}",
                              **u),
                    wire.Open(pid=p, path=f"/backup/db-{stamp}.tgz", flags=0o101, **u)]
        evs.append(wire.Connect(pid=p, family=2, address="192.0.2.10", port=22, **u))
        return evs

    def worker(t: float) -> list[wire.Event]:
        u = dict(container="c" * 64, container_image="acme/worker:2.1", cgroup=104, parent_image="/usr/bin/python3")
        p = next(pid)
        return [wire.Exec(pid=p, exe="/usr/bin/convert", argv=["convert", f"/tmp/in-{rnd.getrandbits(32)}.png",
                                                                "-resize", f"{rnd.randrange(64, 2048)}x",
                                                                f"/tmp/out-{rnd.getrandbits(32)}.png"], **u),
                wire.Open(pid=p, path=f"/data/queue/{rnd.getrandbits(128):032x}.json", **u),
                wire.Connect(pid=p, family=2, address=rnd.choice(peers), port=443, **u)]

    t = START
    end = START + hours * 3600
    while t < end:
        burst = web(t) + model(t)
        if rnd.random() < 0.3:
            burst += worker(t)
        if int((t - START) / 3600) % 24 == 2 and (t - START) % 3600 < 10:  # the nightly backup, at 02:00
            burst += backup(t)
        for i, e in enumerate(burst):
            e.time = int(t * 1e9) + i
        out.append((t, burst))
        t += rnd.expovariate(1 / 2.0)  # a burst every two seconds or so
    return out


def write_replay(bursts: list[tuple[float, list[wire.Event]]], path: str, per_batch: int = 2048) -> int:
    """The replay as the sensor would batch it (about ``per_batch`` events
    a batch), length-prefixed frames of (time, events): read one at a time,
    so the reader holds one batch, not the day."""
    n = 0
    with open(path, "wb") as f:
        pending: list[wire.Event] = []
        for t, burst in bursts:
            # Each burst's processes exit after it, as a real day's do: the
            # relay's process table forgets them instead of filling up.
            pending += burst + [wire.Exit(pid=pid, time=burst[-1].time + 1) for pid in sorted({e.pid for e in burst})]
            if len(pending) >= per_batch:
                frame = msgspec.msgpack.encode((t, pending))
                f.write(struct.pack("<I", len(frame)) + frame)
                n += len(pending)
                pending = []
    return n


def memory_kib() -> dict[str, int]:
    with open("/proc/self/status") as f:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("VmHWM", "VmRSS")}


def relay_child(replay: str, learn: bool, learn_hours: float) -> None:
    """One process as the agent runs its relay actor, fed ``replay``;
    prints its memory as JSON once every event is spooled."""
    import trio
    import zmq

    from actors import Child, Codec, Context, KeyPair, Runtime, Supervisor
    from agent import ProcessTable, relay
    from agent._profile import Learning

    async def run() -> None:
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            KeyPair.generate().save(tmp / "keys", "agent")
            (tmp / "no-proc").mkdir()
            now = [START]
            learning = Learning("bench", tmp / "profiles", ProfileSettings(learn=learn_hours * 3600, stable=1800),
                                clock=lambda: now[0]) if learn else None
            runtime = Runtime()
            root = Context(runtime, "bench")
            sup = Supervisor([Child("relay", relay, args=dict(
                agent_id="bench", hive_endpoint="tcp://127.0.0.1:9", keys_dir=tmp / "keys",
                hive_public=KeyPair.generate().public, spool_dir=tmp / "spool", spool_bytes=1 << 30,
                events_endpoint="inproc://bench.events", commands_endpoint="inproc://bench.commands",
                results_endpoint="inproc://bench.results", fleet_endpoint="inproc://bench.fleet",
                # no /proc: the replay's pids are made up, and a live process
                # that happens to hold one must not lend it its cgroup
                table=ProcessTable(proc=tmp / "no-proc"), learning=learning))])
            async with trio.open_nursery() as n:
                await n.start(sup, root.child("agent"))
                sensor = root.socket(zmq.PUSH, codec=Codec(wire.AgentMessage), connect="inproc://bench.events")
                sent = 0
                stats = runtime.registry["bench.agent.relay"].extra
                dec = msgspec.msgpack.Decoder(tuple[float, list[wire.AnyEvent]])
                with open(replay, "rb") as f:
                    while head := f.read(4):
                        t, events = dec.decode(f.read(struct.unpack("<I", head)[0]))
                        now[0] = t
                        await sensor.send(wire.EventBatch(seq=1, events=events))
                        sent += len(events)
                        # as a sensor paced by the relay: a few batches in flight, not the day in a queue
                        while sent - int(stats.get("accepted", 0)) > 4 * 2048:
                            await trio.sleep(0.001)
                while int(stats.get("accepted", 0)) < sent:
                    await trio.sleep(0.05)
                out = memory_kib()
                if learning is not None:
                    out["profiles"] = len(learning.profiles.learners)
                print(msgspec.json.encode(out).decode(), flush=True)
                n.cancel_scope.cancel()

    trio.run(run)


def agent_memory(bursts: list[tuple[float, list[wire.Event]]], learn_hours: float, rounds: int = 2) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        replay = f"{tmp}/replay"
        n = write_replay(bursts, replay)
        got: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(rounds):  # interleaved: the allocator's spread shows between rounds
            for learn in (False, True):
                r = subprocess.run([sys.executable, __file__, "--relay-child", replay, "--learn", str(learn_hours)]
                                   + (["--with-learning"] if learn else []),
                                   capture_output=True, text=True, timeout=3600, env={**os.environ, "MALLOC_ARENA_MAX": "1"})
                if r.returncode != 0:
                    raise SystemExit(f"the relay process failed: {r.stderr[-2000:]}")
                got[learn].append(msgspec.json.decode(r.stdout.strip().splitlines()[-1]))

    def mib(runs: list[dict], key: str) -> str:
        return ", ".join(f"{m[key] / 1024:.1f}" for m in runs)

    off, on = min(m["VmHWM"] for m in got[False]), min(m["VmHWM"] for m in got[True])
    print(f"\nagent memory, the relay actor fed {n} events ({got[True][0].get('profiles', 0)} profiles), "
          f"{rounds} rounds: peak RSS without learning {mib(got[False], 'VmHWM')} MiB, with {mib(got[True], 'VmHWM')} "
          f"MiB: least of each {off / 1024:.1f} / {on / 1024:.1f} MiB, ratio {on / off:.3f}; "
          f"at the end without {mib(got[False], 'VmRSS')}, with {mib(got[True], 'VmRSS')} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--learn", type=float, default=6.0, help="hours of learning at the start")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--relay-child", help=argparse.SUPPRESS)
    ap.add_argument("--with-learning", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.relay_child:
        relay_child(args.relay_child, args.with_learning, args.learn)
        return
    bursts = day(args.hours)
    events = sum(len(b) for _, b in bursts)
    print(f"replay: {args.hours:g} h, {len(bursts)} bursts, {events} events, 4 workloads")

    # Noise and size: the day through the profiles, with their clock.
    now = [START]
    settings = ProfileSettings(learn=args.learn * 3600, stable=1800)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    profiles = Profiles("bench", settings, clock=lambda: now[0])
    stable_at: dict[str, float] = {}
    alerts: list[tuple[float, wire.Edge]] = []
    for t, burst in bursts:
        now[0] = t
        for e in profiles.observe(list(burst)):
            if type(e) is wire.Edge:
                alerts.append((t, e))
        profiles.tick()
        for w, lr in profiles.learners.items():
            if lr.p.state == "stable":
                stable_at.setdefault(w, t)
    memory = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    for cached in (generalise_path, _folder, item_of, network, credential, _shape):  # the lookups' caches, bounded
        cached.cache_clear()
    own = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    print(f"\n{'workload':28} {'state':8} {'stable after':>12} {'items':>6} {'bytes':>7}")
    for w, lr in sorted(profiles.learners.items()):
        body = len(msgspec.msgpack.encode(lr.export()))
        after = f"{(stable_at[w] - START) / 3600:.1f} h" if w in stable_at else "-"
        print(f"{w:28} {lr.p.state:8} {after:>12} {lr.size():>6} {body:>7}")
    print(f"memory: {memory / 1024:.0f} KiB with the lookup caches, {own / 1024:.0f} KiB without")
    stable_from = max(stable_at.values(), default=START + args.hours * 3600)
    stable_hours = max((START + args.hours * 3600 - stable_from) / 3600, 1e-9)
    late = [a for t, a in alerts if t >= stable_from]
    print(f"novelty alerts: {len(alerts)} in all, {len(late)} in the {stable_hours:.1f} h all were stable: "
          f"{len(late) / stable_hours:.2f} per hour")
    for _, a in alerts[:10]:
        print(f"  {a.title}")

    # Cost: the relay's intake work per event without and with learning, on
    # the same events (stable profiles: lookups, the usual case).  The
    # baseline leaves out enrichment, the spool's disk writes and fsync,
    # which the relay also does: the true ratio is lower than this one.
    flat = [e for _, b in bursts for e in b][:200_000]
    n = len(flat)
    encoded = msgspec.msgpack.encode(flat)
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(tmp)

        def fresh() -> list[list[wire.Event]]:
            evs = msgspec.msgpack.decode(encoded, type=list[wire.AnyEvent])
            return [evs[i:i + 256] for i in range(0, n, 256)]

        def intake(batches: list[list[wire.Event]], learn: bool, disk: bool = False) -> float:
            start = time.perf_counter_ns()
            for got in batches:
                wire.fit_all(got, ENRICHED)
                if learn:
                    got = profiles.observe(got)
                packed = spool.pack(got, 256)
                if disk:  # and, as the relay, append and fsync once per burst
                    for chunk in packed:
                        spool.append(chunk)
                    spool.sync()
            return (time.perf_counter_ns() - start) / sum(len(b) for b in batches)

        def observe_only(batches: list[list[wire.Event]]) -> float:
            start = time.perf_counter_ns()
            for got in batches:
                profiles.observe(got)
            return (time.perf_counter_ns() - start) / n

        runs: dict[str, list[float]] = {"without": [], "with": [], "observe": [], "disk without": [],
                                        "disk with": []}
        for _ in range(args.repeat):  # interleaved, so a busy moment hurts both
            runs["without"].append(intake(fresh(), False))
            runs["with"].append(intake(fresh(), True))
            runs["observe"].append(observe_only(fresh()))
            runs["disk without"].append(intake(fresh()[:100], False, True))  # 25,600 events: the disk's room
            runs["disk with"].append(intake(fresh()[:100], True, True))
        spool.close()
    best = {k: min(v) for k, v in runs.items()}
    print(f"\nrelay intake (fit + pack) per event, {n} events, best of {args.repeat}: without learning "
          f"{best['without']:.0f} ns, with {best['with']:.0f} ns: ratio {best['with'] / best['without']:.2f}; "
          f"Profiles.observe alone {best['observe']:.0f} ns")
    print(f"with the spool's appends and one fsync per 256 events (25,600 events): without learning {best['disk without']:.0f} ns, "
          f"with {best['disk with']:.0f} ns: ratio {best['disk with'] / best['disk without']:.2f}")
    agent_memory(bursts, args.learn)
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
