"""A hive cluster as real processes: NATS servers, ``immune-node hive`` nodes
sharing one store (a SQLite file or a PostgreSQL database) and one identity key, and load agents speaking the
agent wire protocol (CURVE, batches with seqs, cumulative acks, resends of
what is unacknowledged, a move to the next node when one stops answering).

A load agent stands in for the real agent's uplink so that a test controls
exactly what was sent: event ``i`` of batch ``seq`` carries the time
``BASE + seq * 10_000 + i``, so the store can be checked for every event
exactly once."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path

import zmq

import wire
from actors import Codec, KeyPair, curve_client
from hive import Store
from tests.ports import free_port

AGENT, HIVE = Codec(wire.AgentMessage), Codec(wire.HiveMessage)
BASE = 1_700_000_000_000_000_000
PARTITIONS = 4


def event(seq: int, i: int, alarm: int = 0) -> wire.Exec:
    """With ``alarm``, the first event of every ``alarm``-th batch is a run
    from /tmp (a program of its own each time): one alert, one playbook."""
    if alarm and i == 0 and seq % alarm == 0:
        exe = f"/tmp/dropper-{seq}"
        return wire.Exec(time=BASE + seq * 10_000, pid=1000, ppid=1, comm="dropper", filename=exe, argv=[exe],
                         image=exe, cmdline=exe, user="www-data", verdict="allow")
    return wire.Exec(time=BASE + seq * 10_000 + i, pid=1000 + i, ppid=1, comm="bash", filename="/usr/bin/ls",
                     argv=["ls", "-la", "/srv/data"], image="/usr/bin/ls", cmdline="ls -la /srv/data",
                     user="www-data", verdict="allow")


class LoadAgent(threading.Thread):
    def __init__(self, name: str, keys: KeyPair, hive_public: bytes, endpoints: list[str], batches: int,
                 per_batch: int = 64, window: int = 16, ack_timeout: float = 3.0, rate: float = 0.0,
                 alarm: int = 0) -> None:
        super().__init__(name=f"agent-{name}", daemon=True)
        self.agent, self.keys, self.hive_public = name, keys, hive_public
        self.endpoints, self.batches, self.per_batch, self.window = endpoints, batches, per_batch, window
        self.ack_timeout, self.rate, self.alarm = ack_timeout, rate, alarm
        self.stream = f"s-{name}"
        self.acked = 0
        self.sent = 0
        self.moves = 0
        self.stop = threading.Event()
        self.at = 0  # index of the endpoint in use

    def _connect(self, ctx: zmq.Context) -> zmq.Socket:
        z = ctx.socket(zmq.DEALER)
        z.setsockopt(zmq.LINGER, 0)
        curve_client(z, self.keys, self.hive_public)
        z.connect(self.endpoints[self.at])
        return z

    def run(self) -> None:
        ctx = zmq.Context()
        z = self._connect(ctx)
        nxt, heard = 1, time.monotonic()
        interval = 1.0 / self.rate if self.rate else 0.0
        due = time.monotonic()
        while self.acked < self.batches and not self.stop.is_set():
            while nxt <= self.batches and nxt - self.acked <= self.window:
                if interval and time.monotonic() < due:
                    break
                due = max(due + interval, time.monotonic() - 1.0) if interval else due
                batch = wire.EventBatch(seq=nxt, stream=self.stream,
                                        events=[event(nxt, i, self.alarm) for i in range(self.per_batch)])
                z.send(AGENT.encode(batch))
                self.sent += 1
                nxt += 1
            if z.poll(20):
                msg = HIVE.decode(z.recv())
                if isinstance(msg, wire.Ack) and msg.stream == self.stream:
                    heard = time.monotonic()
                    self.acked = max(self.acked, msg.seq)
                    if msg.resend:
                        nxt = msg.seq + 1
                    nxt = max(nxt, self.acked + 1)
            elif time.monotonic() - heard > self.ack_timeout:
                # Silence: the node may be gone; the next one, from the first unacknowledged batch.
                z.close(0)
                if len(self.endpoints) > 1:
                    self.at = (self.at + 1) % len(self.endpoints)
                    self.moves += 1
                z = self._connect(ctx)
                nxt, heard = self.acked + 1, time.monotonic()
        z.close(0)
        ctx.term()


def node_config(folder: Path, *, store: Path | str, nats: list[str], node: str, listen_port: int, role: str = "all",
                partitions: int = PARTITIONS, lease: float = 10.0, rules: Path | None = None, pack: bool = True
                ) -> Path:
    servers = ", ".join(f'"{u}"' for u in nats)
    f = folder / "immune.toml"
    folder.mkdir(parents=True, exist_ok=True)
    f.write_text(f'[node]\ndata = "{folder}"\n[store]\nurl = "{store_url(store)}"\n'
                 f'[hive]\nlisten = "tcp://127.0.0.1:{listen_port}"\nenroll_listen = "tcp://127.0.0.1:{free_port()}"\n'
                 f'heartbeat_timeout = 30\n' + (f'rules = ["{rules}"]\n' if rules else '') +
                 f'[cluster]\nnats = [{servers}]\nnode = "{node}"\nrole = "{role}"\npartitions = {partitions}\n'
                 f'lease = {lease}\n' + ('' if pack else 'pack = false\n'))
    return f


def store_url(store: Path | str) -> str:
    return store if isinstance(store, str) else f"sqlite://{store}"


class HiveCluster:
    """Hive nodes (``start_node`` from tests/e2e/conftest.py) sharing one
    store: a SQLite file in ``folder``, or the PostgreSQL database at ``pg_url``."""

    def __init__(self, folder: Path, start_node, nats: list[str], size: int = 3, roles: list[str] | None = None,
                 pg_url: str = "", rules: Path | None = None, pack: bool = True):
        self.folder, self.start_node, self.nats = folder, start_node, nats
        self.rules = rules
        self.pack = pack
        """``[cluster] pack``: False as in a rolling upgrade from nodes before packing."""
        """A folder of Sigma rules every node loads besides its own."""
        self.store: Path | str = pg_url or folder / "shared" / "hive.db"
        (folder / "shared").mkdir(parents=True, exist_ok=True)
        self.names = [f"node{i + 1}" for i in range(size)]
        self.roles = roles or ["all"] * size
        self.ports = {n: free_port() for n in self.names}
        self.nodes: dict[str, object] = {}
        # One identity for the whole hive: every node has the same keys.
        first = folder / self.names[0] / "keys"
        self.hive_keys = KeyPair.load_or_create(first, "hive")
        import fleet

        fleet.SigningKey.load_or_create(first)
        for n in self.names[1:]:
            shutil.copytree(first, folder / n / "keys", dirs_exist_ok=True)
        Store(self.store).close()

    def endpoint(self, name: str) -> str:
        return f"tcp://127.0.0.1:{self.ports[name]}"

    def start(self, name: str):
        i = self.names.index(name)
        cfg = node_config(self.folder / name, store=self.store, nats=self.nats, node=name,
                          listen_port=self.ports[name], role=self.roles[i], rules=self.rules, pack=self.pack)
        node = self.start_node("hive", self.folder / name, "--config", str(cfg), "--log-level", "info")
        self.nodes[name] = node
        return node

    def start_all(self, timeout: float = 120.0) -> None:
        for n in self.names:
            self.start(n)
        for n in self.names:
            self.nodes[n].wait_ready(timeout)

    def enroll(self, name: str) -> KeyPair:
        k = KeyPair.generate()
        s = Store(self.store)
        try:
            s.enroll(name, k.public.decode())
        finally:
            s.close()
        return k

    def agent(self, name: str, endpoints: list[str], batches: int, **kw) -> LoadAgent:
        return LoadAgent(name, self.enroll(name), self.hive_keys.public, endpoints, batches, **kw)

    def rows(self, sql: str, *args) -> list[tuple]:
        """A query of the shared store, read-only, in SQLite's dialect (``?``)."""
        if isinstance(self.store, str):
            import psycopg

            with psycopg.connect(self.store, autocommit=True, connect_timeout=10) as db:
                return db.execute(sql.replace("?", "%s"), args or None).fetchall()
        db = sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def counts(self) -> dict[str, tuple[int, int, int]]:
        """Per agent: (events stored, distinct event times, the stream's stored seq)."""
        rows = self.rows("SELECT agent, count(*), count(DISTINCT time) FROM events WHERE kind='exec' GROUP BY agent")
        marks = dict(self.rows("SELECT agent, seq FROM streams"))
        return {a: (n, d, marks.get(a, 0)) for a, n, d in rows}

    def stored(self) -> int:
        """Events of every kind in the store (agents' and the hive's own notices)."""
        return self.rows("SELECT count(*) FROM events")[0][0]


class ScriptedAgent:
    """An agent that says hello with its addresses and sends given events,
    one batch at a time, each acknowledged before the next."""

    def __init__(self, name: str, keys: KeyPair, hive_public: bytes, endpoint: str, addresses: list[str]) -> None:
        self.agent = name
        self.ctx = zmq.Context()
        self.z = self.ctx.socket(zmq.DEALER)
        self.z.setsockopt(zmq.LINGER, 0)
        curve_client(self.z, keys, hive_public)
        self.z.connect(endpoint)
        self.z.send(AGENT.encode(wire.Hello(agent=name, hostname=name, addresses=addresses)))
        self.seq = 0
        self.stream = f"s-{name}"
        self.received: list = []
        """What the hive sent besides acks (commands, bundles)."""

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.z.poll(50):
                msg = HIVE.decode(self.z.recv())
                if not isinstance(msg, wire.Ack):
                    self.received.append(msg)

    def answer(self, result: wire.CommandResult) -> None:
        self.z.send(AGENT.encode(result))

    def send(self, *events: wire.Event, timeout: float = 30.0) -> None:
        self.seq += 1
        self.z.send(AGENT.encode(wire.EventBatch(seq=self.seq, stream=self.stream, events=list(events))))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.z.poll(100):
                msg = HIVE.decode(self.z.recv())
                if not isinstance(msg, wire.Ack):
                    self.received.append(msg)
                elif msg.stream == self.stream and msg.seq >= self.seq:
                    return
        raise AssertionError(f"{self.agent}: batch {self.seq} not acknowledged within {timeout}s")

    def close(self) -> None:
        self.z.close(0)
        self.ctx.term()
