"""The output actor against real receivers on loopback: syslog over UDP,
TCP and TLS (a CA made here, the server's certificate verified), and
webhooks over HTTP(S).  A receiver that goes down and comes back gets
everything from the cursor on, nothing lost; a restarted actor resumes
from its cursor; a bad target is a clear error."""

from __future__ import annotations

import logging

import msgspec
import pytest
import trio

import wire
from actors import Context
from hive import Store
from hive.outputs import Cursors, output_actor
from node._config import OutputConfig
from tests.ports import free_port

from .receivers import StreamListener, UdpListener, WebhookServer, body, make_ca


def alerts(first: int, n: int) -> list[wire.Alert]:
    return [wire.Alert(id=f"a{i}", rule_id="r1", title=f"alert {i}", level="high", agent="web1",
                       tags=["attack.t1059"], time=1_700_000_000_000_000_000 + i,
                       events=[wire.Exec(time=1, pid=100 + i, filename="/tmp/x", cmdline=f"/tmp/x {i}")])
            for i in range(first, first + n)]


@pytest.fixture
def db(store_location, tmp_path):
    path = store_location
    Store(path).close()
    return path


def add_alerts(db, first, n):
    store = Store(db)
    try:
        store.ingest([], alerts(first, n))
    finally:
        store.close()


async def wait_for(predicate, timeout=15.0):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def start(nursery, runtime, db, output, name="out"):
    ctx = Context(runtime, name)
    scope = trio.CancelScope()

    async def run(task_status):
        with scope:
            await output_actor(ctx, path=db, output=output, poll=0.02, task_status=task_status)

    await nursery.start(run)
    return ctx, scope


def ids(docs):
    return [d["event"]["id"] for d in docs]


def events_of(caplog, name):
    return [r.event for r in caplog.records if getattr(r, "event", "").startswith("output.")
            and r.fields.get("output") == name]


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
async def test_syslog_stream_receiver_down_then_up_gets_everything_from_the_cursor(
        tmp_path, db, runtime, caplog, scheme):
    caplog.set_level(logging.INFO, logger="immune")
    port = free_port()
    certs = make_ca(tmp_path) if scheme == "tls" else None
    out = OutputConfig(name="siem", kind="syslog", target=f"{scheme}://localhost:{port}", retry_max=1.0,
                       ca=str(certs[0]) if certs else "", timeout=5)
    listener = StreamListener(port, certs)
    async with trio.open_nursery() as n:
        await listener.up(n)
        ctx, actor = await start(n, runtime, db, out)
        add_alerts(db, 0, 5)
        await wait_for(lambda: len(listener.messages) >= 5)
        assert ids(listener.docs) == [f"a{i}" for i in range(5)]
        assert listener.messages[0].startswith(b"<131>1 ")  # local0, error: a high alert
        await wait_for(lambda: ctx.stats.extra["sent"] == 5)

        await listener.down()
        add_alerts(db, 5, 5)
        await wait_for(lambda: ctx.stats.extra["failures"] >= 2)
        assert ctx.stats.extra["up"] == 0 and ctx.stats.extra["backlog"] == 5
        before = len(listener.messages)
        await listener.up(n)
        await wait_for(lambda: ctx.stats.extra["up"] == 1 and ctx.stats.extra["backlog"] == 0)
        await wait_for(lambda: len(listener.messages) >= before + 5)
        # From the cursor exactly: what the receiver acknowledged is not sent again.
        assert ids(listener.docs[before:]) == [f"a{i}" for i in range(5, 10)]
        assert events_of(caplog, "siem").count("output.down") == 1
        assert events_of(caplog, "siem").count("output.up") == 1
        actor.cancel()
        await listener.down()
    store = Store(db)
    assert Cursors(store.db).open("siem", "alerts") == {"alerts": 10}


async def test_a_restarted_output_resumes_from_its_cursor(tmp_path, db, runtime):
    port = free_port()
    out = OutputConfig(name="siem", kind="syslog", target=f"tcp://127.0.0.1:{port}", retry_max=1.0)
    listener = StreamListener(port)
    async with trio.open_nursery() as n:
        await listener.up(n)
        add_alerts(db, 0, 3)  # before the output's first start: not forwarded (no backfill)
        ctx, actor = await start(n, runtime, db, out)
        add_alerts(db, 3, 3)
        await wait_for(lambda: ctx.stats.extra["sent"] == 3)
        actor.cancel()
        add_alerts(db, 6, 4)  # while the output is stopped
        ctx, actor = await start(n, runtime, db, out, name="out2")
        await wait_for(lambda: ctx.stats.extra["sent"] == 4)
        assert ids(listener.docs) == [f"a{i}" for i in range(3, 10)]
        actor.cancel()
        await listener.down()


async def test_backfill_forwards_what_the_store_held(db, runtime):
    port = free_port()
    out = OutputConfig(name="all", kind="syslog", target=f"udp://127.0.0.1:{port}", backfill=True)
    listener = UdpListener(port)
    add_alerts(db, 0, 4)
    async with trio.open_nursery() as n:
        await n.start(listener.serve)
        ctx, actor = await start(n, runtime, db, out)
        await wait_for(lambda: len(listener.messages) == 4)
        assert [body(m)["event"]["id"] for m in listener.messages] == ["a0", "a1", "a2", "a3"]
        assert body(listener.messages[0])["threat"]["technique"]["id"] == ["T1059"]
        n.cancel_scope.cancel()


