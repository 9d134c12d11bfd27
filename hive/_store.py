"""The hive's store: embedded SQLite (hive._sqlite), or PostgreSQL
(hive._postgres) for hive nodes sharing one database.

A plain object; the store actor drives the event writes, other actors and
the CLI open their own ``Store`` on the same location.  Everything the rest
of the hive needs from a database goes through these methods, or through
``Store.db`` in SQLite's dialect (hive._sql says what other backends
translate); the SQL that differs between backends lives in their modules.
``Store(location)`` picks the backend: a ``postgresql://`` URL, or a path
(``sqlite:///PATH`` or a plain one) to a SQLite file.

Events are stored once per (agent, stream, seq): a batch is written only if
its seq is the next one for its stream, in the same transaction that moves
the stream's high-water mark, so redelivery after any crash stores nothing
twice.  On PostgreSQL the transaction locks the streams' rows first, so
hive nodes writing the same database at once still store each batch once.

A ``Store`` object may be used from several threads at once (the store actor
writes, retains and checkpoints from worker threads): each thread gets its
own connection, made on first use.

Errors come in two kinds.  :class:`StoreDataError`: this data cannot be
stored (a value out of the database's range, a constraint), and trying again
will not help.  Any other :class:`StoreError` (a full disk, a read-only file,
a lock held too long, a database server restarting) may pass: nothing was
written, try again later.

The schema carries its version in ``meta``; opening a store older than
this code migrates it step by step (each step one transaction), and a store
newer than this code is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

import wire

from hive.correlate import Incident

from ._messages import ALERT_EVENTS, AgentSeen, Ingest, Repeat, Stored
from ._sql import DB_ERRORS, Transaction
from ._sqlite import _SCHEMA_V1, MIGRATIONS, SCHEMA_VERSION, Sqlite

__all__ = ["ALERT_BYTES", "MIGRATIONS", "SCHEMA_VERSION", "_SCHEMA_V1", "AgentRow", "BundleRow", "Ingested",
           "Store", "StoreDataError", "StoreError", "Transaction", "is_postgres"]


ALERT_BYTES = 1 << 20
"""An alert's stored body stays under this whatever its repeats' events weigh."""


class StoreError(Exception):
    """The store cannot do what was asked; the message says why."""


class StoreDataError(StoreError):
    """This data cannot be stored (a value the database refuses): trying again
    will not help, unlike any other :class:`StoreError`."""


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
class TriageRow:
    """One triage of an incident: a verdict (``state`` done) or a failure."""

    id: int
    incident: str
    time: float
    state: str
    """``done`` (``verdict`` holds the model's answer) or ``failed`` (``reason`` says why)."""
    requested_by: str
    """``auto`` (the hive, for a new incident) or who asked (``operator:NAME``, ``cli``)."""
    model: str
    severity: str
    confidence: float
    verdict: dict
    """severity, techniques, explanation, playbook, confidence; {} when failed."""
    reason: str
    seconds: float
    calls: int
    """HTTP requests made to the model (0: none, e.g. over budget)."""


_TRIAGE_COLUMNS = "id, incident, time, state, requested_by, model, severity, confidence, verdict, reason, seconds, calls"


def _triage_row(r: tuple) -> TriageRow:
    return TriageRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]) if r[8] else {}, r[9],
                     r[10], r[11])


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


def is_postgres(location: str | os.PathLike) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


class Changes:
    """Whether the store may have changed since the last look: its files'
    times and sizes moved (any process wrote), or ``recheck`` seconds
    passed (two writes within one tick of the file clock leave the same
    time).  Pollers ask this, a stat, before a query on a worker thread,
    so an idle hive does not wake a thread every tick for each of them."""

    def __init__(self, store: "Store", recheck: float = 5.0) -> None:
        self.store, self.recheck = store, recheck
        self._mark: object = None
        self._at = -recheck

    def due(self) -> bool:
        mark, now = self.store.write_mark(), time.monotonic()
        if mark is not None and mark == self._mark and now - self._at < self.recheck:
            return False
        self._mark, self._at = mark, now
        return True


