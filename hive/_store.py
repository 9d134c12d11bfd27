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

A ``Store`` object may be used from several threads at once (the store actor
writes, retains and checkpoints from worker threads): each thread gets its
own SQLite connection, made on first use.

Errors come in two kinds.  :class:`StoreDataError`: this data cannot be
stored (a value out of SQLite's range, a constraint), and trying again will
not help.  Any other :class:`StoreError` (a full disk, a read-only file, a
lock held too long) may pass: nothing was written, try again later.

The schema carries its version in ``meta``; opening a store older than
this code migrates it step by step (each step one transaction), and a store
newer than this code is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

import wire

from hive.correlate import Incident

from ._messages import ALERT_EVENTS, AgentSeen, Ingest, Repeat, Stored

_SCHEMA_V1 = """
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


def _v1_to_v2(db: sqlite3.Connection) -> None:
    # Retention reaches every table by time: give each its index.
    for sql in ("CREATE INDEX IF NOT EXISTS incidents_updated ON incidents(updated)",
                "CREATE INDEX IF NOT EXISTS commands_updated ON commands(state, updated)",
                "CREATE INDEX IF NOT EXISTS audit_time ON audit(time)",
                "CREATE INDEX IF NOT EXISTS tokens_expires ON tokens(expires)"):
        db.execute(sql)
    # Version 1 wrote the correlator's monotonic clock as an incident's
    # ``updated``; from 2 it is the wall clock of the last write.  The old
    # values mean nothing as dates: count them from now.
    db.execute("UPDATE incidents SET updated = ?", (time.time(),))


def _v2_to_v3(db: sqlite3.Connection) -> None:
    # The wire version of each agent's latest Hello: NULL until it says one.
    db.execute("ALTER TABLE agents ADD COLUMN wire_version INTEGER")


def _v3_to_v4(db: sqlite3.Connection) -> None:
    # A hit within an alert's suppression window is counted on it (issue 12):
    # how many hits the alert stands for, and when the latest happened.
    db.execute("ALTER TABLE alerts ADD COLUMN count INTEGER NOT NULL DEFAULT 1")
    db.execute("ALTER TABLE alerts ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE alerts SET last_seen = time")


def _v4_to_v5(db: sqlite3.Connection) -> None:
    # Fleet policy (issue 13): agents' labels, the signed bundles pushed to
    # them (one version counter for all), and what each agent runs.
    db.execute("CREATE TABLE IF NOT EXISTS labels(agent TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
               "PRIMARY KEY(agent, key))")
    db.execute("CREATE TABLE IF NOT EXISTS bundles(version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
               "labels TEXT NOT NULL, signed BLOB NOT NULL, pushed REAL NOT NULL, note TEXT NOT NULL DEFAULT '')")
    db.execute("CREATE INDEX IF NOT EXISTS bundles_name ON bundles(name, version)")
    db.execute("ALTER TABLE agents ADD COLUMN bundle_version INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE agents ADD COLUMN bundle_detail TEXT NOT NULL DEFAULT ''")


def _v5_to_v6(db: sqlite3.Connection) -> None:
    # The console (issue 14): its users, their API tokens and browser
    # sessions.  Tokens and sessions are kept as SHA-256 digests of their
    # secrets (hive.console._secrets); a user's removal or new password
    # deletes their sessions, so those end at the next request.
    db.execute("CREATE TABLE IF NOT EXISTS users(name TEXT PRIMARY KEY, role TEXT NOT NULL, "
               "password TEXT NOT NULL, created REAL NOT NULL, changed REAL NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS api_tokens(id TEXT PRIMARY KEY, user TEXT NOT NULL, "
               "hash TEXT NOT NULL, created REAL NOT NULL, revoked REAL)")
    db.execute("CREATE INDEX IF NOT EXISTS api_tokens_user ON api_tokens(user)")
    db.execute("CREATE TABLE IF NOT EXISTS sessions(hash TEXT PRIMARY KEY, user TEXT NOT NULL, "
               "created REAL NOT NULL, expires REAL NOT NULL, address TEXT NOT NULL DEFAULT '')")
    db.execute("CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user)")
    db.execute("CREATE INDEX IF NOT EXISTS sessions_expires ON sessions(expires)")


def _v6_to_v7(db: sqlite3.Connection) -> None:
    # SIEM outputs (issue 14): each output's position in alerts and events
    # (hive.outputs._cursor), moved once its receiver took the records.
    db.execute("CREATE TABLE IF NOT EXISTS outputs(name TEXT NOT NULL, source TEXT NOT NULL, "
               "position INTEGER NOT NULL, updated REAL NOT NULL, PRIMARY KEY(name, source))")


def _v7_to_v8(db: sqlite3.Connection) -> None:
    # Herd (issue 16): indicators served to and pulled from other hives;
    # the tables and their SQL live in hive.herd._intel.
    from .herd._intel import herd_tables

    herd_tables(db)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v1_to_v2, _v2_to_v3, _v3_to_v4, _v4_to_v5, _v5_to_v6, _v6_to_v7, _v7_to_v8]
"""``MIGRATIONS[n - 1]`` turns a store of schema version ``n`` into ``n + 1``."""
SCHEMA_VERSION = 1 + len(MIGRATIONS)

ALERT_BYTES = 1 << 20
"""An alert's stored body stays under this whatever its repeats' events weigh."""


class StoreError(Exception):
    """The store cannot do what was asked; the message says why."""


class StoreDataError(StoreError):
    """This data cannot be stored (a value SQLite refuses): trying again will
    not help, unlike any other :class:`StoreError`."""


# SQLite's primary result codes that mean "this data", not "this disk".
_DATA_CODES = frozenset({18, 19, 20, 25})  # TOOBIG, CONSTRAINT, MISMATCH, RANGE
# Python-side errors binding a value (an int beyond 64 bits, a type SQLite
# has no column type for) or encoding a row.
_DATA_EXCEPTIONS = (OverflowError, ValueError, TypeError, msgspec.EncodeError)


def _is_data_error(e: BaseException) -> bool:
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", None)
        # No code: the sqlite3 module refused a value before SQLite saw it.
        return code is None or (code & 0xFF) in _DATA_CODES
    return isinstance(e, _DATA_EXCEPTIONS)


@dataclass
class Ingested:
    """What :meth:`Store.ingest` did."""

    outcomes: list[Stored] = field(default_factory=list)
    """One per agent batch (``seq`` > 0), in order: what to acknowledge."""
    stored: list[Ingest] = field(default_factory=list)
    """What reached the events table, in order (for detection): agent
    batches, the hive's own events, and the notices that replaced refused
    batches."""
    refused: list[tuple[Ingest, str]] = field(default_factory=list)
    """Agent batches that could not be stored on their own, with why; each
    was replaced by a ``batch_refused`` notice and counts as stored."""
    dropped: int = 0
    """The hive's own events, alerts and incidents that could not be stored,
    and repeats of alerts not in the store."""


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
    wire_version: int | None = None
    """The wire version of its latest Hello (None: it has not said one since
    the hive kept it); the router sends commands only on the hive's own."""
    bundle_version: int = 0
    """The policy bundle it runs (its latest Hello or bundle status; 0: none)."""
    bundle_detail: str = ""
    """What its latest bundle status said (why a bundle was refused)."""


@dataclass
class BundleRow:
    version: int
    name: str
    labels: dict[str, str]
    signed: bytes
    pushed: float
    note: str


_encode_event = msgspec.msgpack.Encoder().encode
_decode_event = msgspec.msgpack.Decoder(wire.AnyEvent).decode
_decode_alert = msgspec.msgpack.Decoder(wire.Alert).decode
_decode_incident = msgspec.msgpack.Decoder(Incident).decode


def _hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Store:
    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, checkpoint_by_hand: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.checkpoint_by_hand = checkpoint_by_hand
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        if readonly and not self.path.exists():
            raise StoreError(f"no hive store at {self.path}")
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot open the store {self.path}: {e.strerror}") from None
        try:
            self._open_schema()
        except BaseException:
            self.close()
            raise

    def _open_schema(self) -> None:
        db = self.db
        try:
            if self.readonly:
                version = _version(db)
            elif not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone():
                # Before any table exists: lets retention give pages back to the disk.
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                db.execute("PRAGMA journal_mode=WAL")
                with self._tx() as tx:
                    for statement in _SCHEMA_V1.split(";"):
                        if statement.strip():
                            tx.execute(statement)
                    tx.execute("INSERT OR IGNORE INTO meta VALUES('schema', '1')")
                version = 1
            else:
                # An existing store of this version is opened without
                # writing, so that a restart works on a full disk.
                version = _version(db)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the store {self.path}: {e}") from None
        if version > SCHEMA_VERSION:
            raise StoreError(f"the store {self.path} has schema version {version}, newer than this "
                             f"immune-node's {SCHEMA_VERSION}: run the newer immune-node that wrote it")
        if version < SCHEMA_VERSION and self.readonly:
            raise StoreError(f"the store {self.path} has schema version {version}, older than this "
                             f"immune-node's {SCHEMA_VERSION}: start the hive once to migrate it")
        for step in range(version, SCHEMA_VERSION):
            with self._tx() as tx:
                MIGRATIONS[step - 1](tx)
                tx.execute("UPDATE meta SET value=? WHERE key='schema'", (str(step + 1),))

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection to the store."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    def _connect(self) -> sqlite3.Connection:
        try:
            if self.readonly:
                db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10, isolation_level=None,
                                     check_same_thread=False)
            else:
                db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA synchronous=FULL")
                if self.checkpoint_by_hand:
                    # The writer never stops for a checkpoint: that copy-back
                    # and its fsync were the long tail of commit latency.
                    # ``checkpoint()`` runs it beside the writer instead.
                    db.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the store {self.path}: {e}") from None
        with self._lock:
            # Connections of threads that ended (trio retires idle workers) go.
            for thread, old in [c for c in self._connections if not c[0].is_alive()]:
                old.close()
                self._connections.remove((thread, old))
            self._connections.append((threading.current_thread(), db))
        return db

    def close(self) -> None:
        with self._lock:
            for _, db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    def _tx(self) -> Transaction:
        return Transaction(self.db, lambda reason: StoreError(f"store {self.path}: {reason}"),
                           data_error=lambda reason: StoreDataError(f"store {self.path}: {reason}"))

    # -- events ----------------------------------------------------------------

    def ingest(self, batches: Sequence[Ingest], alerts: Sequence[wire.Alert | Repeat] = (),
               incidents: Sequence[Incident] = ()) -> Ingested:
        """Write every batch that is next in its stream, and the alerts (a
        repeat counted on its alert) and incidents given, in one transaction.  If some of it is data SQLite
        refuses, each batch and record is written on its own instead, so one
        bad batch cannot hold back the others: an agent's batch that cannot
        be stored is replaced by a ``batch_refused`` notice (so its stream
        moves on and the loss is on record), a bad record of the hive's own
        is dropped and counted.  Raises :class:`StoreError` (never the data
        kind) when nothing could be written: the disk, not the data."""
        try:
            with self._tx() as db:
                return self._ingest(db, batches, alerts, incidents)
        except StoreDataError:
            pass
        out = Ingested()
        for one in [([a], []) for a in alerts] + [([], [i]) for i in incidents]:
            try:
                with self._tx() as db:
                    out.dropped += self._write_records(db, *one)
            except StoreDataError:
                out.dropped += 1
        for b in batches:
            try:
                with self._tx() as db:
                    part = self._ingest(db, [b], (), ())
            except StoreDataError as e:
                if not b.seq:
                    out.dropped += 1
                    continue
                reason = str(e).removeprefix(f"store {self.path}: ")
                with self._tx() as db:
                    part = self._refuse(db, b, reason)
                out.refused.append((b, reason))
            out.outcomes += part.outcomes
            out.stored += part.stored
        return out

    def _ingest(self, db: sqlite3.Connection, batches: Sequence[Ingest], alerts: Sequence[wire.Alert | Repeat],
                incidents: Sequence[Incident]) -> Ingested:
        out = Ingested()
        rows: list[tuple] = []
        out.dropped += self._write_records(db, alerts, incidents)
        marks: dict[tuple[str, str], int] = {}
        counts: dict[tuple[str, str], int] = {}
        for b in batches:
            if b.seq == 0:  # made by the hive itself: no stream to dedupe
                rows.extend(self._rows(b))
                out.stored.append(b)
                continue
            key = (b.agent, b.stream)
            last = marks.get(key)
            if last is None:
                last = self._mark(db, key)
            if b.seq == last + 1:
                rows.extend(self._rows(b))
                marks[key] = b.seq
                counts[key] = counts.get(key, 0) + len(b.events)
                out.outcomes.append(Stored(agent=b.agent, stream=b.stream, seq=b.seq, outcome="stored"))
                out.stored.append(b)
            else:
                marks[key] = last
                out.outcomes.append(Stored(agent=b.agent, stream=b.stream, seq=last,
                                           outcome="duplicate" if b.seq <= last else "gap"))
        db.executemany("INSERT INTO events(agent, time, kind, pid, verdict, body) VALUES(?,?,?,?,?,?)", rows)
        self._set_marks(db, marks, counts)
        return out

    def _refuse(self, db: sqlite3.Connection, b: Ingest, reason: str) -> Ingested:
        """Store a notice in place of batch ``b`` (next in its stream: only a
        batch to be written can fail) and move the stream's mark past it."""
        notice = Ingest(agent=b.agent, events=[wire.Notice(
            time=time.time_ns(), what="batch_refused", count=len(b.events), verdict="audit",
            detail=f"stream {b.stream} seq {b.seq}: {len(b.events)} events not stored: {reason}"[:4096])])
        db.executemany("INSERT INTO events(agent, time, kind, pid, verdict, body) VALUES(?,?,?,?,?,?)",
                       list(self._rows(notice)))
        self._set_marks(db, {(b.agent, b.stream): b.seq}, {})
        return Ingested(outcomes=[Stored(agent=b.agent, stream=b.stream, seq=b.seq, outcome="refused")],
                        stored=[notice])

    @staticmethod
    def _mark(db: sqlite3.Connection, key: tuple[str, str]) -> int:
        r = db.execute("SELECT seq FROM streams WHERE agent=? AND stream=?", key).fetchone()
        return r[0] if r else 0

    @staticmethod
    def _set_marks(db: sqlite3.Connection, marks: dict[tuple[str, str], int],
                   counts: dict[tuple[str, str], int]) -> None:
        db.executemany(
            "INSERT INTO streams(agent, stream, seq, events) VALUES(?,?,?,?) "
            "ON CONFLICT(agent, stream) DO UPDATE SET seq=excluded.seq, events=events+excluded.events",
            [(a, s, seq, counts.get((a, s), 0)) for (a, s), seq in marks.items()],
        )

    @staticmethod
    def _write_records(db: sqlite3.Connection, alerts: Sequence[wire.Alert | Repeat],
                       incidents: Sequence[Incident]) -> int:
        """Returns how many repeats were of alerts not in the store."""
        orphans = 0
        for a in alerts:  # in order: a repeat may follow its alert
            if isinstance(a, Repeat):
                orphans += not Store._count_repeat(db, a)
                continue
            when = a.time or time.time_ns()
            # Written again (correlate filing it under an incident): only the
            # incident changes; the body holds the events of its repeats.
            db.execute(
                "INSERT INTO alerts(id, time, agent, rule_id, title, level, incident, body, count, last_seen) "
                "VALUES(?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET incident=excluded.incident",
                (a.id, when, a.agent, a.rule_id, a.title, a.level, a.incident, _encode_event(a), a.count,
                 max(a.last_seen, when)))
        db.executemany(
            "INSERT INTO incidents(id, updated, body) VALUES(?,?,?) "
            "ON CONFLICT(id) DO UPDATE SET updated=excluded.updated, body=excluded.body",
            # The wall clock of this write: an incident's own ``updated`` is
            # the correlator's monotonic clock.
            [(i.id, time.time(), _encode_event(i)) for i in incidents])
        return orphans

    @staticmethod
    def _count_repeat(db: sqlite3.Connection, r: Repeat) -> bool:
        """Count ``r`` on its alert, keeping its events within ALERT_EVENTS and
        ALERT_BYTES; False if the alert is not in the store."""
        row = db.execute("SELECT count, body FROM alerts WHERE id=?", (r.alert,)).fetchone()
        if row is None:
            return False
        db.execute("UPDATE alerts SET count=count+?, last_seen=max(last_seen, ?) WHERE id=?",
                   (r.count, r.time, r.alert))
        if row[0] >= ALERT_EVENTS or not r.events:
            return True  # its events are full: each hit before brought one while there was room
        alert = _decode_alert(row[1])
        room = ALERT_EVENTS - len(alert.events)
        if room > 0:
            alert.events.extend(r.events[:room])
            body = _encode_event(alert)
            if len(body) <= ALERT_BYTES:
                db.execute("UPDATE alerts SET body=? WHERE id=?", (body, r.alert))
        return True

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
        sql = "SELECT body, incident, count, last_seen FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
        args.append(limit)
        alerts = []
        for body, incident, count, last_seen in self._read(sql + " ORDER BY time DESC LIMIT ?", args):
            alert = _decode_alert(body)
            alert.incident, alert.count, alert.last_seen = incident, count, last_seen
            alerts.append(alert)
        return alerts

    def alert_hits(self) -> dict[str, int]:
        """Rule id -> hits its stored alerts stand for (their repeats counted)."""
        return dict(self._read("SELECT rule_id, sum(count) FROM alerts GROUP BY rule_id", ()))

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

    def retain(self, *, max_age: float, max_bytes: int, finished_commands: Sequence[str] = (),
               now: float | None = None) -> dict[str, int]:
        """Delete what is older than ``max_age`` seconds from every table:
        events and alerts by their time, incidents by their last change,
        commands in one of the ``finished_commands`` states by their last
        change (open ones stay however old: an active block must still be
        taken back), audit records by their time, and tokens once expired
        (used or not: the agent's row keeps its enrollment).  Then the
        oldest events (the bulk of the file) until the store is under
        ``max_bytes``.  Deletes in chunks, one transaction each, so the
        writer never waits long.  Returns how many rows went, by table."""
        now = time.time() if now is None else now
        cutoff = now - max_age
        states = ",".join("?" * len(finished_commands)) or "NULL"
        deleted = {
            "events": self._delete("events", "time < ?", (int(cutoff * 1e9),)),
            "alerts": self._delete("alerts", "time < ?", (int(cutoff * 1e9),), key="rowid"),
            "incidents": self._delete("incidents", "updated < ?", (cutoff,), key="rowid"),
            "commands": self._delete("commands", f"state IN ({states}) AND updated < ?",
                                     (*finished_commands, cutoff), key="rowid"),
            "audit": self._delete("audit", "time < ?", (cutoff,)),
            "tokens": self._delete("tokens", "expires < ?", (now,), key="rowid"),
        }
        while self.size() > max_bytes:
            # A twentieth at a time: close to the bound without many passes.
            chunk = max(100, self.count_events() // 20)
            with self._tx() as db:
                n = db.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY time LIMIT ?)", (chunk,)
                ).rowcount
            deleted["events"] += n
            if n == 0:
                break
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.db.execute("PRAGMA incremental_vacuum")
            except sqlite3.Error as e:
                raise StoreError(f"store {self.path}: {e}") from None
        return deleted

    _CHUNK = 5000

    def _delete(self, table: str, where: str, args: Sequence, *, key: str = "id") -> int:
        deleted = 0
        while True:
            with self._tx() as db:
                n = db.execute(f"DELETE FROM {table} WHERE {key} IN "
                               f"(SELECT {key} FROM {table} WHERE {where} LIMIT {self._CHUNK})", args).rowcount
            deleted += n
            if n < self._CHUNK:
                return deleted

    def checkpoint(self) -> None:
        """Copy the WAL back into the database without blocking the writer."""
        try:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as e:
            raise StoreError(f"store {self.path}: checkpoint failed: {e}") from None

    def size(self) -> int:
        page_count = self._read("PRAGMA page_count", ())[0][0]
        freelist = self._read("PRAGMA freelist_count", ())[0][0]
        page_size = self._read("PRAGMA page_size", ())[0][0]
        return (page_count - freelist) * page_size

    # -- agents, keys and tokens -------------------------------------------------

    def enroll(self, agent: str, public_key: str) -> None:
        """Register ``public_key`` as ``agent`` (replacing an earlier key)."""
        with self._tx() as db:
            self._enroll(db, agent, public_key)

    @staticmethod
    def _enroll(db: sqlite3.Connection, agent: str, public_key: str) -> None:
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
        """Enroll ``public_key`` as ``agent`` if ``secret`` is a live, unused
        token: one transaction, so a refused enrollment leaves the token unused."""
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
            self._enroll(db, agent, public_key)

    def agent_seen(
        self, agent: str, when: float, *, hello: wire.Hello | None = None,
        heartbeat: wire.Heartbeat | None = None, address: str = "",
    ) -> bool:
        """Record a sign of life; True if the agent was offline before."""
        seen = AgentSeen(agent=agent, time=int(when * 1e9), hello=hello, heartbeat=heartbeat, address=address)
        return bool(self.agents_seen([seen]))

    def agents_seen(self, sightings: Iterable[AgentSeen], offline: Iterable[str] = ()) -> set[str]:
        """Record signs of life of many agents, and mark the ``offline``
        ones, in one transaction (the registry's once a second).  Returns
        the agents seen that were offline before."""
        came_back: set[str] = set()
        with self._tx() as db:
            for m in sightings:
                self._seen(db, m, came_back)
            db.executemany("UPDATE agents SET online=0 WHERE id=?", [(a,) for a in offline])
        return came_back

    @staticmethod
    def _seen(db: sqlite3.Connection, m: AgentSeen, came_back: set[str]) -> None:
        agent, when = m.agent, m.time / 1e9
        r = db.execute("SELECT online FROM agents WHERE id=?", (agent,)).fetchone()
        if not (r and r[0]):
            came_back.add(agent)
        db.execute(
            "INSERT INTO agents(id, first_seen, last_seen, online) VALUES(?,?,?,1) "
            "ON CONFLICT(id) DO UPDATE SET last_seen=excluded.last_seen, online=1, "
            "first_seen=coalesce(first_seen, excluded.first_seen)",
            (agent, when, when),
        )
        hello = m.hello
        if hello is not None:
            addresses = list(hello.addresses)
            if m.address and m.address not in addresses:
                addresses.append(m.address)
            db.execute(
                "UPDATE agents SET hostname=?, addresses=?, os=?, kernel=?, agent_version=?, "
                "policy_version=?, pid=?, wire_version=? WHERE id=?",
                (hello.hostname, json.dumps(addresses), hello.os, hello.kernel,
                 hello.agent_version, hello.policy_version, hello.pid, hello.wire_version, agent),
            )
            db.execute("UPDATE agents SET bundle_version=? WHERE id=?", (hello.bundle_version, agent))
        if m.heartbeat is not None:
            db.execute("UPDATE agents SET spooled=?, dropped=? WHERE id=?",
                       (m.heartbeat.spooled, m.heartbeat.dropped, agent))
        if m.bundle is not None:
            db.execute("UPDATE agents SET bundle_version=?, bundle_detail=? WHERE id=?",
                       (m.bundle.running, "" if m.bundle.ok else f"v{m.bundle.version} refused: {m.bundle.detail}",
                        agent))

    def mark_offline(self, agent: str) -> None:
        self.agents_seen([], offline=[agent])

    def agents(self) -> list[AgentRow]:
        rows = self._read("SELECT id, public_key, enrolled, revoked, hostname, addresses, os, kernel, "
                          "agent_version, policy_version, first_seen, last_seen, online, spooled, dropped, pid, "
                          "wire_version, bundle_version, bundle_detail FROM agents ORDER BY id", ())
        return [AgentRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9], r[10],
                         r[11], bool(r[12]), r[13], r[14], r[15], r[16], r[17], r[18]) for r in rows]

    # -- fleet policy ----------------------------------------------------------------

    def labels(self) -> dict[str, dict[str, str]]:
        """Every labelled agent's labels."""
        out: dict[str, dict[str, str]] = {}
        for agent, key, value in self._read("SELECT agent, key, value FROM labels ORDER BY agent, key", ()):
            out.setdefault(agent, {})[key] = value
        return out

    def set_labels(self, agent: str, put: dict[str, str], remove: Iterable[str] = (),
                   actor: str = "") -> dict[str, str]:
        """Give ``agent`` the labels ``put`` and take ``remove`` away; its
        labels after.  ``actor`` (who did it) goes into the audit trail."""
        remove = list(remove)
        with self._tx() as db:
            db.executemany("INSERT INTO labels(agent, key, value) VALUES(?,?,?) "
                           "ON CONFLICT(agent, key) DO UPDATE SET value=excluded.value",
                           [(agent, k, v) for k, v in put.items()])
            db.executemany("DELETE FROM labels WHERE agent=? AND key=?", [(agent, k) for k in remove])
            self._bump_fleet(db)
            rows = db.execute("SELECT key, value FROM labels WHERE agent=? ORDER BY key", (agent,)).fetchall()
            self._audit(db, actor, "agent_labels", json.dumps({"agent": agent, "set": put, "removed": remove,
                                                               "labels": dict(rows)}))
        return dict(rows)

    def push_bundle(self, name: str, labels: dict[str, str], sign: Callable[[int], bytes], note: str = "",
                    actor: str = "") -> int:
        """Store a new bundle: ``sign(version)`` makes it once its version
        (one more than any before) is known.  Returns the version."""
        with self._tx() as db:
            version = (db.execute("SELECT max(version) FROM bundles").fetchone()[0] or 0) + 1
            db.execute("INSERT INTO bundles(version, name, labels, signed, pushed, note) VALUES(?,?,?,?,?,?)",
                       (version, name, json.dumps(labels, sort_keys=True), sign(version), time.time(), note))
            self._bump_fleet(db)
            self._audit(db, actor, "policy_push", json.dumps({"name": name, "version": version, "labels": labels}),
                        why=note)
        return version

    def bundles(self, name: str | None = None, *, latest: bool = False, limit: int = 1000) -> list[BundleRow]:
        """Pushed bundles, newest first: all (or ``name``'s), or with
        ``latest`` the newest of each name."""
        where, args = ("WHERE name=?", (name,)) if name else ("", ())
        if latest:
            where += (" AND " if where else "WHERE ") + "version IN (SELECT max(version) FROM bundles GROUP BY name)"
        rows = self._read(f"SELECT version, name, labels, signed, pushed, note FROM bundles {where} "
                          "ORDER BY version DESC LIMIT ?", (*args, limit))
        return [BundleRow(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5]) for r in rows]

    def fleet_serial(self) -> int:
        """A number that grows with every change of labels or bundles."""
        r = self._read("SELECT value FROM meta WHERE key='fleet_serial'", ())
        return int(r[0][0]) if r else 0

    @staticmethod
    def _audit(db: sqlite3.Connection, actor: str, what: str, detail: str, why: str = "") -> None:
        db.execute("INSERT INTO audit(time, actor, what, why, result, detail) VALUES(?,?,?,?,?,?)",
                   (time.time(), actor or "?", what, why, "done", detail))

    @staticmethod
    def _bump_fleet(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO meta(key, value) VALUES('fleet_serial', '1') "
                   "ON CONFLICT(key) DO UPDATE SET value=CAST(value AS INTEGER) + 1")

    # -- plumbing ------------------------------------------------------------------

    def _read(self, sql: str, args: Sequence) -> list[tuple]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"store {self.path}: {e}") from None


def _version(db: sqlite3.Connection) -> int:
    r = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    try:
        return int(r[0]) if r else 1
    except ValueError:
        raise sqlite3.DatabaseError(f"schema version {r[0]!r} is not a number") from None


class Transaction:
    """``with Transaction(db, error):`` BEGIN IMMEDIATE, then COMMIT, or ROLLBACK
    on any exception; SQLite's errors leave as ``error(reason)``.  Given
    ``data_error``, errors that are the data's (see :class:`StoreDataError`),
    including a value Python cannot bind, leave as ``data_error(reason)``."""

    def __init__(self, db: sqlite3.Connection, error: Callable[[str], Exception],
                 data_error: Callable[[str], Exception] | None = None) -> None:
        self.db = db
        self.error = error
        self.data_error = data_error

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
        if self.data_error is not None and _is_data_error(exc):
            what = str(exc) if isinstance(exc, sqlite3.Error) else f"{type(exc).__name__}: {exc}"
            raise self.data_error(what) from None
        if isinstance(exc, sqlite3.Error):
            raise self.error(str(exc)) from None

    def _rollback(self) -> None:
        # After some failures (a full disk) SQLite has rolled back already.
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
