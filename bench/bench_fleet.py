"""Time from ``policy push`` to a bundle verified on every agent, for 100
simulated agents against a baseline of one, in the same run.

    .venv/bin/python bench/bench_fleet.py [--agents N] [--rounds R]

One real ``immune-node hive``; N agents, each its own enrolled CURVE key
and connection, say hello on wire version 3 and answer every bundle the
router sends them with a ``BundleStatus`` once they verified its signature
(what a real agent's keeper does before its sensor reloads).  A round
pushes a new version for every agent (no labels) and times:

* delivered: from the push's commit to the last agent's verified bundle
  (the router looks at the store every 0.1 s, so this is up to 0.1 s plus
  the sending);
* shown: until ``immune-node agents`` (the store) says every agent runs it
  (the registry writes once a second).

Each round's figures for N agents are set against those of a lone agent,
measured first.  A real agent also reloads its sensor's policy: about 10 ms
(tests/e2e/test_fleet.py's logs), which this does not add.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import zmq  # noqa: E402

import fleet  # noqa: E402
import wire  # noqa: E402
from actors import Codec, KeyPair, curve_client, query_status  # noqa: E402
from hive import Store  # noqa: E402
from tests.ports import free_port  # noqa: E402

AGENT = Codec(wire.AgentMessage)
HIVE = Codec(wire.HiveMessage)


class Agents:
    """N simulated agents on one thread."""

    def __init__(self, endpoint: str, hive_key: bytes, bundle_key: bytes, keys: list[KeyPair], names: list[str]):
        self.bundle_key = bundle_key
        self.names = names
        self.verified: dict[int, dict[str, float]] = {}
        self.socks = []
        for kp in keys:
            z = zmq.Context.instance().socket(zmq.DEALER)
            z.setsockopt(zmq.LINGER, 0)
            curve_client(z, kp, hive_key)
            z.connect(endpoint)
            self.socks.append(z)
        self.running = [0] * len(keys)
        self.stop = threading.Event()
        for z, name in zip(self.socks, names):
            z.send(AGENT.encode(wire.Hello(agent=name, wire_version=wire.WIRE_VERSION)))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        for z in self.socks:
            poller.register(z, zmq.POLLIN)
        index = {z: i for i, z in enumerate(self.socks)}
        while not self.stop.is_set():
            for z, _ in poller.poll(100):
                i = index[z]
                msg = HIVE.decode(z.recv())
                if not isinstance(msg, wire.PolicyBundle):
                    continue
                b = fleet.verify(msg.signed, self.bundle_key, self.running[i])
                self.running[i] = b.version
                self.verified.setdefault(b.version, {})[self.names[i]] = time.monotonic()
                z.send(AGENT.encode(wire.BundleStatus(version=b.version, ok=True, running=b.version)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for z in self.socks:
            z.close()


def run(agents_n: int, rounds: int, data: Path, key: fleet.SigningKey) -> list[tuple[float, float]]:
    """(delivered, shown) seconds per round, for ``agents_n`` agents."""
    port = free_port()
    names = [f"sim-{agents_n}-{i}" for i in range(agents_n)]
    keys = [KeyPair.generate() for _ in names]
    store = Store(data / "hive.db")
    for n, kp in zip(names, keys):
        store.enroll(n, kp.public.decode())
    store.close()
    hive = subprocess.Popen([sys.executable, "-m", "node.cli", "hive", "--data", str(data),
                             "--listen", f"tcp://127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=open(data / f"hive-{agents_n}.log", "wb"))
    out = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if query_status(data / "run", timeout=1.0).ready:
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"hive did not start: see {data}/hive-{agents_n}.log")
            time.sleep(0.2)
        hive_key = KeyPair.load(data / "keys", "hive").public
        sim = Agents(f"tcp://127.0.0.1:{port}", hive_key, key.public, keys, names)
        time.sleep(1.5)  # every Hello in
        try:
            for _ in range(rounds):
                store = Store(data / "hive.db")
                version = store.push_bundle("all", {}, lambda v: fleet.encode(key.sign(
                    fleet.Bundle(name="all", version=v, policy="version = 1\n"))))
                pushed = time.monotonic()
                while len(sim.verified.get(version, {})) < agents_n:
                    time.sleep(0.005)
                delivered = max(sim.verified[version].values()) - pushed
                while sum(a.bundle_version == version for a in store.agents() if a.id in set(names)) < agents_n:
                    time.sleep(0.05)
                out.append((delivered, time.monotonic() - pushed))
                store.close()
        finally:
            sim.close()
    finally:
        hive.terminate()
        hive.wait(30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        results = {}
        for n in (1, args.agents):
            data = root / f"n{n}"
            data.mkdir()
            key = fleet.SigningKey.load_or_create(data / "keys")
            results[n] = run(n, args.rounds, data, key)
        base = results[1]
        b_del, b_shown = statistics.median(d for d, _ in base), statistics.median(s for _, s in base)
        for n, rows in results.items():
            d, s = statistics.median(x for x, _ in rows), statistics.median(y for _, y in rows)
            print(f"{n:4d} agents: push -> verified on all: median {d * 1000:7.1f} ms (max "
                  f"{max(x for x, _ in rows) * 1000:7.1f}), ratio {d / b_del:4.2f}; push -> shown by `agents`: "
                  f"median {s * 1000:7.1f} ms, ratio {s / b_shown:4.2f}  ({len(rows)} rounds)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
