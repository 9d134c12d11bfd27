"""The store as a plain object: exactly-once batches, agents, tokens, retention,
alerts and their repeats, migrations."""

import sqlite3
import time

import msgspec
import pytest

import wire
from hive import ALERT_EVENTS, SCHEMA_VERSION, AgentSeen, Ingest, Repeat, Store, StoreError
from hive._store import _SCHEMA_V1, ALERT_BYTES, MIGRATIONS, is_postgres


def batch(agent, seq, n=3, stream="s1", t0=None):
    t0 = t0 or time.time_ns()
    return Ingest(agent=agent, stream=stream, seq=seq,
                  events=[wire.Exec(time=t0 + i, pid=seq * 100 + i, filename="/bin/true") for i in range(n)])


@pytest.fixture
def store(store_location):
    s = Store(store_location)
    yield s
    s.close()


def test_only_the_next_batch_of_a_stream_is_stored(store):
    out = store.ingest([batch("a", 1), batch("a", 2), batch("a", 2), batch("a", 4), batch("b", 1)]).outcomes
    assert [(o.agent, o.seq, o.outcome) for o in out] == [
        ("a", 1, "stored"), ("a", 2, "stored"), ("a", 2, "duplicate"), ("a", 2, "gap"), ("b", 1, "stored")]
    assert store.count_events("a") == 6 and store.count_events("b") == 3
    # A redelivery after a crash stores nothing twice.
    again = store.ingest([batch("a", 1), batch("a", 2), batch("a", 3)]).outcomes
    assert [o.outcome for o in again] == ["duplicate", "duplicate", "stored"]
    assert store.count_events("a") == 9
    # A new spool (new stream) starts at 1 again.
    assert store.ingest([batch("a", 1, stream="s2")]).outcomes[0].outcome == "stored"


def test_the_marks_of_many_streams_in_one_call(store):
    """A clustered router learns thousands of new agents' streams at once."""
    store.ingest([batch(f"a{i}", 1, stream=f"s{i % 2}") for i in range(1200)])
    keys = [(f"a{i}", f"s{i % 2}") for i in range(0, 1200, 3)] + [("a1", "other"), ("nobody", "s0")]
    assert store.stream_marks_of(keys) == {(f"a{i}", f"s{i % 2}"): 1 for i in range(0, 1200, 3)}


def test_marks_survive_reopening(store_location):
    s = Store(store_location)
    s.ingest([batch("a", 1), batch("a", 2)])
    s.close()
    s = Store(store_location)
    assert s.stream_marks() == {("a", "s1"): 2}
    assert s.ingest([batch("a", 2)]).outcomes[0].outcome == "duplicate"


def test_events_query_filters_and_orders_newest_first(store):
    store.ingest([batch("a", 1, n=5), Ingest(agent="b", stream="x", seq=1, events=[wire.Open(time=1, path="/etc/shadow")])])
    evs = store.events(agent="a", kind="exec", limit=3)
    assert [e.pid for e in evs] == [104, 103, 102]
    assert all(e.agent == "a" for e in evs)
    assert [e.path for e in store.events(kind="open")] == ["/etc/shadow"]
    assert store.events(since=time.time_ns() + 10**12) == []


def test_hive_made_events_are_never_deduplicated(store):
    n = Ingest(agent="a", events=[wire.Notice(what="agent_offline")])
    store.ingest([n, n])
    assert [e.what for e in store.events(kind="notice")] == ["agent_offline", "agent_offline"]


def test_enroll_authorize_revoke(store):
    store.enroll("web-1", "K" * 40)
    assert store.authorize("K" * 40) == "web-1"
    with pytest.raises(StoreError, match="already enrolled as agent 'web-1'"):
        store.enroll("web-2", "K" * 40)
    store.revoke("web-1")
    assert store.authorize("K" * 40) is None and store.revoked() == {"web-1"}
    with pytest.raises(StoreError, match="no enrolled agent 'nope'"):
        store.revoke("nope")


