"""What the store does on PostgreSQL beyond what test_store checks on both
backends: day partitions and retention by dropping them, writers of one
stream on two connections at once, a server restart under an open store,
and the errors a wrong URL, a missing server or a wrong password give."""

import multiprocessing
import threading
import time

import psycopg
import pytest

import wire
from hive import SCHEMA_VERSION, Ingest, Store, StoreError
from hive._postgres import DAY_NS, PAST_DAYS, translate
from tests.ports import free_port

TODAY = time.time_ns() // DAY_NS


def batch(agent, seq, n=3, stream="s1", t0=None):
    t0 = t0 or time.time_ns()
    return Ingest(agent=agent, stream=stream, seq=seq,
                  events=[wire.Exec(time=t0 + i, pid=seq * 100 + i, filename="/bin/true") for i in range(n)])


def partitions(store) -> dict[str, int]:
    """Each partition of events, with its rows."""
    names = [r[0] for r in store.db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass ORDER BY 1").fetchall()]
    return {n: store.db.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for n in names}


def day_name(day: int) -> str:
    return "events_" + time.strftime("%Y%m%d", time.gmtime(day * 86400))


@pytest.fixture
def store(pg_url):
    s = Store(pg_url)
    yield s
    s.close()


def test_sqlite_statements_are_said_in_postgresql():
    assert translate("SELECT a FROM t WHERE b=? AND c LIKE ? ESCAPE '\\'", True) == \
        "SELECT a FROM t WHERE b=%s AND c ILIKE %s ESCAPE '\\'"
    # Inside quotes nothing changes but the % psycopg would read as a placeholder.
    assert translate("SELECT '?%' WHERE x=?", True) == "SELECT '?%%' WHERE x=%s"
    assert translate("SELECT '?%'", False) == "SELECT '?%'"
    assert translate("INSERT OR IGNORE INTO o(a) VALUES(?)", True) == \
        "INSERT INTO o(a) VALUES(%s) ON CONFLICT DO NOTHING"
    assert translate("SELECT 1 FROM audit WHERE json_extract(detail, '$.action') = ?", True) == \
        "SELECT 1 FROM audit WHERE (detail::jsonb ->> 'action') = %s"
    assert translate("BEGIN IMMEDIATE", False) == "BEGIN"


def test_each_day_gets_a_partition_and_retention_drops_whole_days(store):
    now = time.time_ns()
    # Day -2's events a second apart, to cut between them below.
    seconds = Ingest(agent="a", stream="s1", seq=2, events=[
        wire.Exec(time=now - 2 * DAY_NS + i * 10**9, pid=i) for i in range(5)])
    store.ingest([batch("a", 1, n=4, t0=now - 40 * DAY_NS), seconds, batch("a", 3, n=6, t0=now)])
    parts = partitions(store)
    # The days that came, and tomorrow's made ahead.
    assert parts[day_name(TODAY - 40)] == 4 and parts[day_name(TODAY - 2)] == 5 and parts[day_name(TODAY)] == 6
    assert parts[day_name(TODAY + 1)] == 0 and parts["events_default"] == 0
    deleted = store.retain(max_age=30 * 86400, max_bytes=1 << 40)
    assert deleted["events"] == 4
    after = partitions(store)
    assert day_name(TODAY - 40) not in after and after[day_name(TODAY - 2)] == 5
    assert store.count_events() == 11
    # A cutoff inside a day: the day stays, its rows before the cutoff go.
    cutoff = now - 2 * DAY_NS + 1.5e9
    cut = store.retain(max_age=(now - cutoff) / 1e9, max_bytes=1 << 40, now=now / 1e9)
    assert cut["events"] == 2 and partitions(store)[day_name(TODAY - 2)] == 3


def test_a_day_far_from_now_lands_in_the_default_partition(store):
    far_past = time.time_ns() - (PAST_DAYS + 10) * DAY_NS
    far_ahead = time.time_ns() + 30 * DAY_NS
    store.ingest([batch("a", 1, n=2, t0=far_past), batch("a", 2, n=3, t0=far_ahead)])
    parts = partitions(store)
    assert parts["events_default"] == 5
    assert len(parts) == 3  # today, tomorrow, default: a wrong clock makes no tables
    assert [e.time for e in store.events(limit=1)] == [far_ahead + 2]
    assert store.retain(max_age=30 * 86400, max_bytes=1 << 40)["events"] == 2


def test_the_size_bound_drops_the_oldest_days_but_never_today(store):
    now = time.time_ns()
    big = lambda seq, t0: Ingest(agent="b", stream="s", seq=seq, events=[  # noqa: E731
        wire.Exec(time=t0 + j, argv=["x" * 200] * 5) for j in range(2000)])
    store.ingest([big(1, now - 3 * DAY_NS), big(2, now - 2 * DAY_NS), big(3, now)])
    day = partitions(store)
    size = store.size()
    deleted = store.retain(max_age=30 * 86400, max_bytes=size - 1)
    assert deleted["events"] == 2000
    assert day_name(TODAY - 3) not in partitions(store) and day_name(TODAY - 2) in partitions(store)
    assert store.size() < size
    # However small the bound, today's events stay.
    store.retain(max_age=30 * 86400, max_bytes=1)
    assert set(partitions(store)) == {day_name(TODAY), day_name(TODAY + 1), "events_default"}
    assert store.count_events() == day[day_name(TODAY)] == 2000


def test_two_writers_racing_on_the_same_streams_store_each_batch_once(pg_url):
    """Two hive nodes (two stores, two connections) get the same batches of
    the same streams at once, as after an agent moved between them: every
    batch is stored exactly once, and neither waits on the other for ever."""
    stores = [Store(pg_url), Store(pg_url)]
    streams = [("a", "s1"), ("a", "s2"), ("b", "s1")]
    outcomes: list[list] = [[], []]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def write(i: int) -> None:
        try:
            for seq in range(1, 151):
                start.wait()  # both go for each seq at once
                # Each writer sends its group commit in its own order of streams.
                order = streams if i == 0 else streams[::-1]
                done = stores[i].ingest([batch(a, seq, n=2, stream=s) for a, s in order])
                outcomes[i] += [(o.agent, o.stream, o.seq, o.outcome) for o in done.outcomes]
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    stored = [o[:3] for o in outcomes[0] + outcomes[1] if o[3] == "stored"]
    assert sorted(stored) == sorted((a, s, seq) for a, s in streams for seq in range(1, 151))
    assert stores[0].count_events() == 3 * 150 * 2
    assert stores[0].stream_marks() == {k: 150 for k in streams}
    # Both took part: the race was real.
    assert all(any(o[3] == "stored" for o in out) for out in outcomes)
    for s in stores:
        s.close()


def _race(url: str, streams: list, start, results) -> None:
    store = Store(url)
    won = []
    for seq in range(1, 101):
        start.wait()
        done = store.ingest([batch(a, seq, n=2, stream=s) for a, s in streams])
        won += [(o.agent, o.stream, o.seq) for o in done.outcomes if o.outcome == "stored"]
    store.close()
    results.put(won)


def test_two_hive_processes_racing_on_the_same_streams_store_each_batch_once(pg_url):
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(2), ctx.Queue()
    streams = [("a", "s1"), ("b", "s1")]
    procs = [ctx.Process(target=_race, args=(pg_url, order, start, results)) for order in (streams, streams[::-1])]
    for p in procs:
        p.start()
    won = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sorted(won[0] + won[1]) == sorted((a, s, seq) for a, s in streams for seq in range(1, 101))
    store = Store(pg_url)
    assert store.count_events() == 2 * 100 * 2 and store.stream_marks() == {k: 100 for k in streams}
    store.close()


def test_a_server_restart_between_calls_costs_no_call(pg_server, pg_url):
    """The connection the restart dropped while idle is made again at the
    next transaction's BEGIN, which had done nothing yet: no call fails (a
    call the restart cuts mid-transaction still fails, retryable)."""
    store = Store(pg_url)
    store.ingest([batch("a", 1)])
    pg_server.restart()
    assert [o.outcome for o in store.ingest([batch("a", 2)]).outcomes] == ["stored"]
    pg_server.restart()
    assert store.stream_mark("a", "s1") == 2  # a read outside a transaction, likewise
    assert store.count_events() == 6 and store.stream_marks() == {("a", "s1"): 2}
    store.close()


def test_unreachable_server_wrong_password_and_bad_urls_are_one_line(pg_server):
    port = free_port()
    with pytest.raises(StoreError) as info:
        Store(f"postgresql://immune:pw@127.0.0.1:{port}/immune")
    text = str(info.value)
    assert text.startswith(f"cannot open the store postgresql://immune@127.0.0.1:{port}/immune: ")
    assert "Connection refused" in text and "\n" not in text and "pw" not in text.split("immune@")[0]
    with pytest.raises(StoreError) as info:
        Store(pg_server.url.replace(":immune-test@", ":wrong@"))
    assert "password authentication failed" in str(info.value) and "wrong" not in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(StoreError, match="names no database"):
        Store(f"postgresql://immune@127.0.0.1:{pg_server.port}")
    with pytest.raises(StoreError, match="is not a PostgreSQL URL"):
        Store("postgresql://immune@127.0.0.1:5432/db?nonsense=1")


def test_a_newer_schema_is_refused_and_an_empty_database_is_no_store_to_read(pg_url):
    with pytest.raises(StoreError, match="holds no hive store yet"):
        Store(pg_url, readonly=True)
    Store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE meta SET value=%s WHERE key='schema'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match=f"has schema version {SCHEMA_VERSION + 1}, newer than this"):
        Store(pg_url)


