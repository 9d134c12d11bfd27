"""An agent with two hive nodes: A and B share one SQLite store and the
hive's keys (copied from A's data folder, as an operator would).  A is
killed with SIGKILL under load: the agent moves to B and delivers; every
event it accepted is stored once.  Then A comes back and B stops: the agent
is on A again (a probe found A answering), and what it sends next is
stored once too."""

import shutil
import signal
import time
from pathlib import Path

import pytest

import wire
from actors import KeyPair
from hive import Store
from tests.kmod.conftest import kernel

from .hosts import MARKER, make_hosts, relay_stats, remove_hosts, wait_until
from .nodes import IMMUNE_NODE, free_port

pytestmark = kernel

NAME = "roamer"
TIMEOUT = 4.0
"""The hive nodes' heartbeat_timeout (the agent's heartbeat: 1 s)."""
SHARED_KEYS = ("hive.key", "hive.pub", "bundle.key", "bundle.pub")


@pytest.fixture(scope="module")
def host():
    hs = make_hosts(1)
    yield hs[0]
    remove_hosts(hs)


class Pair:
    """Two hive nodes on this machine: own data folders (run folder, logs,
    console certificate) and listen ports, one store file, one identity."""

    def __init__(self, tmp: Path, start_node) -> None:
        self.tmp, self.start_node = tmp, start_node
        self.store = tmp / "shared" / "hive.db"
        self.store.parent.mkdir()
        self.config = tmp / "hive.toml"
        # A short heartbeat timeout: the node the agent left must not mark it
        # offline while the other one sees it.
        self.config.write_text(f'[store]\nurl = "sqlite://{self.store}"\n[hive]\nheartbeat_timeout = {TIMEOUT}\n')
        self.dirs = {"a": tmp / "hive-a", "b": tmp / "hive-b"}
        self.ports = {}
        for which in ("a", "b"):
            self.ports[which] = free_port()
            free_port()  # its enrollment door: the port + 1
        self.nodes = {}

    def start(self, which: str):
        node = self.start_node("hive", self.dirs[which], "--config", str(self.config),
                               "--listen", f"tcp://0.0.0.0:{self.ports[which]}")
        node.wait_ready()
        self.nodes[which] = node
        return node

    def share_keys(self) -> None:
        """What the README tells an operator to copy to a second node."""
        src, dst = self.dirs["a"] / "keys", self.dirs["b"] / "keys"
        dst.mkdir(parents=True, mode=0o700)
        for name in SHARED_KEYS:
            shutil.copy2(src / name, dst / name)

    def enroll(self, agent_dir: Path) -> None:
        keys = agent_dir / "keys"
        pair = KeyPair.generate()
        pair.save(keys, "agent")
        (keys / "agent.id").write_text(NAME + "\n")
        for name in ("hive.pub", "bundle.pub"):
            shutil.copy2(self.dirs["a"] / "keys" / name, keys / name)
        store = Store(self.store)
        try:
            store.enroll(NAME, pair.public.decode())
        finally:
            store.close()


def markers(prefix: str, count: int) -> str:
    return f'i=1; while [ $i -le {count} ]; do {MARKER} {prefix}-$i; i=$((i+1)); done'


def stored(store_path: Path) -> tuple[list[str], int]:
    """(marker arguments of the agent's stored execs, the agent's stored events
    but the hive's own notices about it)."""
    store = Store(store_path, readonly=True)
    try:
        events = store.events(agent=NAME, limit=10**7)
    finally:
        store.close()
    marks = [e.argv[1] for e in events if isinstance(e, wire.Exec) and e.filename == MARKER and len(e.argv) > 1]
    own = sum(1 for e in events if not (isinstance(e, wire.Notice) and e.what.startswith("agent_")))
    return marks, own


def settled(agent) -> bool:
    """Nothing new accepted for a while and nothing left in the spool."""
    seen = settled.seen.setdefault(id(agent), [])
    st = relay_stats(agent)
    seen.append(int(st["accepted"]))
    return int(st["spooled"]) == 0 and int(st["connected"]) == 1 and seen[-8:] == [seen[-1]] * 8