def test_tokens_are_one_time_and_expire(store):
    t = store.new_token()
    store.redeem_token(t, "db-1", "A" * 40)
    assert store.authorize("A" * 40) == "db-1"
    with pytest.raises(StoreError, match="token already used"):
        store.redeem_token(t, "db-2", "B" * 40)
    with pytest.raises(StoreError, match="unknown token"):
        store.redeem_token("made-up", "db-2", "B" * 40)
    old = store.new_token(ttl=-1)
    with pytest.raises(StoreError, match="token expired"):
        store.redeem_token(old, "db-2", "B" * 40)
    t2 = store.new_token()
    with pytest.raises(StoreError, match="already enrolled with another key"):
        store.redeem_token(t2, "db-1", "C" * 40)


def test_agent_seen_tracks_hello_heartbeat_and_comebacks(store):
    assert store.agent_seen("a", 100.0, hello=wire.Hello(agent="a", hostname="h", addresses=["10.0.0.1"]),
                            address="127.0.0.1") is True
    assert store.agent_seen("a", 101.0, heartbeat=wire.Heartbeat(spooled=5, dropped=7)) is False
    row = store.agents()[0]
    assert (row.hostname, row.addresses, row.spooled, row.dropped, row.online) == (
        "h", ["10.0.0.1", "127.0.0.1"], 5, 7, True)
    store.mark_offline("a")
    assert store.agent_seen("a", 200.0) is True
    # The narrow reads of what playbooks and correlation follow each second say the same.
    store.agent_seen("b", 201.0, hello=wire.Hello(agent="b", pid=42))
    store.mark_offline("b")
    assert sorted(store.online_states()) == [("a", True, 0), ("b", False, 42)]
    assert sorted(store.addresses()) == [("a", ["10.0.0.1", "127.0.0.1"]), ("b", [])]


def test_retention_by_age_and_by_size(store):
    old = time.time_ns() - 40 * 86400 * 10**9
    store.ingest([batch("a", 1, n=10, t0=old), batch("a", 2, n=10)])
    assert store.retain(max_age=30 * 86400, max_bytes=1 << 40)["events"] == 10
    assert store.count_events() == 10
    if is_postgres(store.location):
        return  # PostgreSQL bounds the size by whole days: test_store_pg
    big = [Ingest(agent="b", stream="s", seq=i + 1, events=[
        wire.Exec(time=time.time_ns() + j, argv=["x" * 200] * 5) for j in range(500)]) for i in range(10)]
    store.ingest(big)
    before = store.size()
    store.retain(max_age=30 * 86400, max_bytes=before // 2)
    assert store.size() <= before // 2
    newest = store.events(limit=1)[0]
    assert newest.agent == "b"  # the oldest went first


def test_readonly_store_refuses_a_missing_file(tmp_path):
    with pytest.raises(StoreError, match="no hive store at"):
        Store(tmp_path / "none.db", readonly=True)


def test_ingest_and_retention_run_at_once_from_two_threads(store):
    import threading

    errors = []

    def ingest():
        try:
            for seq in range(1, 201):
                store.ingest([batch("a", seq, n=20)])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def retain():
        try:
            for _ in range(200):
                store.retain(max_age=86400, max_bytes=1 << 40)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=ingest), threading.Thread(target=retain)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count_events("a") == 200 * 20


def test_a_refused_enrollment_leaves_the_token_unused(store):
    store.enroll("db-1", "A" * 40)
    t = store.new_token()
    with pytest.raises(StoreError, match="already enrolled as agent 'db-1'"):
        store.redeem_token(t, "db-2", "A" * 40)  # that key belongs to db-1
    store.redeem_token(t, "db-2", "B" * 40)
    assert store.authorize("B" * 40) == "db-2"


def huge_pid_batch(agent, seq, stream="s1"):
    # msgspec does not check constraints when a Struct is made in code, only
    # at decoding: this is what a store could get if the wire let it through.
    return Ingest(agent=agent, stream=stream, seq=seq, events=[wire.Exec(time=time.time_ns(), pid=2**63)])