def test_two_nodes_making_the_schema_at_once_make_it_once(pg_url):
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        try:
            start.wait()
            Store(pg_url).close()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchall() == [(str(SCHEMA_VERSION),)]


def test_a_readonly_store_cannot_write(store, pg_url):
    reader = Store(pg_url, readonly=True)
    with pytest.raises(StoreError, match="read-only"):
        reader.enroll("a", "K" * 40)
    assert reader.agents() == []
    reader.close()


def test_a_schema_version_postgresql_never_had_is_refused_in_one_line(pg_url):
    Store(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE meta SET value='3' WHERE key='schema'")
    never = r"store postgresql://\S+: schema version 3 was never made on PostgreSQL \(it began at 7\)"
    with pytest.raises(StoreError, match=never):
        Store(pg_url)


def test_an_output_never_passes_an_event_another_node_has_yet_to_commit(pg_url):
    """Node A draws an id, node B draws the next and commits first: a cursor
    going by id must not pass A's row before A commits."""
    from hive.outputs._cursor import Cursors

    store = Store(pg_url)
    store.ingest([batch("b", 1, n=1)])  # the schema and today's partition
    a = psycopg.connect(pg_url, autocommit=True)
    a.execute("BEGIN")
    a.execute("SELECT pg_advisory_xact_lock_shared(%s)", (0x494D4D32,))  # as Store.ingest begins
    a.execute("INSERT INTO events(agent, time, kind, pid, verdict, body) VALUES('a', %s, 'exec', 1, 'allow', %s)",
              (time.time_ns(), b"\x80"))
    done = []
    writer = threading.Thread(target=lambda: done.append(store.ingest([batch("b", 2, n=1)])))
    writer.start()
    writer.join(10)
    assert [o.outcome for o in done[0].outcomes] == ["stored"]  # B committed while A is open
    found: list = []
    reader = threading.Thread(target=lambda: found.extend(Cursors(Store(pg_url).db).fetch("events", 1, 100)))
    reader.start()
    reader.join(1.0)
    assert reader.is_alive() and not found  # waiting for A, not reading past its row
    a.execute("COMMIT")
    reader.join(10)
    a.close()
    # A's row (a bare body: its record comes empty) before B's second batch, none passed.
    assert [r.position for r in found] == sorted(r.position for r in found)
    assert len(found) == 2 and found[0].doc == {}
    store.close()