class Store:
    def __init__(self, location: str | os.PathLike, *, readonly: bool = False,
                 checkpoint_by_hand: bool = False) -> None:
        """``location``: a ``postgresql://`` URL, or a SQLite file (a path, or
        ``sqlite:///PATH``).  ``readonly``: never write (and refuse a store
        that does not exist yet)."""
        self.location = location
        """As given."""
        self.readonly = readonly
        self.checkpoint_by_hand = checkpoint_by_hand
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[tuple[threading.Thread, Any]] = []
        self.backend: Any
        if is_postgres(location):
            from ._postgres import Postgres, display

            self.path: Path | str = display(str(location))
            """What messages call the store: its file, or its URL without the password."""
            self.backend = Postgres(str(location), readonly=readonly)
        else:
            if isinstance(location, str) and location.startswith("sqlite://"):
                location = location.removeprefix("sqlite://")
            self.path = Path(location)
            self.backend = Sqlite(self.path, readonly=readonly, checkpoint_by_hand=checkpoint_by_hand)
        problem = self.backend.prepare_location()
        if problem:
            raise StoreError(problem)
        try:
            self._open_schema()
        except BaseException:
            self.close()
            raise

    def _open_schema(self) -> None:
        try:
            version = self.backend.open_schema(self)
        except DB_ERRORS as e:
            raise StoreError(f"cannot open the store {self.path}: {e}") from None
        if version > SCHEMA_VERSION:
            raise StoreError(f"the store {self.path} has schema version {version}, newer than this "
                             f"immune-node's {SCHEMA_VERSION}: run the newer immune-node that wrote it")
        if version < SCHEMA_VERSION and self.readonly:
            raise StoreError(f"the store {self.path} has schema version {version}, older than this "
                             f"immune-node's {SCHEMA_VERSION}: start the hive once to migrate it")
        try:
            for step in range(version, SCHEMA_VERSION):
                self.backend.migrate(self, step)
        except DB_ERRORS as e:
            raise StoreError(f"cannot migrate the store {self.path}: {e}") from None

    @property
    def db(self) -> Any:
        """This thread's connection to the store: a sqlite3 connection, or one
        that speaks the same dialect (see hive._sql)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    def _connect(self) -> Any:
        try:
            db = self.backend.connect()
        except DB_ERRORS as e:
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
            self.backend.prepare(self, batches)
        except DB_ERRORS as e:
            raise StoreError(f"store {self.path}: {e}") from None
        try:
            with self._tx() as db:
                return self._ingest(db, batches, alerts, incidents)
        except StoreDataError:
            pass
        out = Ingested()
        for one in [([a], []) for a in alerts] + [([], [i]) for i in incidents]:
            try:
                with self._tx() as db:
                    self.backend.begin_write(db)
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

    def _ingest(self, db: Any, batches: Sequence[Ingest], alerts: Sequence[wire.Alert | Repeat],
                incidents: Sequence[Incident]) -> Ingested:
        out = Ingested()
        rows: list[tuple] = []
        self.backend.begin_write(db)
        out.dropped += self._write_records(db, alerts, incidents)
        # Every stream's mark, locked until the commit (in one order, so two
        # writers of the same streams cannot deadlock).
        marks = self.backend.lock_marks(db, sorted({(b.agent, b.stream) for b in batches if b.seq}))
        counts: dict[tuple[str, str], int] = {}
        for b in batches:
            if b.seq == 0:  # made by the hive itself: no stream to dedupe
                rows.extend(self._rows(b))
                out.stored.append(b)
                continue
            key = (b.agent, b.stream)
            last = marks[key]
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
        self.backend.insert_events(db, rows)
        self._set_marks(db, marks, counts)
        return out

    def _refuse(self, db: Any, b: Ingest, reason: str) -> Ingested:
        """Store a notice in place of batch ``b`` (next in its stream: only a
        batch to be written can fail) and move the stream's mark past it."""
        self.backend.begin_write(db)
        last = self.backend.lock_marks(db, [(b.agent, b.stream)])[(b.agent, b.stream)]
        if b.seq != last + 1:  # another hive node moved the stream meanwhile
            return Ingested(outcomes=[Stored(agent=b.agent, stream=b.stream, seq=last,
                                             outcome="duplicate" if b.seq <= last else "gap")])
        notice = Ingest(agent=b.agent, events=[wire.Notice(
            time=time.time_ns(), what="batch_refused", count=len(b.events), verdict="audit",
            detail=f"stream {b.stream} seq {b.seq}: {len(b.events)} events not stored: {reason}"[:4096])])
        self.backend.insert_events(db, list(self._rows(notice)))
        self._set_marks(db, {(b.agent, b.stream): b.seq}, {})
        return Ingested(outcomes=[Stored(agent=b.agent, stream=b.stream, seq=b.seq, outcome="refused")],
                        stored=[notice])

    @staticmethod
    def _set_marks(db: Any, marks: dict[tuple[str, str], int],
                   counts: dict[tuple[str, str], int]) -> None:
        db.executemany(
            "INSERT INTO streams(agent, stream, seq, events) VALUES(?,?,?,?) "
            "ON CONFLICT(agent, stream) DO UPDATE SET seq=excluded.seq, events=streams.events+excluded.events",
            [(a, s, seq, counts.get((a, s), 0)) for (a, s), seq in marks.items()],
        )

    @staticmethod
    def _write_records(db: Any, alerts: Sequence[wire.Alert | Repeat],
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
    def _count_repeat(db: Any, r: Repeat) -> bool:
        """Count ``r`` on its alert, keeping its events within ALERT_EVENTS and
        ALERT_BYTES; False if the alert is not in the store."""
        row = db.execute("SELECT count, body FROM alerts WHERE id=?", (r.alert,)).fetchone()
        if row is None:
            return False
        db.execute("UPDATE alerts SET count=count+?, last_seen=CASE WHEN last_seen < ? THEN ? ELSE last_seen END "
                   "WHERE id=?", (r.count, r.time, r.time, r.alert))
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

    def incident(self, incident_id: str) -> Incident | None:
        rows = self._read("SELECT body FROM incidents WHERE id=?", (incident_id,))
        return _decode_incident(rows[0][0]) if rows else None

    def incident_alerts(self, incident_id: str, limit: int = 200) -> list[wire.Alert]:
        """The stored alerts filed under ``incident_id``, oldest first."""
        alerts = []
        for body, count, last_seen in self._read("SELECT body, count, last_seen FROM alerts WHERE incident=? "
                                                 "ORDER BY time LIMIT ?", (incident_id, limit)):
            alert = _decode_alert(body)
            alert.incident, alert.count, alert.last_seen = incident_id, count, last_seen
            alerts.append(alert)
        return alerts

    # -- AI triage -------------------------------------------------------------

    def request_triage(self, incident_id: str, by: str) -> None:
        """Ask the hive's ai actor for a new triage of ``incident_id`` (once
        until it is done, whoever asks again)."""
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM incidents WHERE id=?", (incident_id,)).fetchone():
                raise StoreError(f"no incident {incident_id!r}")
            db.execute("INSERT OR IGNORE INTO triage_requests(incident, time, requested_by) VALUES(?,?,?)",
                       (incident_id, time.time(), by))

    def triage_requested(self, incident_id: str) -> bool:
        """A triage of ``incident_id`` was asked for and is not done yet."""
        return bool(self._read("SELECT 1 FROM triage_requests WHERE incident=?", (incident_id,)))

    def triage_requests(self, limit: int = 10) -> list[tuple[str, str]]:
        """(incident, who asked) of triages asked for and not done, oldest first."""
        return self._read("SELECT incident, requested_by FROM triage_requests ORDER BY time LIMIT ?", (limit,))

    def untriaged(self, *, settled: float, since: float, limit: int = 10) -> list[str]:
        """Incidents changed between ``since`` and ``settled`` (wall clock)
        that were never triaged, oldest change first."""
        return [i for (i,) in self._read(
            "SELECT id FROM incidents WHERE updated >= ? AND updated <= ? AND id NOT IN "
            "(SELECT incident FROM triage) ORDER BY updated LIMIT ?", (since, settled, limit))]

    def add_triage(self, incident_id: str, *, state: str, requested_by: str, model: str = "",
                   verdict: dict | None = None, reason: str = "", seconds: float = 0.0, calls: int = 0) -> int:
        """Store one triage of ``incident_id`` (and close its request, if
        any); its id, which grows with every triage stored."""
        verdict = verdict or {}
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO triage(incident, time, state, requested_by, model, severity, confidence, verdict, "
                "reason, seconds, calls) VALUES(?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                (incident_id, time.time(), state, requested_by, model, verdict.get("severity", ""),
                 float(verdict.get("confidence", 0.0)), json.dumps(verdict) if verdict else "", reason,
                 seconds, calls))
            row_id = cur.fetchone()[0]  # RETURNING: both backends say it so
            db.execute("DELETE FROM triage_requests WHERE incident=?", (incident_id,))
            return row_id

    def triage(self, incident_id: str, limit: int = 20) -> list[TriageRow]:
        """The triages of ``incident_id``, newest first."""
        return [_triage_row(r) for r in self._read(
            f"SELECT {_TRIAGE_COLUMNS} FROM triage WHERE incident=? ORDER BY id DESC LIMIT ?", (incident_id, limit))]

    def triage_after(self, after: int, limit: int = 100) -> list[TriageRow]:
        """Triages stored after id ``after``, oldest first (a reader's cursor)."""
        return [_triage_row(r) for r in self._read(
            f"SELECT {_TRIAGE_COLUMNS} FROM triage WHERE id > ? ORDER BY id LIMIT ?", (after, limit))]

    def triage_mark(self) -> int:
        """The id of the latest triage stored (0: none)."""
        return self._read("SELECT coalesce(max(id), 0) FROM triage", ())[0][0]

    def triage_calls(self, since: float) -> list[float]:
        """When each call to the model since ``since`` was made (a triage's
        calls are counted at its time): what the budget has spent."""
        return [t for t, calls in self._read("SELECT time, calls FROM triage WHERE time >= ? AND calls > 0",
                                             (since,)) for _ in range(calls)]

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

    def claim_alert(self, alert: str, node: str) -> bool:
        """Take ``alert`` for ``node``'s playbook: True for the first node to
        ask, False for every later one (another node acts on it)."""
        with self._tx() as db:
            return db.execute("INSERT INTO alert_claims(alert, node, time) VALUES(?,?,?) ON CONFLICT(alert) DO NOTHING",
                              (alert, node, time.time())).rowcount == 1

    def stream_marks_of(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The last seq stored of each (agent, stream) in ``keys`` that has
        one, read a few hundred agents at a time."""
        wanted = set(keys)
        agents = sorted({a for a, _ in wanted})
        out: dict[tuple[str, str], int] = {}
        for i in range(0, len(agents), 500):
            chunk = agents[i:i + 500]
            rows = self._read(f"SELECT agent, stream, seq FROM streams WHERE agent IN ({','.join('?' * len(chunk))})",
                              chunk)
            out.update(((a, st), seq) for a, st, seq in rows if (a, st) in wanted)
        return out

    def stream_mark(self, agent: str, stream: str) -> int:
        """The last seq stored for (agent, stream); 0 if none."""
        rows = self._read("SELECT seq FROM streams WHERE agent=? AND stream=?", (agent, stream))
        return rows[0][0] if rows else 0

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
        try:
            deleted = {"events": self.backend.retain_events(self, int(cutoff * 1e9))}
            deleted.update(
                alerts=self._delete("alerts", "time < ?", (int(cutoff * 1e9),), key="rowid"),
                incidents=self._delete("incidents", "updated < ?", (cutoff,), key="rowid"),
                commands=self._delete("commands", f"state IN ({states}) AND updated < ?",
                                      (*finished_commands, cutoff), key="rowid"),
                audit=self._delete("audit", "time < ?", (cutoff,)),
                triage=self._delete("triage", "time < ?", (cutoff,)),
                alert_claims=self._delete("alert_claims", "time < ?", (cutoff,), key="rowid"),
                tokens=self._delete("tokens", "expires < ?", (now,), key="rowid"))
            deleted["events"] += self.backend.bound_size(self, max_bytes)
        except DB_ERRORS as e:
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
        """Copy SQLite's WAL back into the database without blocking the writer."""
        try:
            self.backend.checkpoint(self)
        except DB_ERRORS as e:
            raise StoreError(f"store {self.path}: checkpoint failed: {e}") from None

    def write_mark(self) -> tuple[int, ...] | None:
        """Something that moves when any process writes the store (see
        ``Changes``), or None where no cheap look exists (PostgreSQL)."""
        return self.backend.write_mark(self)

    def size(self) -> int:
        """Bytes the store takes (what ``retain``'s ``max_bytes`` bounds)."""
        return self.backend.size(self)

    # -- agents, keys and tokens -------------------------------------------------

    def enroll(self, agent: str, public_key: str) -> None:
        """Register ``public_key`` as ``agent`` (replacing an earlier key)."""
        with self._tx() as db:
            self._enroll(db, agent, public_key)

    @staticmethod
    def _enroll(db: Any, agent: str, public_key: str) -> None:
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

    def enrolled_keys(self) -> dict[str, str]:
        """Every enrolled, unrevoked key, with its agent's id."""
        return dict(self._read("SELECT public_key, id FROM agents WHERE public_key IS NOT NULL AND revoked IS NULL",
                               ()))

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
        ones, in one transaction.  Returns the agents seen that were
        offline before."""
        return self.presence(sightings, offline)[0]

    def presence(self, sightings: Iterable[AgentSeen], offline: Iterable[str] = (),
                 unseen_since: float | None = None) -> tuple[set[str], list[str]]:
        """:meth:`agents_seen` for the registry (once a second): with
        ``unseen_since``, an agent is marked offline only if no sign of life
        of it was stored since then, for hive nodes sharing this store each
        see only the agents connected to them.  Returns (the agents seen that
        were offline before, those marked offline now)."""
        came_back: set[str] = set()
        gone: list[str] = []
        with self._tx() as db:
            for m in sightings:
                self._seen(db, m, came_back)
            for a in offline:
                if unseen_since is None:
                    n = db.execute("UPDATE agents SET online=0 WHERE id=?", (a,)).rowcount
                else:
                    n = db.execute("UPDATE agents SET online=0 WHERE id=? AND online=1 "
                                   "AND coalesce(last_seen, 0) < ?", (a, unseen_since)).rowcount
                if n:
                    gone.append(a)
        return came_back, gone

    @staticmethod
    def _seen(db: Any, m: AgentSeen, came_back: set[str]) -> None:
        agent, when = m.agent, m.time / 1e9
        r = db.execute("SELECT online FROM agents WHERE id=?", (agent,)).fetchone()
        if not (r and r[0]):
            came_back.add(agent)
        db.execute(
            "INSERT INTO agents(id, first_seen, last_seen, online) VALUES(?,?,?,1) "
            "ON CONFLICT(id) DO UPDATE SET last_seen=excluded.last_seen, online=1, "
            "first_seen=coalesce(agents.first_seen, excluded.first_seen)",
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

    def online_states(self) -> list[tuple[str, bool, int]]:
        """(id, online, pid) of every agent: what the playbook follows each
        second.  Whole rows of 10,000 agents took half a core to read each
        time on PostgreSQL (psycopg decodes every value in Python)."""
        return [(r[0], bool(r[1]), r[2] or 0) for r in self._read("SELECT id, online, pid FROM agents", ())]

    def addresses(self) -> list[tuple[str, list[str]]]:
        """(id, addresses) of every agent: what host correlation reads each
        second (see :meth:`presence`)."""
        return [(r[0], json.loads(r[1])) for r in self._read("SELECT id, addresses FROM agents", ())]

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
    def _audit(db: Any, actor: str, what: str, detail: str, why: str = "") -> None:
        db.execute("INSERT INTO audit(time, actor, what, why, result, detail) VALUES(?,?,?,?,?,?)",
                   (time.time(), actor or "?", what, why, "done", detail))

    @staticmethod
    def _bump_fleet(db: Any) -> None:
        db.execute("INSERT INTO meta(key, value) VALUES('fleet_serial', '1') "
                   "ON CONFLICT(key) DO UPDATE SET value=CAST(CAST(meta.value AS INTEGER) + 1 AS TEXT)")

    # -- plumbing ------------------------------------------------------------------

    def _read(self, sql: str, args: Sequence) -> list[tuple]:
        try:
            return self.db.execute(sql, args).fetchall()
        except DB_ERRORS as e:
            raise StoreError(f"store {self.path}: {e}") from None