def test_a_batch_sqlite_refuses_is_replaced_by_a_notice_and_holds_back_nothing(store):
    good = [batch("good", 1), batch("good", 2)]
    done = store.ingest([good[0], huge_pid_batch("bad", 1), good[1], batch("bad", 2),
                         Ingest(agent="bad", events=[wire.Exec(pid=2**64)])])  # the hive's own, dropped
    assert [(o.agent, o.seq, o.outcome) for o in done.outcomes] == [
        ("good", 1, "stored"), ("bad", 1, "refused"), ("good", 2, "stored"), ("bad", 2, "stored")]
    assert [(b.agent, b.seq) for b, _ in done.refused] == [("bad", 1)]
    assert "too large" in done.refused[0][1] or "Overflow" in done.refused[0][1]
    assert done.dropped == 1
    assert store.count_events("good") == 6
    notice = store.events(agent="bad", kind="notice")[0]
    assert (notice.what, notice.count, notice.agent) == ("batch_refused", 1, "bad")
    assert "stream s1 seq 1" in notice.detail
    assert len(store.events(agent="bad", kind="exec")) == 3  # batch 2, after the refused one
    assert store.stream_marks() == {("good", "s1"): 2, ("bad", "s1"): 2}
    # Detection gets what was stored, the notice in place of the refused batch.
    assert [(b.agent, type(b.events[0])) for b in done.stored][:3] == [
        ("good", wire.Exec), ("bad", wire.Notice), ("good", wire.Exec)]
    # A redelivery of the refused batch is a duplicate now.
    assert store.ingest([huge_pid_batch("bad", 1)]).outcomes[0].outcome == "duplicate"


def test_a_bad_alert_is_dropped_and_the_rest_written(store):
    ok = wire.Alert(id="a1", rule_id="r", title="t", agent="x", time=time.time_ns())
    bad = wire.Alert(id="a2", rule_id="r", title="t", agent="x", time=2**64)
    done = store.ingest([batch("x", 1)], alerts=[ok, bad])
    assert done.dropped == 1 and [o.outcome for o in done.outcomes] == ["stored"]
    assert [a.id for a in store.alerts()] == ["a1"]


def test_an_alert_is_claimed_by_one_node_only(store):
    assert store.claim_alert("a1", "node1")
    assert not store.claim_alert("a1", "node2")
    assert not store.claim_alert("a1", "node1")
    assert store.claim_alert("a2", "node2")


def test_retention_reaches_every_table(store):
    from hive.correlate import Incident
    from hive.playbook._engine import CLOSED_STATES

    now = time.time()
    old, new = now - 40 * 86400, now - 86400
    store.ingest([batch("a", 1, t0=int(old * 1e9)), batch("a", 2, t0=int(new * 1e9))],
                 alerts=[wire.Alert(id="old", rule_id="r", title="t", time=int(old * 1e9)),
                         wire.Alert(id="new", rule_id="r", title="t", time=int(new * 1e9))],
                 incidents=[Incident(id="i1", title="t", opened=1.0, updated=1.0)])
    db = store.db
    db.execute("UPDATE incidents SET updated=?", (old,))
    db.execute("INSERT INTO incidents(id, updated, body) VALUES('i2', ?, ?)", (new, b""))
    for i, (state, updated) in enumerate([("done", old), ("failed", new), ("active", old), ("pending_approval", old)]):
        db.execute("INSERT INTO commands(id, agent, action, params, state, created, updated) VALUES(?,?,?,?,?,?,?)",
                   (f"c{i}", "a", "kill_process", "{}", state, updated, updated))
    db.execute("INSERT INTO audit(time, actor, what) VALUES(?, 'engine', 'old'), (?, 'engine', 'new')", (old, new))
    store.add_triage("i1", state="failed", requested_by="auto", reason="old")
    store.add_triage("i2", state="failed", requested_by="auto", reason="new")
    db.execute("UPDATE triage SET time=? WHERE reason='old'", (old,))
    store.new_token(ttl=-10)
    live = store.new_token()
    assert store.claim_alert("old", "node1") and store.claim_alert("new", "node1")
    db.execute("UPDATE alert_claims SET time=? WHERE alert='old'", (old,))
    deleted = store.retain(max_age=30 * 86400, max_bytes=1 << 40, finished_commands=CLOSED_STATES)
    assert deleted == {"events": 3, "alerts": 1, "incidents": 1, "commands": 1, "audit": 1, "tokens": 1,
                       "triage": 1, "alert_claims": 1}
    assert [r.reason for r in store.triage("i2")] == ["new"]
    assert [r[0] for r in db.execute("SELECT alert FROM alert_claims")] == ["new"]
    assert [a.id for a in store.alerts()] == ["new"]
    assert sorted(r[0] for r in db.execute("SELECT id FROM commands")) == ["c1", "c2", "c3"]
    assert [r[0] for r in db.execute("SELECT what FROM audit")] == ["new"]
    store.redeem_token(live, "z", "Z" * 40)  # the live token stayed


