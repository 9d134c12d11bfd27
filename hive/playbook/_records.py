"""The response audit trail in the hive's store: the ``commands`` table (one
row per action, its latest state) and the ``audit`` table (one row per
decision, refusal, approval and result, never changed).

Written against the store's connection (``Store.db``, SQLite's dialect:
hive._sql), so the playbook actor and the CLI share one store with the rest
of the hive.  The
``result`` column holds JSON: ``text`` (the outcome in words), ``data`` (what
the agent returned), and what the engine needs to take the action back
after a restart (``mode``, ``ttl``, ``wait``, ``reverts``, and ``by``/``why``
for an operator's decision).

An operator approves or denies through the table: ``approve()`` moves a row
from ``pending_approval`` to ``approved`` (``deny()``: ``denied``); the
playbook actor polls ``requested()`` and hands the decision to the engine,
which then records what it did (``sent``, ``queued``, ``rejected``).  An
operator's own action (``run()``) is a new row in state ``requested``, checked
here against the agents table and the hive's addresses, then checked again
and sent by the engine as an approved step would be.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from .._sql import DB_ERRORS, Transaction
from ._actions import check_manual
from ._engine import Action, AuditRecord, Decisions, new_action_id
from ._errors import RecordsError

_json = msgspec.json.Encoder()
_unjson = msgspec.json.Decoder()
_COLUMNS = "id, agent, action, params, state, created, updated, expires, playbook, alert, reason, result"


def _result_json(a: Action, **extra: Any) -> str:
    doc = {"text": a.result, "data": a.data, "mode": a.mode, "ttl": a.ttl, "wait": a.wait,
           "reverts": a.reverts, **extra}
    return _json.encode(doc).decode()


def _doc(text: str | None, default: dict[str, Any]) -> dict[str, Any]:
    """A JSON object from a column; ``default`` if it is not one (a row an
    older hive wrote, or damage): one bad row must not stop the reader."""
    if not text:
        return {}
    try:
        doc = _unjson.decode(text)
    except Exception:  # noqa: BLE001  (msgspec's errors, RecursionError on deep nesting, ...)
        return default
    return doc if isinstance(doc, dict) else default


def _action(row: Sequence) -> Action:
    result = _doc(row[11], {"text": row[11]})
    return Action(
        id=row[0], agent=row[1], action=row[2], params=_doc(row[3], {}),
        state=row[4], created=row[5], updated=row[6], expires=row[7], playbook=row[8], alert=row[9],
        reason=row[10], result=result.get("text", ""), data=result.get("data") or {},
        mode=result.get("mode", "auto"), ttl=result.get("ttl", 0.0), wait=result.get("wait", 0.0),
        reverts=result.get("reverts", ""),
    )


class Records:
    """The commands and audit tables, on a store's connection in autocommit
    mode (as ``Store`` opens it: ``Store.db``)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def _tx(self) -> Transaction:
        return Transaction(self.db, lambda reason: RecordsError(f"cannot write the response records: {reason}"))

    def write(self, d: Decisions) -> None:
        """The actions created or changed and the audit records of one
        decision, in one transaction."""
        if not (d.actions or d.audit):
            return
        latest = {a.id: a for a in d.actions}  # an action changed twice: its last state
        with self._tx() as db:
            db.executemany(
                f"INSERT INTO commands({_COLUMNS}) VALUES(?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET state=excluded.state, updated=excluded.updated, "
                "expires=excluded.expires, reason=excluded.reason, result=excluded.result, params=excluded.params",
                [(a.id, a.agent, a.action, _json.encode(a.params).decode(), a.state, a.created, a.updated,
                  a.expires, a.playbook, a.alert, a.reason, _result_json(a)) for a in latest.values()])
            db.executemany(
                "INSERT INTO audit(time, actor, what, why, result, detail) VALUES(?,?,?,?,?,?)",
                [(r.time, r.actor, r.what, r.why, r.result, _json.encode(r.detail).decode()) for r in d.audit])

    # ---- reading ---------------------------------------------------------------------

    def actions(self, *, states: Iterable[str] = (), action_id: str = "", limit: int = 100) -> list[Action]:
        """Newest first."""
        where, args = [], []
        states = list(states)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += states
        if action_id:
            where.append("id = ?")
            args.append(action_id)
        sql = f"SELECT {_COLUMNS} FROM commands" + (" WHERE " + " AND ".join(where) if where else "")
        return [_action(r) for r in self._read(sql + " ORDER BY created DESC LIMIT ?", [*args, limit])]

    def audit(self, *, action_id: str = "", limit: int = 100) -> list[AuditRecord]:
        """Newest first; ``action_id`` keeps the records about that action."""
        sql = "SELECT time, actor, what, why, result, detail FROM audit"
        args: list[Any] = []
        if action_id:
            sql += " WHERE json_extract(detail, '$.action') = ?"
            args.append(action_id)
        rows = self._read(sql + " ORDER BY id DESC LIMIT ?", [*args, limit])
        return [AuditRecord(r[0], r[1], r[2], r[3], r[4], _doc(r[5], {})) for r in rows]

    def open_actions(self) -> list[Action]:
        """What the engine takes back after a restart."""
        return self.actions(states=("pending_approval", "approved", "denied", "queued", "sent", "active"),
                            limit=1_000_000)

    def requested(self) -> list[tuple[str, str, str, str]]:
        """Operators' decisions and actions not yet carried out, oldest
        first: (id, approve|deny|run, by, why)."""
        verbs = {"approved": "approve", "denied": "deny", "requested": "run"}
        out = []
        for row in self._read(f"SELECT {_COLUMNS} FROM commands WHERE state IN ('approved', 'denied', 'requested') "
                              "ORDER BY created", ()):
            doc = _doc(row[11], {})
            out.append((row[0], verbs[row[4]], doc.get("by", "operator"), doc.get("why", "")))
        return out

    def agent_pids(self) -> dict[str, frozenset[int]]:
        """The agents an operator may act on (enrolled, not revoked), each with its own pid."""
        rows = self._read("SELECT id, pid FROM agents WHERE revoked IS NULL", ())
        return {agent: frozenset([pid] if pid else []) for agent, pid in rows}

    # ---- operators ---------------------------------------------------------------------

    def approve(self, action_id: str, by: str) -> Action:
        return self._request(action_id, "approved", by, "")

    def deny(self, action_id: str, by: str, why: str = "") -> Action:
        return self._request(action_id, "denied", by, why)

    def run(self, action: str, agent: str, params: dict[str, Any], *, ttl: float = 0.0, by: str, why: str = "",
            alert: str = "", protected: Iterable[str] = ()) -> Action:
        """Record an operator's own ``action`` on ``agent`` for the playbook
        actor to send; ValueError (one line) if it must not be sent: an
        action not run by hand, bad parameters, an unknown or revoked agent,
        a guardrail (``protected``: the hive's own addresses)."""
        params = check_manual(action, agent, params, ttl, agents=self.agent_pids(), protected=protected)
        now = time.time()
        a = Action(id=new_action_id(), agent=agent, action=action, params=params, state="requested", created=now,
                   updated=now, alert=alert, reason=f"run by {by}" + (f": {why}" if why else ""), mode="manual",
                   ttl=ttl, result=f"requested by {by}; the hive sends it within a second or two")
        with self._tx() as db:
            db.execute(f"INSERT INTO commands({_COLUMNS}) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
                       (a.id, a.agent, a.action, _json.encode(a.params).decode(), a.state, a.created, a.updated,
                        a.expires, a.playbook, a.alert, a.reason, _result_json(a, by=by, why=why)))
            db.execute("INSERT INTO audit(time, actor, what, why, result, detail) VALUES(?,?,?,?,?,?)",
                       (now, f"operator:{by}", f"run {a.describe()}", why or "run by hand", "requested",
                        _json.encode({"action": a.id, "alert": alert, "agent": agent, "mode": "manual"}).decode()))
        return a

    def _request(self, action_id: str, state: str, by: str, why: str) -> Action:
        now = time.time()
        with self._tx() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM commands WHERE id=?", (action_id,)).fetchone()
            if row is None:
                raise RecordsError(f"no action {action_id!r}")
            a = _action(row)
            if a.state != "pending_approval":
                raise RecordsError(f"action {action_id} is {a.state}, not awaiting approval")
            verb = "approved" if state == "approved" else "denied"
            a.result = f"{verb} by {by}; the hive carries it out within a second or two"
            db.execute("UPDATE commands SET state=?, updated=?, result=? WHERE id=?",
                       (state, now, _result_json(a, by=by, why=why), action_id))
            db.execute("INSERT INTO audit(time, actor, what, why, result, detail) VALUES(?,?,?,?,?,?)",
                       (now, f"operator:{by}", f"{verb[:-1]} {a.describe()}", why or verb, "requested",
                        _json.encode({"action": action_id, "alert": a.alert, "agent": a.agent}).decode()))
        a.state = state
        return a

    def _read(self, sql: str, args: Sequence) -> list[tuple]:
        try:
            return self.db.execute(sql, args).fetchall()
        except DB_ERRORS as e:
            raise RecordsError(f"cannot read the response records: {e}") from None