async def test_events_go_too_when_asked(db, runtime, tmp_path):
    from hive import Ingest

    target = tmp_path / "out" / "all.json"
    target.parent.mkdir()
    out = OutputConfig(name="f", kind="file", target=str(target), what="both")
    async with trio.open_nursery() as n:
        ctx, actor = await start(n, runtime, db, out)
        store = Store(db)
        store.ingest([Ingest(agent="web1", events=[wire.Exec(time=5, pid=77, filename="/bin/ls")])], alerts(0, 2))
        store.close()
        await wait_for(lambda: ctx.stats.extra["sent"] == 3)
        n.cancel_scope.cancel()
    docs = [msgspec.json.decode(line) for line in target.read_bytes().splitlines()]
    assert [d["event"]["kind"] for d in docs] == ["alert", "alert", "event"]  # alerts first
    assert docs[2]["process"]["pid"] == 77


@pytest.mark.parametrize("tls", [False, True])
async def test_webhook_down_then_up_and_refusals(tmp_path, db, runtime, caplog, tls):
    caplog.set_level(logging.INFO, logger="immune")
    port = free_port()
    certs = make_ca(tmp_path) if tls else None
    scheme = "https" if tls else "http"
    out = OutputConfig(name="hook", kind="webhook", target=f"{scheme}://localhost:{port}/in", token="s3cret",
                       ca=str(certs[0]) if certs else "", retry_max=1.0, timeout=5)
    server = WebhookServer(port, certs)
    server.up()
    try:
        async with trio.open_nursery() as n:
            ctx, actor = await start(n, runtime, db, out)
            add_alerts(db, 0, 3)
            await wait_for(lambda: len(server.posts) == 3)
            assert {auth for auth, _ in server.posts} == {"Bearer s3cret"}
            assert [d["event"]["id"] for _, d in server.posts] == ["a0", "a1", "a2"]
            # A receiver that answers 503 did not take it: kept and retried.
            server.status = 503
            add_alerts(db, 3, 1)
            await wait_for(lambda: ctx.stats.extra["failures"] >= 1)
            assert "HTTP 503" in ctx.stats.last_error
            server.status = 200
            await wait_for(lambda: len(server.posts) == 4)
            # Down altogether, then up.
            server.down()
            add_alerts(db, 4, 2)
            await wait_for(lambda: ctx.stats.extra["failures"] >= 3)
            server.up()
            await wait_for(lambda: len(server.posts) == 6)
            assert [d["event"]["id"] for _, d in server.posts] == [f"a{i}" for i in range(6)]
            # the receiver has the post before the output has its answer and says it is up
            await wait_for(lambda: events_of(caplog, "hook").count("output.up") == 2)
            n.cancel_scope.cancel()
    finally:
        server.down()


async def test_a_certificate_from_another_ca_is_refused(tmp_path, db, runtime):
    port = free_port()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "ours").mkdir()
    certs = make_ca(tmp_path / "theirs")
    ours = make_ca(tmp_path / "ours")
    out = OutputConfig(name="siem", kind="syslog", target=f"tls://localhost:{port}", ca=str(ours[0]), timeout=5)
    listener = StreamListener(port, certs)
    async with trio.open_nursery() as n:
        await listener.up(n)
        ctx, actor = await start(n, runtime, db, out)
        add_alerts(db, 0, 1)
        await wait_for(lambda: ctx.stats.extra["failures"] >= 1)
        assert "certificate refused" in ctx.stats.last_error and listener.messages == []
        n.cancel_scope.cancel()


@pytest.mark.parametrize("target, reason", [
    ("tcp://127.0.0.1:{port}", "Connection refused"),
    ("tcp://no-such-host.invalid:{port}", "no-such-host.invalid"),
])
async def test_a_bad_target_is_a_clear_error(db, runtime, target, reason):
    out = OutputConfig(name="bad", kind="syslog", target=target.format(port=free_port()), timeout=5)
    async with trio.open_nursery() as n:
        ctx, actor = await start(n, runtime, db, out)
        add_alerts(db, 0, 1)
        await wait_for(lambda: ctx.stats.extra["failures"] >= 1)
        assert reason in ctx.stats.last_error and "\n" not in ctx.stats.last_error
        assert ctx.stats.extra["backlog"] == 1
        n.cancel_scope.cancel()


async def test_an_unwritable_file_is_a_clear_error(tmp_path, db, runtime):
    out = OutputConfig(name="f", kind="file", target=str(tmp_path))  # a folder
    async with trio.open_nursery() as n:
        ctx, actor = await start(n, runtime, db, out)
        add_alerts(db, 0, 1)
        await wait_for(lambda: ctx.stats.extra["failures"] >= 1)
        assert ctx.stats.last_error == f"{tmp_path}: Is a directory"
        n.cancel_scope.cancel()


async def test_a_bad_ca_file_is_an_output_down_not_a_crash(tmp_path, db, runtime):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    out = OutputConfig(name="t", kind="syslog", target="tls://localhost:6514", ca=str(bad))
    async with trio.open_nursery() as n:
        ctx, actor = await start(n, runtime, db, out)
        add_alerts(db, 0, 1)
        await wait_for(lambda: ctx.stats.extra["failures"] >= 1)
        assert ctx.stats.last_error.startswith(f"CA file {bad}: ") and "\n" not in ctx.stats.last_error
        assert ctx.stats.extra["up"] == 0
        n.cancel_scope.cancel()


pytestmark = pytest.mark.trio
