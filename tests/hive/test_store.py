"""The store as a plain object: exactly-once batches, agents, tokens, retention."""

import time

import pytest

import wire
from hive import Ingest, Store, StoreError


def batch(agent, seq, n=3, stream="s1", t0=None):
    t0 = t0 or time.time_ns()
    return Ingest(agent=agent, stream=stream, seq=seq,
                  events=[wire.Exec(time=t0 + i, pid=seq * 100 + i, filename="/bin/true") for i in range(n)])


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "hive.db")
    yield s
    s.close()


def test_only_the_next_batch_of_a_stream_is_stored(store):
    out = store.ingest([batch("a", 1), batch("a", 2), batch("a", 2), batch("a", 4), batch("b", 1)])
    assert [(o.agent, o.seq, o.outcome) for o in out] == [
        ("a", 1, "stored"), ("a", 2, "stored"), ("a", 2, "duplicate"), ("a", 2, "gap"), ("b", 1, "stored")]
    assert store.count_events("a") == 6 and store.count_events("b") == 3
    # A redelivery after a crash stores nothing twice.
    again = store.ingest([batch("a", 1), batch("a", 2), batch("a", 3)])
    assert [o.outcome for o in again] == ["duplicate", "duplicate", "stored"]
    assert store.count_events("a") == 9
    # A new spool (new stream) starts at 1 again.
    assert store.ingest([batch("a", 1, stream="s2")])[0].outcome == "stored"


def test_marks_survive_reopening(tmp_path):
    s = Store(tmp_path / "h.db")
    s.ingest([batch("a", 1), batch("a", 2)])
    s.close()
    s = Store(tmp_path / "h.db")
    assert s.stream_marks() == {("a", "s1"): 2}
    assert s.ingest([batch("a", 2)])[0].outcome == "duplicate"


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


def test_retention_by_age_and_by_size(store):
    old = time.time_ns() - 40 * 86400 * 10**9
    store.ingest([batch("a", 1, n=10, t0=old), batch("a", 2, n=10)])
    assert store.retain(max_age=30 * 86400, max_bytes=1 << 40) == 10
    assert store.count_events() == 10
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
