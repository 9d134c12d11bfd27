"""Herd's tables in the hive's store, and the reads and writes on them.

Out: ``herd_facts`` (what this hive learned, folded per file hash, address
or command line) and ``herd_objects`` (the signed STIX objects served over
TAXII, each with the time it was added and a sequence number for paging).
In: ``herd_intel`` (one entry per pattern, whoever sent it),
``herd_sources`` (which peer sent it, as which indicator, until when),
``herd_pushed`` (the blocks sent to agents for an enforced entry) and
``herd_state`` (cursors: how far the commands, incidents, events and each
peer have been read).

Written against the store's connection (``Store.db``, SQLite or PostgreSQL) in autocommit
mode, like ``hive.playbook.Records``; plain SQL with ``?`` placeholders.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._sql import DB_ERRORS, Transaction
from .._store import _decode_alert, _decode_event, _decode_incident
from ._stix import MATCHABLE, Fact, HerdError, Pulled, RuleTexts, build, fact_of_cmdline, fact_of_command, fact_of_isolation, fact_of_rule, identity


def herd_tables(db: Any, real: str = "REAL", integer: str = "INTEGER") -> None:
    """The schema step that adds Herd's tables (issue 16), in SQLite's
    types or those given (PostgreSQL's REAL is single precision)."""
    db.execute("CREATE TABLE IF NOT EXISTS herd_facts(kind TEXT NOT NULL, value TEXT NOT NULL, "
               f"first {real} NOT NULL, last {real} NOT NULL, count {integer} NOT NULL, confidence {integer} NOT NULL, "
               "what TEXT NOT NULL, refs TEXT NOT NULL, PRIMARY KEY(kind, value))")
    db.execute(f"CREATE TABLE IF NOT EXISTS herd_objects(id TEXT PRIMARY KEY, seq {integer} NOT NULL UNIQUE, "
               f"added {integer} NOT NULL, until {real} NOT NULL, body TEXT NOT NULL)")
    db.execute("CREATE INDEX IF NOT EXISTS herd_objects_added ON herd_objects(added, seq)")
    db.execute("CREATE TABLE IF NOT EXISTS herd_intel(key TEXT PRIMARY KEY, kind TEXT NOT NULL, "
               f"value TEXT NOT NULL, first {real} NOT NULL, updated {real} NOT NULL, revoked {real}, "
               "revoked_by TEXT NOT NULL DEFAULT '')")
    db.execute("CREATE TABLE IF NOT EXISTS herd_sources(key TEXT NOT NULL, peer TEXT NOT NULL, "
               f"indicator TEXT NOT NULL, trust TEXT NOT NULL, confidence {integer} NOT NULL, "
               f"valid_until {real} NOT NULL, pulled {real} NOT NULL, revoked {integer} NOT NULL DEFAULT 0, "
               "PRIMARY KEY(key, peer))")
    db.execute("CREATE INDEX IF NOT EXISTS herd_sources_indicator ON herd_sources(indicator)")
    db.execute("CREATE TABLE IF NOT EXISTS herd_pushed(key TEXT NOT NULL, agent TEXT NOT NULL, "
               f"command TEXT NOT NULL, at {real} NOT NULL, until {real} NOT NULL, PRIMARY KEY(key, agent))")
    db.execute("CREATE TABLE IF NOT EXISTS herd_state(name TEXT PRIMARY KEY, value TEXT NOT NULL)")


TRUSTS = ("observe", "enforce")
_PUBLISHED = ("quarantine_file", "block_exec", "block_connect", "isolate_host", "isolate_container")


@dataclass
class Source:
    peer: str
    indicator: str
    trust: str
    confidence: int
    valid_until: float
    pulled: float
    revoked: bool


@dataclass
class Entry:
    """One pattern, whoever sent it."""

    key: str
    kind: str
    value: str
    first: float
    updated: float
    revoked: float | None
    revoked_by: str
    sources: list[Source] = field(default_factory=list)

    def live(self, now: float) -> list[Source]:
        """Its sources still in force (not revoked, not expired)."""
        if self.revoked is not None:
            return []
        return [s for s in self.sources if not s.revoked and s.valid_until > now]

    def enforced(self, now: float) -> Source | None:
        """The enforce source in force that lasts longest, if any."""
        live = [s for s in self.live(now) if s.trust == "enforce"]
        return max(live, key=lambda s: s.valid_until) if live else None


@dataclass
class PullReport:
    peer: str
    accepted: int = 0
    new: int = 0
    revoked: int = 0
    capped: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0


class Intel:
    def __init__(self, db: Any) -> None:
        self.db = db

    def _tx(self) -> Transaction:
        return Transaction(self.db, lambda reason: HerdError(f"cannot write the herd tables: {reason}"))

    def _read(self, sql: str, args: Sequence = ()) -> list[tuple]:
        try:
            return self.db.execute(sql, tuple(args)).fetchall()
        except DB_ERRORS as e:
            raise HerdError(f"cannot read the herd tables: {e}") from None

    def state(self, name: str, default: str = "") -> str:
        rows = self._read("SELECT value FROM herd_state WHERE name=?", (name,))
        return rows[0][0] if rows else default

    @staticmethod
    def _set_state(db: Any, name: str, value: str) -> None:
        db.execute("INSERT INTO herd_state(name, value) VALUES(?,?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                   (name, value))

    # ---- out: what this hive learned, as signed STIX -----------------------------------

    def publish(self, key: Any, *, now: float, share_for: float, hive_name: str = "",
                rules: RuleTexts | None = None) -> int:
        """Fold the response actions and incidents written since the last
        call into facts and (re)sign the objects of each fact that changed;
        how many facts changed.  ``rules``: where the Sigma rules that fired
        in incidents are read (None: they are not shared)."""
        after_cmd = float(self.state("published_commands", "0"))
        after_inc = float(self.state("published_incidents", "0"))
        facts: list[Fact] = []
        rows = self._read(
            "SELECT c.id, c.action, c.state, c.params, c.result, c.created, c.updated, c.alert, c.reason, "
            "coalesce(a.incident, '') FROM commands c LEFT JOIN alerts a ON a.id = c.alert "
            f"WHERE c.action IN ({','.join('?' * len(_PUBLISHED))}) AND c.updated > ? ORDER BY c.updated",
            (*_PUBLISHED, after_cmd))
        for cid, action, state, params, result, created, updated, alert, reason, incident in rows:
            after_cmd = max(after_cmd, updated)
            if action.startswith("isolate"):
                found = self._isolation_facts(cid, state, alert, updated)
            else:
                f = fact_of_command(action, state, _obj(params), _obj(_obj(result).get("data")), created=created,
                                    updated=updated, action_id=cid, alert=alert, reason=reason)
                found = [f] if f is not None else []
            for f in found:
                f.incidents = [incident] if incident else []
                facts.append(f)
        for inc_id, updated, body in self._read(
                "SELECT id, updated, body FROM incidents WHERE updated > ? ORDER BY updated LIMIT 1000", (after_inc,)):
            after_inc = max(after_inc, updated)
            try:
                inc = _decode_incident(body)
            except Exception:  # noqa: BLE001  (a row an older hive wrote: skipped, never fatal)
                continue
            facts += self._incident_facts(inc, rules)
        if not facts:
            with self._tx() as db:
                self._set_state(db, "published_commands", repr(after_cmd))
                self._set_state(db, "published_incidents", repr(after_inc))
            return 0
        changed: dict[tuple[str, str], Fact] = {}
        with self._tx() as db:
            for f in facts:
                k = (f.kind, f.value)
                known = changed.get(k) or self._fact(db, f.kind, f.value)
                if known is None:
                    changed[k] = f
                else:
                    known.fold(f)
                    changed[k] = known
            seq = db.execute("SELECT coalesce(max(seq), 0) FROM herd_objects").fetchone()[0]
            added = int(now * 1e6)
            if seq == 0:
                seq += 1
                ident = identity(key, hive_name, now)
                db.execute("INSERT INTO herd_objects(id, seq, added, until, body) VALUES(?,?,?,?,?) "
                           "ON CONFLICT(id) DO NOTHING", (ident["id"], seq, added, 1e300, json.dumps(ident)))
            for f in changed.values():
                refs = json.dumps({"actions": f.actions, "alerts": f.alerts, "incidents": f.incidents,
                                   "text": f.text, "title": f.title})
                db.execute("INSERT INTO herd_facts(kind, value, first, last, count, confidence, what, refs) "
                           "VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(kind, value) DO UPDATE SET first=excluded.first, "
                           "last=excluded.last, count=excluded.count, confidence=excluded.confidence, "
                           "what=excluded.what, refs=excluded.refs",
                           (f.kind, f.value, f.first, f.last, f.count, f.confidence, f.what, refs))
                for obj in build(f, key, now=now, share_for=share_for, hive_name=hive_name):
                    seq += 1
                    # A changed object is added again: peers asking for what
                    # was added after their last pull get its new version.
                    db.execute("INSERT INTO herd_objects(id, seq, added, until, body) VALUES(?,?,?,?,?) "
                               "ON CONFLICT(id) DO UPDATE SET seq=excluded.seq, added=excluded.added, "
                               "until=excluded.until, body=excluded.body",
                               (obj["id"], seq, added, f.last + share_for, json.dumps(obj)))
            self._set_state(db, "published_commands", repr(after_cmd))
            self._set_state(db, "published_incidents", repr(after_inc))
        return len(changed)

    def _isolation_facts(self, action_id: str, state: str, alert_id: str, when: float) -> list[Fact]:
        """The public addresses the alert that isolated a host connected to."""
        if state not in ("done", "active", "reverted") or not alert_id:
            return []
        rows = self._read("SELECT body FROM alerts WHERE id=?", (alert_id,))
        try:
            alert = _decode_alert(rows[0][0]) if rows else None
        except Exception:  # noqa: BLE001
            alert = None
        out = []
        for e in alert.events if alert is not None else ():
            if type(e).__struct_config__.tag == "connect":
                f = fact_of_isolation(e.address, time=when, action_id=action_id, alert=alert_id)
                if f is not None:
                    out.append(f)
        return out

    def _incident_facts(self, inc: Any, rules: RuleTexts | None) -> list[Fact]:
        out = []
        ids = list(inc.alerts)[:64]
        if not ids:
            return out
        for alert_id, body in self._read(f"SELECT id, body FROM alerts WHERE id IN ({','.join('?' * len(ids))})", ids):
            try:
                alert = _decode_alert(body)
            except Exception:  # noqa: BLE001
                continue
            text = rules.get(alert.rule_id) if rules is not None and not alert.rule_id.startswith("herd") else None
            if text:
                f = fact_of_rule(alert.rule_id, text, alert.title, time=alert.time / 1e9, alert=alert_id,
                                 incident=inc.id)
                if f is not None:
                    out.append(f)
            for e in alert.events:
                if getattr(e, "cmdline", "") and type(e).__struct_config__.tag == "exec":
                    f = fact_of_cmdline(e.cmdline, time=(e.time or alert.time) / 1e9, alert=alert_id, incident=inc.id)
                    if f is not None:
                        out.append(f)
        return out

    @staticmethod
    def _fact(db: Any, kind: str, value: str) -> Fact | None:
        r = db.execute("SELECT first, last, count, confidence, what, refs FROM herd_facts WHERE kind=? AND value=?",
                       (kind, value)).fetchone()
        if r is None:
            return None
        refs = _obj(r[5])
        return Fact(kind, value, r[0], r[1], r[2], r[3], r[4], list(refs.get("actions", [])),
                    list(refs.get("alerts", [])), list(refs.get("incidents", [])), str(refs.get("text", "")),
                    str(refs.get("title", "")))

    def served(self, *, added_after: int | None = None, after_seq: int = 0, limit: int = 100,
               ) -> tuple[list[tuple[int, int, dict]], bool]:
        """([(seq, added µs, object)], more) in the order they were added."""
        where, args = ["seq > ?"], [after_seq]
        if added_after is not None:
            where.append("added > ?")
            args.append(added_after)
        rows = self._read(f"SELECT seq, added, body FROM herd_objects WHERE {' AND '.join(where)} "
                          "ORDER BY seq LIMIT ?", (*args, limit + 1))
        return [(s, a, json.loads(b)) for s, a, b in rows[:limit]], len(rows) > limit

    def prune(self, *, now: float, keep_expired: float) -> int:
        """Forget what expired ``keep_expired`` seconds ago or more: served
        objects and their facts, and pulled entries none of whose sources
        is in force (their blocks ran out with them); how many rows went."""
        gone = 0
        with self._tx() as db:
            gone += db.execute("DELETE FROM herd_objects WHERE until < ?", (now - keep_expired,)).rowcount
            gone += db.execute("DELETE FROM herd_facts WHERE last < ?", (now - keep_expired,)).rowcount
            stale = [k for (k,) in db.execute(
                "SELECT key FROM herd_intel i WHERE coalesce(revoked, 1e300) < ? OR NOT EXISTS (SELECT 1 FROM "
                "herd_sources s WHERE s.key = i.key AND s.valid_until >= ?)", (now - keep_expired, now - keep_expired))]
            for k in stale:
                for table in ("herd_sources", "herd_pushed", "herd_intel"):
                    gone += db.execute(f"DELETE FROM {table} WHERE key=?", (k,)).rowcount
        return gone

    # ---- in: what peers sent --------------------------------------------------------

    def take(self, peer: str, trust: str, pulled: Iterable[Pulled], *, now: float) -> PullReport:
        """Keep what ``peer`` sent: one entry per pattern, this peer's source
        on it added or updated (a STIX ``revoked`` withdraws the source)."""
        report = PullReport(peer)
        with self._tx() as db:
            for p in pulled:
                key = f"{p.kind}:{p.value}"
                report.accepted += 1
                report.capped += p.capped
                if db.execute("SELECT 1 FROM herd_intel WHERE key=?", (key,)).fetchone() is None:
                    if p.revoked:
                        continue
                    db.execute("INSERT INTO herd_intel(key, kind, value, first, updated) VALUES(?,?,?,?,?)",
                               (key, p.kind, p.value, now, now))
                    report.new += 1
                else:
                    db.execute("UPDATE herd_intel SET updated=? WHERE key=?", (now, key))
                report.revoked += p.revoked
                db.execute("INSERT INTO herd_sources(key, peer, indicator, trust, confidence, valid_until, pulled, "
                           "revoked) VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(key, peer) DO UPDATE SET "
                           "indicator=excluded.indicator, trust=excluded.trust, confidence=excluded.confidence, "
                           "valid_until=excluded.valid_until, pulled=excluded.pulled, revoked=excluded.revoked",
                           (key, peer, p.indicator, trust, p.confidence, p.valid_until, now, int(p.revoked)))
        return report

    def entries(self, *, key: str = "") -> list[Entry]:
        """Every entry (or the one ``key``), newest first, with its sources."""
        where, args = ("WHERE key=?", (key,)) if key else ("", ())
        out: dict[str, Entry] = {}
        for r in self._read(f"SELECT key, kind, value, first, updated, revoked, revoked_by FROM herd_intel {where} "
                            "ORDER BY updated DESC", args):
            out[r[0]] = Entry(*r)
        if out:
            for r in self._read(f"SELECT key, peer, indicator, trust, confidence, valid_until, pulled, revoked "
                                f"FROM herd_sources {where} ORDER BY peer", args):
                if r[0] in out:
                    out[r[0]].sources.append(Source(r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7])))
        return list(out.values())

    def revoke(self, ident: str, *, by: str, now: float) -> Entry:
        """Revoke the entry named by its key (``sha256:...``) or by the id of
        any peer's indicator on it; HerdError if there is none."""
        with self._tx() as db:
            row = db.execute("SELECT key FROM herd_intel WHERE key=?", (ident,)).fetchone() or \
                db.execute("SELECT key FROM herd_sources WHERE indicator=?", (ident,)).fetchone()
            if row is None:
                raise HerdError(f"no indicator {ident[:100]!r} (immune-node intel list shows them)")
            if db.execute("UPDATE herd_intel SET revoked=?, revoked_by=?, updated=? WHERE key=? AND revoked IS NULL",
                          (now, by, now, row[0])).rowcount == 0:
                raise HerdError(f"{row[0]} was revoked already")
            db.execute("INSERT INTO audit(time, actor, what, why, result, detail) VALUES(?,?,?,?,?,?)",
                       (now, by, f"revoke herd indicator {row[0]}", "revoked by hand", "revoked",
                        json.dumps({"key": row[0]})))
        return self.entries(key=row[0])[0]

    # ---- enforcing -----------------------------------------------------------------

    def pushed(self) -> dict[tuple[str, str], tuple[str, float]]:
        """(entry key, agent) -> (command id, until) of the blocks sent."""
        return {(k, a): (c, u) for k, a, c, u in self._read("SELECT key, agent, command, until FROM herd_pushed")}

    def block_rules(self) -> dict[str, str]:
        """The rule name each agent gave a block the herd sent (from its
        result) -> the entry key: a refused event names that rule."""
        out = {}
        for key, result in self._read("SELECT p.key, c.result FROM herd_pushed p JOIN commands c ON c.id = p.command"):
            rule = _obj(_obj(result).get("data")).get("rule")
            if isinstance(rule, str) and rule:
                out[rule] = key
        return out

    def agents(self) -> list[str]:
        """Agents a block may be sent to: enrolled and not revoked."""
        return [a for (a,) in self._read("SELECT id FROM agents WHERE revoked IS NULL ORDER BY id")]

    def push(self, entry: Entry, source: Source, agent: str, *, now: float, max_ttl: float) -> str:
        """Ask the playbook actor to send ``agent`` the block ``entry`` calls
        for (a ``requested`` command in mode ``herd``, checked and sent as an
        operator's action is), lasting until the indicator expires; its id."""
        from ..playbook._engine import Action, new_action_id
        from ..playbook._records import _COLUMNS, _result_json

        ttl = max(1.0, min(source.valid_until - now, max_ttl))
        if entry.kind == "sha256":
            action, params = "block_exec", {"sha256": entry.value}
        else:
            action, params = "block_connect", {"address": entry.value}
        why = f"herd: indicator {source.indicator} of peer {source.peer} ({entry.key})"
        a = Action(id=new_action_id(), agent=agent, action=action, params=params, state="requested", created=now,
                   updated=now, reason=why, mode="herd", ttl=round(ttl, 3),
                   result="requested by herd; the hive sends it within a second or two")
        by = f"herd:{source.peer}"
        with self._tx() as db:
            db.execute(f"INSERT INTO commands({_COLUMNS}) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
                       (a.id, a.agent, a.action, json.dumps(a.params), a.state, a.created, a.updated, a.expires,
                        a.playbook, a.alert, a.reason, _result_json(a, by=by, why=why)))
            db.execute("INSERT INTO audit(time, actor, what, why, result, detail) VALUES(?,?,?,?,?,?)",
                       (now, by, f"run {a.describe()}", why, "requested",
                        json.dumps({"action": a.id, "agent": agent, "mode": "herd", "indicator": source.indicator,
                                    "peer": source.peer})))
            db.execute("INSERT INTO herd_pushed(key, agent, command, at, until) VALUES(?,?,?,?,?) "
                       "ON CONFLICT(key, agent) DO UPDATE SET command=excluded.command, at=excluded.at, "
                       "until=excluded.until", (entry.key, agent, a.id, now, now + ttl))
        return a.id

    def lift(self, key: str, agent: str, *, now: float, why: str) -> str | None:
        """Ask for the block sent for ``key`` to ``agent`` to be lifted (its
        entry was revoked); the unblock's id, or None if it is not active."""
        from ..playbook._engine import Action, new_action_id
        from ..playbook._records import _COLUMNS, _result_json

        row = self._read("SELECT p.command, c.state, c.result FROM herd_pushed p JOIN commands c ON c.id = p.command "
                         "WHERE p.key=? AND p.agent=?", (key, agent))
        with self._tx() as db:
            db.execute("DELETE FROM herd_pushed WHERE key=? AND agent=?", (key, agent))
            if not row or row[0][1] != "active":
                return None
            rule = _obj(_obj(row[0][2]).get("data")).get("rule")
            if not isinstance(rule, str) or not rule:
                return None
            a = Action(id=new_action_id(), agent=agent, action="unblock", params={"rule": rule}, state="requested",
                       created=now, updated=now, reason=why, mode="herd", reverts=row[0][0],
                       result="requested by herd; the hive sends it within a second or two")
            db.execute(f"INSERT INTO commands({_COLUMNS}) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
                       (a.id, a.agent, a.action, json.dumps(a.params), a.state, a.created, a.updated, a.expires,
                        a.playbook, a.alert, a.reason, _result_json(a, by="herd", why=why)))
        return a.id

    # ---- matching events ------------------------------------------------------------

    def events_after(self, position: int, limit: int = 2000) -> tuple[list[tuple[int, Any]], int]:
        """([(id, event)] of execs and connects after ``position``, the new position)."""
        rows = self._read("SELECT id, kind, body FROM events WHERE id > ? ORDER BY id LIMIT ?", (position, limit))
        out = []
        for rid, kind, body in rows:
            position = rid
            if kind in ("exec", "connect"):
                try:
                    out.append((rid, _decode_event(body)))
                except Exception:  # noqa: BLE001  (an undecodable row: the store's readers skip it too)
                    continue
        return out, position

    def marks(self) -> tuple:
        """What moved since the last look: the latest command and incident
        change, event, pulled entry change; the agents and the sources."""
        return tuple(self._read(
            "SELECT (SELECT coalesce(max(updated), 0) FROM commands), "
            "(SELECT coalesce(max(updated), 0) FROM incidents), (SELECT coalesce(max(id), 0) FROM events), "
            "(SELECT coalesce(max(updated), 0) FROM herd_intel), "
            "(SELECT count(*) FROM agents WHERE revoked IS NULL), (SELECT count(*) FROM herd_sources)")[0])

    def last_event(self) -> int:
        return self._read("SELECT coalesce(max(id), 0) FROM events")[0][0]

    def set_state(self, name: str, value: str) -> None:
        with self._tx() as db:
            self._set_state(db, name, value)

    def raise_alerts(self, alerts: Sequence[Any]) -> None:
        from .._store import Store

        if alerts:
            with self._tx() as db:
                Store._write_records(db, alerts, [])


def matchable(entries: Iterable[Entry], now: float) -> dict[str, tuple[Entry, list[Source]]]:
    """key -> (entry, live sources) of the entries in force an event can match."""
    out = {}
    for e in entries:
        live = e.live(now)
        if live and e.kind in MATCHABLE:
            out[e.key] = (e, live)
    return out


def _obj(text: Any) -> dict:
    if isinstance(text, dict):
        return text
    if not isinstance(text, str) or not text:
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}

