"""The hive's store on embedded SQLite in WAL mode: its schema, migrations
and what it does differently from other backends (see hive._store).

Commits use ``synchronous=FULL``: what the hive acknowledges is on disk.
Each thread gets its own connection (WAL lets readers run beside the one
writer).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._store import Store

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
    # AI triage (issue 16): each incident's verdicts (and failed attempts,
    # with the reason) newest last, and the triages asked for by hand that
    # the hive's ai actor has not done yet.
    db.execute("CREATE TABLE IF NOT EXISTS triage(id INTEGER PRIMARY KEY AUTOINCREMENT, incident TEXT NOT NULL, "
               "time REAL NOT NULL, state TEXT NOT NULL, requested_by TEXT NOT NULL DEFAULT '', "
               "model TEXT NOT NULL DEFAULT '', severity TEXT NOT NULL DEFAULT '', "
               "confidence REAL NOT NULL DEFAULT 0, verdict TEXT NOT NULL DEFAULT '', "
               "reason TEXT NOT NULL DEFAULT '', seconds REAL NOT NULL DEFAULT 0, calls INTEGER NOT NULL DEFAULT 0)")
    db.execute("CREATE INDEX IF NOT EXISTS triage_incident ON triage(incident, id)")
    db.execute("CREATE INDEX IF NOT EXISTS triage_time ON triage(time)")
    db.execute("CREATE TABLE IF NOT EXISTS triage_requests(incident TEXT PRIMARY KEY, time REAL NOT NULL, "
               "requested_by TEXT NOT NULL)")


def _v8_to_v9(db: sqlite3.Connection) -> None:
    # A hive cluster (issue 15): which node's playbook took each alert, so
    # that an alert correlation hands out twice (its owner died after the
    # hand-over, before its ack) is acted on once.
    db.execute("CREATE TABLE IF NOT EXISTS alert_claims(alert TEXT PRIMARY KEY, node TEXT NOT NULL, "
               "time REAL NOT NULL)")
    db.execute("CREATE INDEX IF NOT EXISTS alert_claims_time ON alert_claims(time)")


def _v9_to_v10(db: sqlite3.Connection) -> None:
    # Herd (issue 16): indicators served to and pulled from other hives;
    # the tables and their SQL live in hive.herd._intel.
    from .herd._intel import herd_tables

    herd_tables(db)


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v1_to_v2, _v2_to_v3, _v3_to_v4, _v4_to_v5, _v5_to_v6, _v6_to_v7, _v7_to_v8, _v8_to_v9, _v9_to_v10]
"""``MIGRATIONS[n - 1]`` turns a store of schema version ``n`` into ``n + 1``."""
SCHEMA_VERSION = 1 + len(MIGRATIONS)


_INSERT_EVENTS = "INSERT INTO events(agent, time, kind, pid, verdict, body) VALUES(?,?,?,?,?,?)"


class Sqlite:
    """The store's SQLite file at ``path``."""

    migrations = MIGRATIONS

    def __init__(self, path: Path, *, readonly: bool, checkpoint_by_hand: bool) -> None:
        self.path = path
        self.readonly = readonly
        self.checkpoint_by_hand = checkpoint_by_hand

    def prepare_location(self) -> str:
        """Check or make what the store needs before connecting; '' or why not."""
        if self.readonly and not self.path.exists():
            return f"no hive store at {self.path}"
        try:
            if not self.readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"cannot open the store {self.path}: {e.strerror}"
        return ""

    def connect(self) -> sqlite3.Connection:
        if self.readonly:
            return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10, isolation_level=None,
                                   check_same_thread=False)
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA synchronous=FULL")
        if self.checkpoint_by_hand:
            # The writer never stops for a checkpoint: that copy-back
            # and its fsync were the long tail of commit latency.
            # ``checkpoint()`` runs it beside the writer instead.
            db.execute("PRAGMA wal_autocheckpoint=0")
        return db

    def open_schema(self, store: Store) -> int:
        """Make the schema if the file has none; its version."""
        db = store.db
        if self.readonly:
            return _version(db)
        if not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone():
            # Before any table exists: lets retention give pages back to the disk.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            with store._tx() as tx:
                for statement in _SCHEMA_V1.split(";"):
                    if statement.strip():
                        tx.execute(statement)
                tx.execute("INSERT OR IGNORE INTO meta VALUES('schema', '1')")
            return 1
        # An existing store of this version is opened without
        # writing, so that a restart works on a full disk.
        return _version(db)

    def migrate(self, store: Store, version: int) -> None:
        with store._tx() as tx:
            MIGRATIONS[version - 1](tx)
            tx.execute("UPDATE meta SET value=? WHERE key='schema'", (str(version + 1),))

    def prepare(self, store: Store, batches: Sequence) -> None:
        """Nothing to make ahead of a write."""

    @staticmethod
    def begin_write(db: sqlite3.Connection) -> None:
        """Nothing: SQLite has one writer at a time, so rows reach each table in commit order."""

    @staticmethod
    def insert_events(db: sqlite3.Connection, rows: list[tuple]) -> None:
        db.executemany(_INSERT_EVENTS, rows)

    @staticmethod
    def lock_marks(db: sqlite3.Connection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        # BEGIN IMMEDIATE holds the one write lock: nothing else can move a mark.
        marks = {}
        for key in keys:
            r = db.execute("SELECT seq FROM streams WHERE agent=? AND stream=?", key).fetchone()
            marks[key] = r[0] if r else 0
        return marks

    @staticmethod
    def retain_events(store: Store, cutoff: int) -> int:
        """Delete the events before ``cutoff`` (Unix ns); how many."""
        return store._delete("events", "time < ?", (cutoff,))

    @staticmethod
    def bound_size(store: Store, max_bytes: int) -> int:
        """Delete the oldest events until the store is under ``max_bytes``; how many."""
        deleted = 0
        while store.size() > max_bytes:
            # A twentieth at a time: close to the bound without many passes.
            chunk = max(100, store.count_events() // 20)
            with store._tx() as db:
                n = db.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY time LIMIT ?)", (chunk,)
                ).rowcount
            deleted += n
            if n == 0:
                break
            store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            store.db.execute("PRAGMA incremental_vacuum")
        return deleted

    @staticmethod
    def checkpoint(store: Store) -> None:
        store.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def write_mark(self, store: Store) -> tuple[int, ...]:
        # The database and WAL files' times and sizes: a stat, not a query.
        mark: list[int] = []
        for f in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                st = os.stat(f)
                mark += [st.st_mtime_ns, st.st_size]
            except OSError:
                mark += [0, 0]
        return tuple(mark)

    @staticmethod
    def size(store: Store) -> int:
        page_count = store._read("PRAGMA page_count", ())[0][0]
        freelist = store._read("PRAGMA freelist_count", ())[0][0]
        page_size = store._read("PRAGMA page_size", ())[0][0]
        return (page_count - freelist) * page_size


def _version(db: sqlite3.Connection) -> int:
    r = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    try:
        return int(r[0]) if r else 1
    except ValueError:
        raise sqlite3.DatabaseError(f"schema version {r[0]!r} is not a number") from None
