"""A real hive whose ``[store] url`` is a PostgreSQL database, with a real
agent and its kernel sensor: the agent's events and the alerts they raise
land in PostgreSQL, each event once, and `immune-node alerts` and `events`
read them from there; a restart of the server under the running hive
loses nothing and stores nothing twice."""

import json
import subprocess
import threading
import uuid

import wire
from actors import KeyPair
from hive import Store
from tests.kmod.conftest import kernel

from .hosts import MARKER, markers, wait_until
from .nodes import IMMUNE_NODE, free_port

pytestmark = kernel

SHADOW = "Shadow Password File Opened by an Unexpected Process"


def cli(config, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*IMMUNE_NODE, *args, "--config", str(config)], capture_output=True, text=True,
                          timeout=120)


def start_hive_and_agent(tmp_path, start_node, pg_url):
    hive_dir, agent_dir = tmp_path / "hive", tmp_path / "agent"
    config = tmp_path / "hive.toml"
    config.write_text(f"[store]\nurl = '{pg_url}'\n")
    port = free_port()
    hive = start_node("hive", hive_dir, "--config", str(config), "--listen", f"tcp://127.0.0.1:{port}")
    hive.wait_ready(timeout=60)
    assert not (hive_dir / "hive.db").exists()  # the store is the database, not a file
    # Enrolled as `immune-node enroll join` leaves it, the key registered in PostgreSQL.
    pair = KeyPair.generate()
    pair.save(agent_dir / "keys", "agent")
    (agent_dir / "keys" / "agent.id").write_text("pg-agent\n")
    (agent_dir / "keys" / "hive.pub").write_bytes(KeyPair.load(hive_dir / "keys", "hive").public + b"\n")
    (agent_dir / "keys" / "bundle.pub").write_bytes((hive_dir / "keys" / "bundle.pub").read_bytes())
    store = Store(pg_url)
    store.enroll("pg-agent", pair.public.decode())
    agent = start_node("agent", agent_dir, "--hive", f"tcp://127.0.0.1:{port}")
    agent.wait_ready(timeout=120)
    return config, hive, agent, store


def stored(store, prefix: str) -> list[str]:
    return [e.argv[1] for e in store.events(agent="pg-agent", kind="exec", limit=10**6)
            if isinstance(e, wire.Exec) and e.filename == MARKER and len(e.argv) > 1
            and e.argv[1].startswith(prefix + "-")]


def run_markers(prefix: str, count: int) -> None:
    markers(lambda *c, **kw: subprocess.run(list(c), **kw), prefix, count)


def test_a_hive_on_postgresql_stores_an_agents_events_and_alerts_once(tmp_path, start_node, pg_url):
    config, hive, agent, store = start_hive_and_agent(tmp_path, start_node, pg_url)
    prefix = f"pg{uuid.uuid4().hex[:6]}"
    run_markers(prefix, 100)
    subprocess.run(["cat", "/etc/shadow"], stdout=subprocess.DEVNULL, check=True)
    wait_until(lambda: len(stored(store, prefix)) >= 100, timeout=60, what="the markers in PostgreSQL")
    wait_until(lambda: SHADOW in {a.title for a in store.alerts(limit=1000)}, timeout=60, what="the shadow alert")
    assert sorted(stored(store, prefix)) == sorted(f"{prefix}-{i}" for i in range(1, 101))  # each once
    # Stored in today's partition, as COPY group commits.
    assert store.db.execute("SELECT count(*) FROM events_default").fetchone()[0] == 0
    assert store.agents()[0].online

    shown = cli(config, "alerts", "--json")
    assert shown.returncode == 0, shown.stderr
    assert SHADOW in [json.loads(line)["title"] for line in shown.stdout.splitlines()]
    shown = cli(config, "events", "--json", "--agent", "pg-agent", "--limit", "100000")
    assert shown.returncode == 0, shown.stderr
    argv = [json.loads(line).get("argv") or [] for line in shown.stdout.splitlines()]
    assert sum(1 for a in argv if len(a) > 1 and a[1].startswith(prefix + "-")) == 100
    store.close()
    assert agent.stop() == 0 and hive.stop() == 0


def test_a_postgresql_restart_under_a_running_hive_loses_nothing_and_stores_nothing_twice(
        tmp_path, start_node, pg_server, pg_url):
    """The store actor's commit fails while the server restarts: nothing is
    acknowledged, the agent keeps its batches in its spool and sends them
    again, and the next commit goes through on a new connection."""
    config, hive, agent, store = start_hive_and_agent(tmp_path, start_node, pg_url)
    before, during, after = (f"pg{uuid.uuid4().hex[:6]}" for _ in range(3))
    run_markers(before, 50)
    wait_until(lambda: len(stored(store, before)) >= 50, timeout=60, what="the first markers")
    runner = threading.Thread(target=run_markers, args=(during, 200))
    runner.start()
    pg_server.restart()
    runner.join(120)
    run_markers(after, 50)
    for prefix, n in ((before, 50), (during, 200), (after, 50)):
        wait_until(lambda: len(stored(store, prefix)) >= n, timeout=90, what=f"the markers {prefix}")
        assert sorted(stored(store, prefix)) == sorted(f"{prefix}-{i}" for i in range(1, n + 1))
    assert hive.proc.poll() is None and agent.proc.poll() is None
    store.close()
    assert agent.stop() == 0 and hive.stop() == 0
