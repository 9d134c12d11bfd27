"""isolate_container and unisolate_container: how long they take (root, runc).

    .venv/bin/python bench/bench_isolate.py [--runs 50]

A runc container (busybox-static, tests/containers.py) joins a network
namespace linked to the host by a veth pair, with IPv4 and IPv6 addresses
and default routes.  Each run: ``Executor.execute(IsolateContainer)`` (find
the container's process, record links, addresses and routes, set eth0
down, reset its connections), then ``UnisolateContainer`` (link up, the
routes and the IPv6 address put back); between the two the container's
connect to a host listener is checked to fail, after them to succeed (not
timed).  Printed: p50 and p99 of each, in ms, and of the cut alone (the
``ms`` the result reports, without the container lookup)."""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import wire  # noqa: E402
from agent.response import Executor  # noqa: E402
from tests.containers import Container  # noqa: E402


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def close_each(listener: socket.socket) -> None:
    while True:
        try:
            listener.accept()[0].close()
        except OSError:
            return


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    tag = uuid.uuid4().hex[:6]
    netns, host_if = f"immb-{tag}", f"imb{tag}"
    sh("ip", "netns", "add", netns)
    listener = socket.socket()
    try:
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns)
        sh("ip", "addr", "add", "10.78.9.1/24", "dev", host_if)
        sh("ip", "addr", "add", "fd78:9::1/64", "dev", host_if, "nodad")
        sh("ip", "link", "set", host_if, "up")
        for cmd in (["addr", "add", "10.78.9.2/24", "dev", "eth0"], ["addr", "add", "fd78:9::2/64", "dev", "eth0", "nodad"],
                    ["link", "set", "eth0", "up"], ["route", "add", "default", "via", "10.78.9.1"],
                    ["-6", "route", "add", "default", "via", "fd78:9::1"]):
            sh("ip", "-n", netns, *cmd)
        listener.bind(("10.78.9.1", 0))
        listener.listen(64)
        port = str(listener.getsockname()[1])
        threading.Thread(target=close_each, args=(listener,), daemon=True).start()
        with tempfile.TemporaryDirectory() as tmp, \
                Container(Path(tmp), ["sleep", "3600"], netns=f"/run/netns/{netns}") as c:
            executor = Executor(Path(tmp) / "agent")
            iso, cut, lift = [], [], []
            for i in range(args.runs):
                t0 = time.perf_counter()
                r = executor.execute(wire.IsolateContainer(id=f"i{i}", container=c.id))
                t1 = time.perf_counter()
                assert r.ok, r.detail
                assert c.run("nc", "-w", "1", "10.78.9.1", port).returncode != 0
                t2 = time.perf_counter()
                u = executor.execute(wire.UnisolateContainer(id=f"u{i}", container=c.id))
                t3 = time.perf_counter()
                assert u.ok, u.detail
                assert c.run("nc", "-w", "1", "10.78.9.1", port).returncode == 0
                iso.append((t1 - t0) * 1000)
                cut.append(r.data["ms"])
                lift.append((t3 - t2) * 1000)
        print(f"runs {args.runs}; one link (eth0), v4 and v6 addresses and default routes")
        for name, values in (("isolate_container", iso), ("  of which the cut", cut), ("unisolate_container", lift)):
            print(f"{name:22} p50 {statistics.median(values):7.1f} ms   p99 {pct(values, 0.99):7.1f} ms")
    finally:
        listener.close()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


if __name__ == "__main__":
    main()
