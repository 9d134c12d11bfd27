"""An idle agent's memory and CPU, against a bare interpreter in the same run.

    .venv/bin/python bench/bench_idle.py [--seconds 10]

Starts a real hive and a real agent (relay, kernel sensor with all hooks and
the default policy, response executor) enrolled to it, lets them settle, then
reads the agent's resident memory and its CPU time over ``--seconds``.  The
baseline is a Python process that has imported trio, pyzmq and msgspec and
sleeps.  Root is needed for the sensor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors import KeyPair, query_status  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "node.cli", *args, "--log-level", "warning"], cwd=ROOT)


def wait_ready(data: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if query_status(data / "run", timeout=1).ready:
                return
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"node in {data} did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    try:
        hive_dir, agent_dir = tmp / "hive", tmp / "agent"
        procs.append(node("hive", "--data", str(hive_dir), "--listen", f"tcp://127.0.0.1:{port}"))
        wait_ready(hive_dir)
        from hive import Store

        keys = KeyPair.generate()
        keys.save(agent_dir / "keys", "agent")
        (agent_dir / "keys" / "hive.pub").write_bytes(KeyPair.load(hive_dir / "keys", "hive").public)
        store = Store(hive_dir / "hive.db")
        store.enroll("idle", keys.public.decode())
        store.close()
        agent = node("agent", "--data", str(agent_dir), "--id", "idle", "--hive", f"tcp://127.0.0.1:{port}")
        procs.append(agent)
        base = subprocess.Popen([sys.executable, "-c", "import trio, zmq, msgspec, time; time.sleep(3600)"])
        procs.append(base)
        wait_ready(agent_dir)
        time.sleep(3)  # settle: the process table is seeded, the first heartbeat sent
        c0, b0, t0 = cpu_seconds(agent.pid), cpu_seconds(base.pid), time.monotonic()
        time.sleep(args.seconds)
        wall = time.monotonic() - t0
        cpu, base_cpu = cpu_seconds(agent.pid) - c0, cpu_seconds(base.pid) - b0
        rss, base_rss = rss_kib(agent.pid), rss_kib(base.pid)
        print(f"{'':<28}{'agent':>12}{'bare python':>14}{'ratio':>8}")
        print(f"{'resident memory':<28}{rss / 1024:>9.1f} MB{base_rss / 1024:>11.1f} MB{rss / base_rss:>7.1f}x")
        print(f"{'CPU while idle':<28}{100 * cpu / wall:>10.2f} %{100 * base_cpu / wall:>12.2f} %")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
