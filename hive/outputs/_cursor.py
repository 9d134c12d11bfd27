"""Where each output stands in the store: one position per output and
source (``alerts``: the alerts table's rowid, ``events``: the events
table's id), kept in the ``outputs`` table and moved only after the
receiver took everything up to it, so delivery is at-least-once across
restarts of the hive and of the receiver.

Written against the store's connection (``Store.db``, SQLite's dialect:
hive._sql) like the playbook's records.  Rows reach each table in commit
order on SQLite (one writer at a time), so a position never passes a row a
reader cannot see yet; on PostgreSQL, where hive nodes draw ids from one
sequence but commit in their own order, a fetch goes no further than the
connection's ``horizon`` (hive._postgres)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from .._sql import DB_ERRORS, Transaction
from .._store import StoreError, _decode_alert, _decode_event
from ._ecs import alert_doc, event_doc

SOURCES = {"alerts": ("alerts",), "events": ("events",), "both": ("alerts", "events")}
"""What an output forwards (its ``what``) -> the sources it reads."""
_TABLE = {"alerts": ("alerts", "rowid"), "events": ("events", "id")}


@dataclass
class Record:
    source: str
    position: int
    time: int
    """When it happened (Unix ns)."""
    doc: dict[str, Any]
    """Its ECS document."""


class Cursors:
    """The ``outputs`` table on a store's connection (in autocommit mode)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def _tx(self) -> Transaction:
        return Transaction(self.db, lambda reason: StoreError(f"output cursors: {reason}"))

    def open(self, name: str, what: str, *, backfill: bool = False) -> dict[str, int]:
        """The positions of output ``name``; a source it never had starts at
        the end of its table (what arrives from now on), or with
        ``backfill`` at its start (everything the store still holds)."""
        with self._tx() as db:
            for source in SOURCES[what]:
                table, key = _TABLE[source]
                start = 0 if backfill else db.execute(f"SELECT coalesce(max({key}), 0) FROM {table}").fetchone()[0]
                db.execute("INSERT OR IGNORE INTO outputs(name, source, position, updated) VALUES(?,?,?,?)",
                           (name, source, start, time.time()))
            return dict(db.execute("SELECT source, position FROM outputs WHERE name=?", (name,)).fetchall())

    def advance(self, name: str, positions: dict[str, int]) -> None:
        """Move ``name`` to ``positions`` (never back)."""
        with self._tx() as db:
            db.executemany("UPDATE outputs SET position=CASE WHEN position < ? THEN ? ELSE position END, updated=? "
                           "WHERE name=? AND source=?",
                           [(p, p, time.time(), name, s) for s, p in positions.items()])

    def fetch(self, source: str, after: int, limit: int) -> list[Record]:
        """Up to ``limit`` records of ``source`` after ``after``, oldest
        first.  A row that cannot be decoded comes as a record with an empty
        ``doc``: skipped and counted, its position still passes."""
        table, key = _TABLE[source]
        horizon = getattr(self.db, "horizon", None)
        try:
            upto = horizon(table, key, after) if horizon is not None else 2**63 - 1
        except DB_ERRORS as e:
            raise StoreError(f"output cursors: {e}") from None
        if source == "alerts":
            rows = self._read(
                "SELECT a.rowid, a.body, a.incident, a.count, a.last_seen, coalesce(g.hostname, '') FROM alerts a "
                "LEFT JOIN agents g ON g.id = a.agent WHERE a.rowid > ? AND a.rowid <= ? ORDER BY a.rowid LIMIT ?",
                (after, upto, limit))
        else:
            rows = self._read(
                "SELECT e.id, e.body, coalesce(g.hostname, '') FROM events e "
                "LEFT JOIN agents g ON g.id = e.agent WHERE e.id > ? AND e.id <= ? ORDER BY e.id LIMIT ?",
                (after, upto, limit))
        out = []
        for row in rows:
            try:
                out.append(self._record(source, row))
            except (msgspec.DecodeError, msgspec.ValidationError):
                out.append(Record(source, row[0], 0, {}))
        return out

    @staticmethod
    def _record(source: str, row: tuple) -> Record:
        if source == "alerts":
            position, body, incident, count, last_seen, host = row
            alert = _decode_alert(body)
            alert.incident, alert.count, alert.last_seen = incident, count, last_seen
            return Record(source, position, alert.time or last_seen, alert_doc(alert, host))
        position, body, host = row
        event = _decode_event(body)
        return Record(source, position, event.time, event_doc(event, host))

    def backlog(self, positions: dict[str, int]) -> int:
        """Records stored after ``positions``: what waits (from the newest
        row's key, so it costs nothing however long the backlog)."""
        return sum(max(0, self._read(f"SELECT coalesce(max({_TABLE[s][1]}), 0) FROM {_TABLE[s][0]}", ())[0][0] - p)
                   for s, p in positions.items())

    def _read(self, sql: str, args: Iterable) -> list[tuple]:
        try:
            return self.db.execute(sql, tuple(args)).fetchall()
        except DB_ERRORS as e:
            raise StoreError(f"output cursors: {e}") from None