def test_a_store_of_an_older_schema_is_migrated_and_a_newer_one_refused(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA_V1)
    db.execute("INSERT INTO meta VALUES('schema', '1')")
    db.execute("INSERT INTO incidents VALUES('i1', 123.4, x'')")  # a monotonic clock value, in version 1
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 1, older than .* start the hive once"):
        Store(path, readonly=True)
    s = Store(path)
    assert s.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == str(SCHEMA_VERSION)
    assert s.db.execute("SELECT updated FROM incidents").fetchone()[0] > time.time() - 60
    assert s.db.execute("SELECT 1 FROM sqlite_master WHERE name='audit_time'").fetchone()
    s.db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION + 1),))
    s.close()
    for readonly in (False, True):
        with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this immune-node's"):
            Store(path, readonly=readonly)


def test_a_version_2_store_gets_the_agents_wire_version_and_keeps_its_data(tmp_path):
    from hive._store import _hash_token

    path = tmp_path / "v2.db"
    # A store as the immune-node of schema version 2 left it.
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(_SCHEMA_V1)
    MIGRATIONS[0](db)
    db.execute("INSERT INTO meta VALUES('schema', '2')")
    db.execute("INSERT INTO agents(id, public_key, enrolled, hostname, pid, online, last_seen) "
               "VALUES('a', ?, 1.0, 'web', 42, 1, 100.0)", ("A" * 40,))
    db.execute("INSERT INTO streams VALUES('a', 's1', 2, 6)")
    db.executemany("INSERT INTO events(agent, time, kind, pid, verdict, body) VALUES('a', ?, 'exec', 1, '', x'')",
                   [(t,) for t in range(6)])
    db.execute("INSERT INTO tokens(hash, created, expires) VALUES(?, ?, ?)",
               (_hash_token("secret"), time.time(), time.time() + 3600))
    db.close()
    with pytest.raises(StoreError, match="schema version 2, older than .* start the hive once"):
        Store(path, readonly=True)
    s = Store(path)
    assert s.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == str(SCHEMA_VERSION)
    [row] = s.agents()
    assert (row.id, row.public_key, row.hostname, row.pid, row.online, row.wire_version) == (
        "a", "A" * 40, "web", 42, True, None)  # None: no Hello said one since
    assert s.count_events("a") == 6 and s.stream_marks() == {("a", "s1"): 2}
    assert s.authorize("A" * 40) == "a"
    s.agent_seen("a", 200.0, hello=wire.Hello(agent="a", wire_version=1))
    assert s.agents()[0].wire_version == 1
    s.redeem_token("secret", "b", "B" * 40)  # the token was kept too
    s.close()


def test_many_agents_signs_of_life_in_one_transaction(store):
    from hive import AgentSeen

    store.mark_offline("b")
    came_back = store.agents_seen([AgentSeen(agent="a", time=10**9, hello=wire.Hello(agent="a", pid=42)),
                                   AgentSeen(agent="b", time=2 * 10**9)])
    assert came_back == {"a", "b"}
    assert store.agents_seen([AgentSeen(agent="a", time=3 * 10**9)], offline=["b"]) == set()
    rows = {r.id: r for r in store.agents()}
    assert rows["a"].pid == 42 and rows["a"].online and not rows["b"].online
    assert rows["a"].last_seen == 3.0


# -- repeats counted, not dropped (issue 12) ------------------------------------------


def run(pid: int, t: int, cwd: str = "/root") -> wire.Exec:
    return wire.Exec(agent="web1", time=t, pid=pid, filename="/usr/bin/curl", cwd=cwd,
                     cmdline="curl -s http://x/a.sh")


def alert(id: str = "a1", t: int = 1_000) -> wire.Alert:
    return wire.Alert(id=id, rule_id="r1", title="Download", level="high", agent="web1", time=t,
                      events=[run(100, t)])