settled.seen = {}


def on(agent, endpoint: str) -> bool:
    st = relay_stats(agent)
    return st["hive"] == endpoint and int(st["connected"]) == 1


def test_kill_the_first_hive_node_under_load_then_the_agent_moves_back(tmp_path, start_node, host):
    pair = Pair(tmp_path, start_node)
    pair.start("a")
    pair.share_keys()
    pair.start("b")
    assert (pair.dirs["b"] / "keys" / "hive.pub").read_bytes() == (pair.dirs["a"] / "keys" / "hive.pub").read_bytes()
    a_end, b_end = (f"tcp://{host.gateway}:{pair.ports[w]}" for w in ("a", "b"))

    agent_dir = tmp_path / NAME
    pair.enroll(agent_dir)
    (tmp_path / "agent.toml").write_text("[agent]\nfailover_after = 1.0\nheartbeat = 1.0\n")
    agent = start_node("agent", agent_dir, "--hive", a_end, "--hive", b_end, "--config", str(tmp_path / "agent.toml"),
                       "--scope", f"netns:/run/netns/{host.name}", netns=host.name)
    agent.wait_ready(timeout=120)
    wait_until(lambda: on(agent, a_end), what="the agent on A")

    # Under load: 1500 execs while A dies.
    stream = host.popen("sh", "-c", markers("fo", 1500))
    time.sleep(1.0)
    killed_at = time.monotonic()
    pair.nodes["a"].proc.send_signal(signal.SIGKILL)
    pair.nodes["a"].proc.wait()
    wait_until(lambda: on(agent, b_end), what="the agent on B")
    moved_in = time.monotonic() - killed_at
    assert stream.wait(120) == 0
    wait_until(lambda: settled(agent), timeout=90, what="the agent's spool drained into B")

    marks, own = stored(pair.store)
    assert sorted(marks) == sorted(f"fo-{i}" for i in range(1, 1501))  # each once
    accepted = int(relay_stats(agent)["accepted"])
    assert own == accepted, (own, accepted)  # every event the agent accepted, stored once
    assert int(relay_stats(agent)["hive_moves"]) == 1
    log = agent.log()
    assert f"hive {a_end} unreachable for" in log and f"moving to {b_end}" in log
    assert moved_in < 15, moved_in
    status = _status(agent_dir)
    assert f"agent.relay: hive {b_end} (connected; 1 move between hive nodes)" in status, status

    # A comes back: a probe finds it (every 5 s while connected to B) and the
    # agent returns to it with B still up; then B stops, and it stays on A.
    pair.start("a")
    wait_until(lambda: on(agent, a_end), timeout=60, what="the agent back on A")
    assert f"back on {a_end}" in agent.log()
    time.sleep(2.5 * TIMEOUT)  # B's registry no longer sees the agent, A's does
    assert _offline_notices(pair.store) == 0
    pair.nodes["b"].stop()
    done = host.run("sh", "-c", markers("fb", 300), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: settled(agent), timeout=90, what="the agent's spool drained into A")
    marks, own = stored(pair.store)
    assert sorted(m for m in marks if m.startswith("fb-")) == sorted(f"fb-{i}" for i in range(1, 301))
    assert sorted(m for m in marks if m.startswith("fo-")) == sorted(f"fo-{i}" for i in range(1, 1501))
    assert own == int(relay_stats(agent)["accepted"])
    assert f"agent.relay: hive {a_end} (connected; 2 moves between hive nodes)" in _status(agent_dir)


def _offline_notices(store_path: Path) -> int:
    store = Store(store_path, readonly=True)
    try:
        rows = {r.id: r for r in store.agents()}
        assert rows[NAME].online
        return sum(1 for e in store.events(agent=NAME, kind="notice", limit=10**6) if e.what == "agent_offline")
    finally:
        store.close()


def _status(data: Path) -> str:
    import subprocess

    r = subprocess.run([*IMMUNE_NODE, "status", "--data", str(data)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout
