"""The hive's store: embedded SQLite in WAL mode.

A plain object; the store actor drives the event writes, other actors and
the CLI open their own ``Store`` on the same file (WAL lets readers run
beside the one writer).  Everything the rest of the hive needs from a
database goes through these methods, so a server database can replace
SQLite behind the same interface.

Events are stored once per (agent, stream, seq): a batch is written only if
its seq is the next one for its stream, in the same transaction that moves
the stream's high-water mark, so redelivery after any crash stores nothing
twice.  Commits use ``synchronous=FULL``: what the hive acknowledges is on
disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

import wire

from hive.correlate import Incident

from ._messages import Ingest, Stored

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    id INTEGER PRIMARY KEY,
    agent TEXT NOT NULL,
    time INTEGER NOT NULL,
    kind TEXT NOT NULL,
    pid INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE INDEX IF NOT EXISTS events_agent_time ON events(agent, time);
CREATE INDEX IF NOT EXISTS events_kind_time ON events(kind, time);
CREATE TABLE IF NOT EXISTS streams(
    agent TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, events INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(agent, stream)
);
CREATE TABLE IF NOT EXISTS agents(
    id TEXT PRIMARY KEY,
    public_key TEXT UNIQUE,
    enrolled REAL, revoked REAL,
    hostname TEXT NOT NULL DEFAULT '', addresses TEXT NOT NULL DEFAULT '[]',
    os TEXT NOT NULL DEFAULT '', kernel TEXT NOT NULL DEFAULT '',
    agent_version TEXT NOT NULL DEFAULT '', policy_version TEXT NOT NULL DEFAULT '',
    first_seen REAL, last_seen REAL, online INTEGER NOT NULL DEFAULT 0,
    spooled INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0,
    pid INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens(
    hash TEXT PRIMARY KEY, created REAL NOT NULL, expires REAL NOT NULL,
    used REAL, agent TEXT
);
CREATE TABLE IF NOT EXISTS alerts(
    id TEXT PRIMARY KEY, time INTEGER NOT NULL, agent TEXT NOT NULL, rule_id TEXT NOT NULL,
    title TEXT NOT NULL, level TEXT NOT NULL, incident TEXT NOT NULL DEFAULT '', body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_time ON alerts(time);
CREATE TABLE IF NOT EXISTS incidents(id TEXT PRIMARY KEY, updated REAL NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS commands(
    id TEXT PRIMARY KEY, agent TEXT NOT NULL, action TEXT NOT NULL, params TEXT NOT NULL,
    state TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    expires REAL NOT NULL DEFAULT 0, playbook TEXT NOT NULL DEFAULT '', alert TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '', result TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS commands_state ON commands(state, agent);
CREATE TABLE IF NOT EXISTS audit(
    id INTEGER PRIMARY KEY, time REAL NOT NULL, actor TEXT NOT NULL, what TEXT NOT NULL,
    why TEXT NOT NULL DEFAULT '', result TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '{}'
);
"""


class StoreError(Exception):
    """The store cannot do what was asked; the message says why."""


@dataclass
class AgentRow:
    id: str
    public_key: str | None
    enrolled: float | None
    revoked: float | None
    hostname: str
    addresses: list[str]
    os: str
    kernel: str
    agent_version: str
    policy_version: str
    first_seen: float | None
    last_seen: float | None
    online: bool
    spooled: int
    dropped: int
    pid: int
    """The agent process's pid on its host, from its Hello (playbooks never kill it)."""


_encode_event = msgspec.msgpack.Encoder().encode
_decode_event = msgspec.msgpack.Decoder(wire.AnyEvent).decode
_decode_alert = msgspec.msgpack.Decoder(wire.Alert).decode
_decode_incident = msgspec.msgpack.Decoder(Incident).decode


def _hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Store:
    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, checkpoint_by_hand: bool = False) -> None:
        self.path = Path(path)
        try:
            if readonly:
                if not self.path.exists():
                    raise StoreError(f"no hive store at {self.path}")
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10,
                                          isolation_level=None, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None,
                                          check_same_thread=False)
                new = not self.db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
                if new:
                    # Before any table exists: lets retention give pages back to the disk.
                    self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                    self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                if checkpoint_by_hand:
                    # The writer never stops for a checkpoint: that copy-back
                    # and its fsync were the long tail of commit latency.
                    # ``checkpoint()`` runs it beside the writer instead.
                    self.db.execute("PRAGMA wal_autocheckpoint=0")
                if new:
                    self.db.executescript(_SCHEMA)
                    self.db.execute("INSERT OR IGNORE INTO meta VALUES('schema', ?)", (str(SCHEMA_VERSION),))
                # An existing store is opened without writing, so that a
                # restart works on a full disk.
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the store {self.path}: {e}") from None
        # check_same_thread=False: the store actor writes from a worker thread,
        # one call at a time.

    def close(self) -> None:
        self.db.close()

    def _tx(self) -> Transaction:
        return Transaction(self.db, lambda reason: StoreError(f"store {self.path}: {reason}"))

    # -- events ----------------------------------------------------------------

    def ingest(self, batches: Sequence[Ingest], alerts: Sequence[wire.Alert] = (),
               incidents: Sequence[Incident] = ()) -> list[Stored]:
        """Write every batch that is next in its stream, and the alerts and
        incidents given, in one transaction."""
        out: list[Stored] = []
        rows: list[tuple] = []
        with self._tx() as db:
            self._write_records(db, alerts, incidents)
            marks: dict[tuple[str, str], int] = {}
            for b in batches:
                if b.seq == 0:  # made by the hive itself: no stream to dedupe
                    rows.extend(self._rows(b))
                    continue
                key = (b.agent, b.stream)
                last = marks.get(key)
                if last is None:
                    r = db.execute("SELECT seq FROM streams WHERE agent=? AND stream=?", key).fetchone()
                    last = r[0] if r else 0
                if b.seq == last + 1:
                    rows.extend(self._rows(b))
                    marks[key] = b.seq
                    out.append(Stored(agent=b.agent, stream=b.stream, seq=b.seq, outcome="stored"))
                else:
                    marks[key] = last
                    out.append(Stored(agent=b.agent, stream=b.stream, seq=last,
                                      outcome="duplicate" if b.seq <= last else "gap"))
            db.executemany("INSERT INTO events(agent, time, kind, pid, verdict, body) VALUES(?,?,?,?,?,?)", rows)
            counts: dict[tuple[str, str], int] = {}
            for b in batches:
                if b.seq and marks.get((b.agent, b.stream)) == b.seq:
                    counts[(b.agent, b.stream)] = counts.get((b.agent, b.stream), 0) + len(b.events)
            db.executemany(
                "INSERT INTO streams(agent, stream, seq, events) VALUES(?,?,?,?) "
                "ON CONFLICT(agent, stream) DO UPDATE SET seq=excluded.seq, events=events+excluded.events",
                [(a, s, seq, counts.get((a, s), 0)) for (a, s), seq in marks.items()],
            )
        return out

    @staticmethod
    def _write_records(db: sqlite3.Connection, alerts: Sequence[wire.Alert], incidents: Sequence[Incident]) -> None:
        db.executemany(
            "INSERT INTO alerts(id, time, agent, rule_id, title, level, incident, body) VALUES(?,?,?,?,?,?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET incident=excluded.incident, body=excluded.body",
            [(a.id, a.time or time.time_ns(), a.agent, a.rule_id, a.title, a.level, a.incident, _encode_event(a))
             for a in alerts])
        db.executemany(
            "INSERT INTO incidents(id, updated, body) VALUES(?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET updated=excluded.updated, body=excluded.body",
            [(i.id, i.updated, _encode_event(i)) for i in incidents])

    def alerts(self, *, agent: str | None = None, since: int | None = None, level: str | None = None,
               limit: int = 100) -> list[wire.Alert]:
        """Newest first."""
        where, args = [], []
        for column, value in (("agent", agent), ("level", level)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if since:
            where.append("time >= ?")
            args.append(since)
        sql = "SELECT body FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
        args.append(limit)
        return [_decode_alert(b) for (b,) in self._read(sql + " ORDER BY time DESC LIMIT ?", args)]

    def incidents(self, limit: int = 100) -> list[Incident]:
        return [_decode_incident(b) for (b,) in
                self._read("SELECT body FROM incidents ORDER BY updated DESC LIMIT ?", (limit,))]

    @staticmethod
    def _rows(b: Ingest) -> Iterable[tuple]:
        agent = b.agent
        now = time.time_ns()
        for e in b.events:
            e.agent = agent
            if not e.time:
                e.time = now
            yield (agent, e.time, type(e).__struct_config__.tag, e.pid, e.verdict, _encode_event(e))

    def events(
        self, *, agent: str | None = None, kind: str | None = None, since: int | None = None,
        limit: int = 100,
    ) -> list[wire.AnyEvent]:
        """Newest first."""
        where, args = [], []
        if agent:
            where.append("agent = ?")
            args.append(agent)
        if kind:
            where.append("kind = ?")
            args.append(kind)
        if since:
            where.append("time >= ?")
            args.append(since)
        sql = "SELECT body FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY time DESC, id DESC LIMIT ?"
        args.append(limit)
        return [_decode_event(body) for (body,) in self._read(sql, args)]

    def count_events(self, agent: str | None = None) -> int:
        if agent:
            return self._read("SELECT count(*) FROM events WHERE agent=?", (agent,))[0][0]
        return self._read("SELECT count(*) FROM events", ())[0][0]

    def stream_marks(self) -> dict[tuple[str, str], int]:
        return {(a, s): seq for a, s, seq in self._read("SELECT agent, stream, seq FROM streams", ())}

    def retain(self, *, max_age: float, max_bytes: int, now: float | None = None) -> int:
        """Delete events older than ``max_age`` seconds, then the oldest until
        the file is under ``max_bytes``.  Returns how many were deleted."""
        now = time.time() if now is None else now
        deleted = 0
        with self._tx() as db:
            deleted += db.execute("DELETE FROM events WHERE time < ?", (int((now - max_age) * 1e9),)).rowcount
        while self.size() > max_bytes:
            # A twentieth at a time: close to the bound without many passes.
            chunk = max(100, self.count_events() // 20)
            with self._tx() as db:
                n = db.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY time LIMIT ?)", (chunk,)
                ).rowcount
            deleted += n
            if n == 0:
                break
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.db.execute("PRAGMA incremental_vacuum")
        return deleted

    def checkpoint(self) -> None:
        """Copy the WAL back into the database without blocking the writer."""
        try:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as e:
            raise StoreError(f"store {self.path}: checkpoint failed: {e}") from None

    def size(self) -> int:
        page_count = self.db.execute("PRAGMA page_count").fetchone()[0]
        freelist = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        return (page_count - freelist) * page_size

    # -- agents, keys and tokens -------------------------------------------------

    def enroll(self, agent: str, public_key: str) -> None:
        """Register ``public_key`` as ``agent`` (replacing an earlier key)."""
        with self._tx() as db:
            other = db.execute("SELECT id FROM agents WHERE public_key=? AND id<>?", (public_key, agent)).fetchone()
            if other:
                raise StoreError(f"that key is already enrolled as agent {other[0]!r}")
            db.execute(
                "INSERT INTO agents(id, public_key, enrolled, revoked) VALUES(?,?,?,NULL) "
                "ON CONFLICT(id) DO UPDATE SET public_key=excluded.public_key, "
                "enrolled=excluded.enrolled, revoked=NULL",
                (agent, public_key, time.time()),
            )

    def revoke(self, agent: str) -> None:
        with self._tx() as db:
            if db.execute("UPDATE agents SET revoked=?, online=0 WHERE id=? AND public_key IS NOT NULL",
                          (time.time(), agent)).rowcount == 0:
                raise StoreError(f"no enrolled agent {agent!r}")

    def authorize(self, public_key: str) -> str | None:
        """The agent id of an enrolled, unrevoked key, else None."""
        r = self._read("SELECT id FROM agents WHERE public_key=? AND revoked IS NULL", (public_key,))
        return r[0][0] if r else None

    def revoked(self) -> set[str]:
        return {a for (a,) in self._read("SELECT id FROM agents WHERE revoked IS NOT NULL", ())}

    def new_token(self, ttl: float = 3600.0) -> str:
        secret = secrets.token_urlsafe(24)
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT INTO tokens(hash, created, expires) VALUES(?,?,?)",
                       (_hash_token(secret), now, now + ttl))
        return secret

    def redeem_token(self, secret: str, agent: str, public_key: str) -> None:
        """Enroll ``public_key`` as ``agent`` if ``secret`` is a live, unused token."""
        if not agent or len(agent) > 128 or any(c.isspace() for c in agent):
            raise StoreError("agent name must be 1-128 characters without spaces")
        now = time.time()
        with self._tx() as db:
            r = db.execute("SELECT expires, used FROM tokens WHERE hash=?", (_hash_token(secret),)).fetchone()
            if r is None:
                raise StoreError("unknown token")
            if r[1] is not None:
                raise StoreError("token already used")
            if r[0] < now:
                raise StoreError("token expired")
            taken = db.execute("SELECT public_key FROM agents WHERE id=? AND revoked IS NULL", (agent,)).fetchone()
            if taken and taken[0] and taken[0] != public_key:
                raise StoreError(f"agent name {agent!r} is already enrolled with another key")
            db.execute("UPDATE tokens SET used=?, agent=? WHERE hash=?", (now, agent, _hash_token(secret)))
        self.enroll(agent, public_key)

    def agent_seen(
        self, agent: str, when: float, *, hello: wire.Hello | None = None,
        heartbeat: wire.Heartbeat | None = None, address: str = "",
    ) -> bool:
        """Record a sign of life; True if the agent was offline before."""
        with self._tx() as db:
            r = db.execute("SELECT online FROM agents WHERE id=?", (agent,)).fetchone()
            was_online = bool(r and r[0])
            db.execute(
                "INSERT INTO agents(id, first_seen, last_seen, online) VALUES(?,?,?,1) "
                "ON CONFLICT(id) DO UPDATE SET last_seen=excluded.last_seen, online=1, "
                "first_seen=coalesce(first_seen, excluded.first_seen)",
                (agent, when, when),
            )
            if hello is not None:
                addresses = list(hello.addresses)
                if address and address not in addresses:
                    addresses.append(address)
                db.execute(
                    "UPDATE agents SET hostname=?, addresses=?, os=?, kernel=?, agent_version=?, "
                    "policy_version=?, pid=? WHERE id=?",
                    (hello.hostname, json.dumps(addresses), hello.os, hello.kernel,
                     hello.agent_version, hello.policy_version, hello.pid, agent),
                )
            if heartbeat is not None:
                db.execute("UPDATE agents SET spooled=?, dropped=? WHERE id=?",
                           (heartbeat.spooled, heartbeat.dropped, agent))
        return not was_online

    def mark_offline(self, agent: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE agents SET online=0 WHERE id=?", (agent,))

    def agents(self) -> list[AgentRow]:
        rows = self._read("SELECT id, public_key, enrolled, revoked, hostname, addresses, os, kernel, "
                          "agent_version, policy_version, first_seen, last_seen, online, spooled, dropped, pid "
                          "FROM agents ORDER BY id", ())
        return [AgentRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9], r[10],
                         r[11], bool(r[12]), r[13], r[14], r[15]) for r in rows]

    # -- plumbing ------------------------------------------------------------------

    def _read(self, sql: str, args: Sequence) -> list[tuple]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"store {self.path}: {e}") from None


class Transaction:
    """``with Transaction(db, error):`` BEGIN IMMEDIATE, then COMMIT, or ROLLBACK
    on any exception; SQLite's errors leave as ``error(reason)``."""

    def __init__(self, db: sqlite3.Connection, error: Callable[[str], Exception]) -> None:
        self.db = db
        self.error = error

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self.error(str(e)) from None
        return self.db

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as e:
                self._rollback()
                raise self.error(f"commit failed: {e}") from None
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise self.error(str(exc)) from None

    def _rollback(self) -> None:
        # After some failures (a full disk) SQLite has rolled back already.
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