def test_a_repeat_raises_the_count_and_last_seen_and_keeps_its_event(store):
    second = run(101, 2_000, cwd="/tmp")  # another step, same program and command line
    out = store.ingest([], [alert(), Repeat(alert="a1", time=2_000, events=[second])])  # one commit
    assert out.dropped == 0
    (a,) = store.alerts()
    assert (a.count, a.time, a.last_seen) == (2, 1_000, 2_000)
    assert [e.pid for e in a.events] == [100, 101] and a.events[1].cwd == "/tmp"
    store.ingest([], [Repeat(alert="a1", time=1_500, events=[run(102, 1_500)])])  # late: last_seen stays
    (a,) = store.alerts()
    assert (a.count, a.last_seen, len(a.events)) == (3, 2_000, 3)
    assert store.alert_hits() == {"r1": 3}


def test_an_alert_keeps_its_first_events_and_counts_the_rest(store):
    store.ingest([], [alert()])
    store.ingest([], [Repeat(alert="a1", time=2_000 + n, events=[run(200 + n, 2_000 + n)]) for n in range(100)])
    (a,) = store.alerts()
    assert a.count == 101 and a.last_seen == 2_099
    assert [e.pid for e in a.events] == [100, *range(200, 200 + ALERT_EVENTS - 1)]


def test_a_repeat_standing_for_many_hits_counts_them_all(store):
    store.ingest([], [alert(), Repeat(alert="a1", time=3_000, count=500, events=[run(101, 2_000)])])
    (a,) = store.alerts()
    assert (a.count, a.last_seen, len(a.events)) == (501, 3_000, 2)


def test_an_alert_body_stays_within_its_byte_bound(store):
    store.ingest([], [alert()])
    big = wire.Exec(agent="web1", time=2_000, pid=300, filename="/x", argv=["z" * 4000] * 50)  # 200 KB
    store.ingest([], [Repeat(alert="a1", time=2_000, events=[big]) for _ in range(12)])
    (body,) = store.db.execute("SELECT body FROM alerts").fetchone()
    assert len(body) <= ALERT_BYTES
    (a,) = store.alerts()
    assert a.count == 13 and len(a.events) == 1 + ALERT_BYTES // 200_000


def test_a_repeat_of_an_alert_not_stored_is_counted_as_dropped(store):
    assert store.ingest([], [Repeat(alert="gone", time=1, events=[run(1, 1)])]).dropped == 1
    assert store.alerts() == []


def test_an_alert_filed_under_an_incident_later_keeps_its_repeats(store):
    store.ingest([], [alert(), Repeat(alert="a1", time=2_000, events=[run(101, 2_000)])])
    again = alert()
    again.incident = "inc-1"  # correlate writes an earlier alert again with its incident
    store.ingest([], [again])
    (a,) = store.alerts()
    assert (a.incident, a.count, [e.pid for e in a.events]) == ("inc-1", 2, [100, 101])


