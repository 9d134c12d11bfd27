"""Simulated hosts for end-to-end tests: network namespaces joined to this
machine by veth pairs, and agents enrolled at a hive by hand."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from actors import KeyPair
from hive import Store

from .nodes import RunningNode


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@dataclass
class Host:
    name: str
    """The namespace's name (``/run/netns/NAME``)."""
    gateway: str
    """This machine's address on the veth link: where the hive is reached."""
    address: str
    """The namespace's own address."""

    def run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], **kw)

    def popen(self, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)


def make_hosts(count: int) -> list[Host]:
    tag = os.getpid() % 10000
    hosts = []
    for i in range(count):
        name, veth = f"im{tag}h{i}", f"im{tag}v{i}"
        net = f"10.{77 + i}.{tag % 250}"
        sh("ip", "netns", "add", name)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "addr", "add", f"{net}.1/24", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        sh("ip", "netns", "exec", name, "ip", "addr", "add", f"{net}.2/24", "dev", "eth0")
        sh("ip", "netns", "exec", name, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", name, "ip", "route", "add", "default", "via", f"{net}.1")
        hosts.append(Host(name, f"{net}.1", f"{net}.2"))
    # This machine routes between the namespaces, as a network would between hosts.
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    return hosts


def remove_hosts(hosts: list[Host]) -> None:
    for h in hosts:
        subprocess.run(["ip", "netns", "del", h.name], capture_output=True)


def enroll(hive_dir: Path, agent_dir: Path, name: str) -> None:
    """What `immune-node enroll join` leaves behind, done directly."""
    keys = agent_dir / "keys"
    pair = KeyPair.generate()
    pair.save(keys, "agent")
    (keys / "agent.id").write_text(name + "\n")
    (keys / "hive.pub").write_bytes(KeyPair.load(hive_dir / "keys", "hive").public + b"\n")
    if (hive_dir / "keys" / "bundle.pub").exists():  # made at the hive's first start
        (keys / "bundle.pub").write_bytes((hive_dir / "keys" / "bundle.pub").read_bytes())
    store = Store(hive_dir / "hive.db")
    store.enroll(name, pair.public.decode())
    store.close()


def relay_stats(agent: RunningNode) -> dict:
    for a in agent.status().actors:
        if a.name == "agent.relay":
            return a.extra
    raise AssertionError("no relay in the agent's status")


def wait_until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as e:  # a node still starting, a store being written
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


def exec_errno(path: Path) -> int:
    """Run ``path``: 0, or the errno the exec got (EPERM: the sensor refused it)."""
    try:
        subprocess.run([str(path)], check=True, timeout=10, capture_output=True)
        return 0
    except PermissionError as e:
        return e.errno


def drained(agent: RunningNode) -> bool:
    st = relay_stats(agent)
    return int(st.get("spooled", 1)) == 0 and int(st.get("connected", 0)) == 1


MARKER = "/bin/true"


def markers(run, prefix: str, count: int) -> None:
    """``count`` execs of /bin/true with argument PREFIX-i, in order."""
    script = f'i=1; while [ $i -le {count} ]; do {MARKER} {prefix}-$i; i=$((i+1)); done'
    r = run("sh", "-c", script, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr


def stored_markers(hive_dir: Path, agent: str, prefix: str) -> list[str]:
    store = Store(hive_dir / "hive.db", readonly=True)
    try:
        return [e.argv[1] for e in store.events(agent=agent, kind="exec", limit=10**7)
                if e.filename == MARKER and len(e.argv) > 1 and e.argv[1].startswith(prefix + "-")]
    finally:
        store.close()


def duplicates(hive_dir: Path) -> int:
    store = Store(hive_dir / "hive.db", readonly=True)
    try:
        return store.db.execute(
            "SELECT count(*) FROM (SELECT 1 FROM events WHERE kind <> 'notice' "
            "GROUP BY agent, kind, time, pid, body HAVING count(*) > 1)").fetchone()[0]
    finally:
        store.close()