def old_store(path, version: int) -> sqlite3.Connection:
    """A store as immune-node of schema ``version`` left it."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(_SCHEMA_V1)
    for step in MIGRATIONS[:version - 1]:
        step(db)
    db.execute("INSERT INTO meta VALUES('schema', ?)", (str(version),))
    return db


def test_a_version_3_store_opens_with_its_alerts_and_gains_count_and_last_seen(tmp_path):
    path = tmp_path / "v3.db"
    db = old_store(path, 3)
    old = msgspec.msgpack.encode(alert("old", t=5_000))
    db.execute("INSERT INTO alerts(id, time, agent, rule_id, title, level, incident, body) "
               "VALUES('old', 5000, 'web1', 'r1', 'Download', 'high', 'inc-9', ?)", (old,))
    db.close()
    s = Store(path)
    assert s.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == str(SCHEMA_VERSION)
    (a,) = s.alerts()
    assert (a.id, a.count, a.last_seen, a.incident) == ("old", 1, 5_000, "inc-9")
    s.ingest([], [Repeat(alert="old", time=6_000, events=[run(101, 6_000)])])
    (a,) = s.alerts()
    assert (a.count, a.last_seen, len(a.events)) == (2, 6_000, 2)
    s.close()


def test_a_version_4_store_gains_labels_bundles_and_what_each_agent_runs(tmp_path):
    path = tmp_path / "v4.db"
    db = old_store(path, 4)
    db.execute("INSERT INTO agents(id, public_key) VALUES('web1', 'k')")
    db.close()
    s = Store(path)
    assert s.agents()[0].bundle_version == 0 and s.fleet_serial() == 0
    assert s.set_labels("web1", {"role": "web", "dc": "fra"}, actor="cli:root") == {"dc": "fra", "role": "web"}
    assert s.set_labels("web1", {}, remove=["dc"]) == {"role": "web"}
    assert [s.push_bundle(n, {"role": "web"}, lambda v: f"signed-{v}".encode()) for n in ("a", "b", "a")] == [1, 2, 3]
    assert [(b.version, b.name, b.signed) for b in s.bundles(latest=True)] == [(3, "a", b"signed-3"), (2, "b", b"signed-2")]
    assert [b.version for b in s.bundles("a")] == [3, 1]
    assert s.fleet_serial() == 5  # two label changes, three pushes
    s.agent_seen("web1", 1.0, hello=wire.Hello(agent="web1", bundle_version=3))
    s.agents_seen([AgentSeen(agent="web1", time=2, bundle=wire.BundleStatus(version=4, detail="not newer", running=3))])
    row = s.agents()[0]
    assert (row.bundle_version, row.bundle_detail) == (3, "v4 refused: not newer")
    whats = [r[0] for r in s.db.execute("SELECT what FROM audit ORDER BY id")]
    assert whats == ["agent_labels", "agent_labels", "policy_push", "policy_push", "policy_push"]


def test_a_version_7_store_gets_the_triage_tables_and_keeps_its_incidents(tmp_path):
    from hive.correlate import Incident

    path = tmp_path / "v7.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(_SCHEMA_V1)
    for step in MIGRATIONS[:6]:
        step(db)
    db.execute("INSERT INTO meta VALUES('schema', '7')")
    db.close()
    s = Store(path)
    try:
        assert s.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == str(SCHEMA_VERSION)
        s.ingest([], incidents=[Incident(id="i1", title="t", opened=1.0, updated=1.0)])
        assert s.untriaged(settled=time.time(), since=0) == ["i1"]
        s.request_triage("i1", "cli")
        s.request_triage("i1", "operator:bob")  # asked twice: done once
        assert s.triage_requests() == [("i1", "cli")] and s.triage_requested("i1")
        first = s.add_triage("i1", state="done", requested_by="cli", model="m", seconds=1.5, calls=2,
                             verdict={"severity": "high", "techniques": ["T1059"], "explanation": "x",
                                      "playbook": "", "confidence": 0.8})
        assert s.triage_requests() == [] and not s.triage_requested("i1")
        assert s.untriaged(settled=time.time(), since=0) == []
        second = s.add_triage("i1", state="failed", requested_by="auto", reason="over budget")
        assert second > first and s.triage_mark() == second
        assert [r.state for r in s.triage("i1")] == ["failed", "done"]
        assert [r.id for r in s.triage_after(first)] == [second]
        done = s.triage("i1")[1]
        assert done.severity == "high" and done.confidence == 0.8 and done.verdict["techniques"] == ["T1059"]
        assert len(s.triage_calls(time.time() - 60)) == 2
    finally:
        s.close()
def test_an_agent_another_hive_node_saw_lately_is_not_marked_offline(store):
    # Hive nodes sharing a store each see only the agents connected to them:
    # one whose registry misses an agent must not mark it offline while
    # another node records it.
    from hive import AgentSeen

    store.agents_seen([AgentSeen(agent="a", time=100 * 10**9), AgentSeen(agent="b", time=50 * 10**9)])
    came_back, gone = store.presence([], offline=["a", "b"], unseen_since=80.0)
    assert gone == ["b"] and came_back == set()
    rows = {r.id: r for r in store.agents()}
    assert rows["a"].online and not rows["b"].online
    # Already offline (another node marked it): no second notice.
    assert store.presence([], offline=["b"], unseen_since=80.0) == (set(), [])
    assert store.presence([], offline=["a"], unseen_since=101.0) == (set(), ["a"])
