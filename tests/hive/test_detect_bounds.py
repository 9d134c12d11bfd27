"""The sentinel's memory is bounded whatever agents send: it holds a few
stored batches at its door (the store keeps the backlog, bounded in bytes)
and a bounded backlog on its way to correlate, in which alerts keep room."""

import time

import pytest
import trio
import zmq

from actors import Context
from hive import sentinel_actor
from hive._actors import DEFAULT_MAX_FRAME, internal_codec
from hive._detect import CORRELATE_BYTES, HOP_HWM
from hive._messages import Ingest
from test_sigma_limits import exec_of, rule
from wire import Alert

CODEC = internal_codec()


def max_size_batch() -> bytes:
    """A stored batch as large as the router lets one be (its max_frame)."""
    events = [exec_of("x" * 1000, pid=n + 1) for n in range(4096)]
    data = CODEC.encode(Ingest(agent="a", stream="s", seq=1, events=events))
    assert DEFAULT_MAX_FRAME * 0.9 < len(data) <= DEFAULT_MAX_FRAME + 128 * 4096  # + the agent's name per event
    return data


@pytest.fixture
async def sentinel(tmp_path, runtime):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "evil.yml").write_text(rule("CommandLine|contains: evil", title="evil"))
    ctx = Context(runtime, "sentinel")
    ends = {"detect": f"ipc://{tmp_path}/detect", "correlate": f"ipc://{tmp_path}/correlate"}
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: sentinel_actor(
            ctx, task_status=task_status, rule_dirs=[tmp_path / "rules"], **ends))
        yield ctx, ends
        nursery.cancel_scope.cancel()
    ctx.close()


async def evaluated(ctx, events, timeout=30.0):
    with trio.fail_after(timeout):
        while ctx.stats.extra.get("events", 0) < events:
            await trio.sleep(0.02)


async def test_the_sentinel_takes_in_a_few_max_size_batches_however_fast_they_come(sentinel, runtime):
    ctx, ends = sentinel
    sink = runtime.zmq.socket(zmq.PULL)
    sink.setsockopt(zmq.LINGER, 0)
    sink.bind(ends["correlate"])
    feeder = runtime.zmq.socket(zmq.PUSH)
    feeder.setsockopt(zmq.LINGER, 0)
    feeder.setsockopt(zmq.SNDHWM, 1)
    feeder.connect(ends["detect"])
    data = max_size_batch()
    # This loop holds the trio thread: the sentinel evaluates nothing while
    # ZeroMQ moves into its process what it will take, as fast as it can.
    accepted, idle_since = 0, time.monotonic()
    while accepted < 40 and time.monotonic() - idle_since < 1.0:
        try:
            feeder.send(data, zmq.NOBLOCK)
            accepted += 1
            idle_since = time.monotonic()
        except zmq.Again:
            time.sleep(0.01)
    # The feeder's own queue, the sentinel's, its reader's message and one in
    # the sockets' buffers: about 20 MiB at most at the default max_frame
    # (it took in 40, 160 MiB, and would have taken 2000).
    assert accepted <= 1 + HOP_HWM + 2, accepted
    await evaluated(ctx, accepted * 4096)  # and each is evaluated once taken
    assert ctx.stats.extra["events"] == accepted * 4096
    feeder.close()
    sink.close()


async def test_batches_waiting_for_correlate_are_bounded_and_alerts_keep_their_room(sentinel, runtime):
    ctx, ends = sentinel
    feeder = Context(runtime, "feeder").socket(zmq.PUSH, connect=ends["detect"])
    data = max_size_batch()
    n = 12  # 48 MiB, correlate not there to take any
    for _ in range(n):
        await feeder.send_many([[data]])
    await evaluated(ctx, n * 4096)
    held = CORRELATE_BYTES // len(data) + HOP_HWM + 1
    assert ctx.stats.extra["events_skipped"] >= n - held
    await feeder.send_many([[CODEC.encode(Ingest(agent="a", events=[exec_of("evil")]))]])
    await evaluated(ctx, n * 4096 + 1)
    assert ctx.stats.extra["alerts"] == 1 and ctx.stats.extra.get("alerts_skipped", 0) == 0
    sink = Context(runtime, "correlate").socket(zmq.PULL, bind=ends["correlate"], codec=internal_codec())
    got = []
    with trio.fail_after(10):
        while not any(isinstance(m, Alert) for m in got):
            got += await sink.recv()
    assert len(got) <= held + 2 and [m.title for m in got if isinstance(m, Alert)] == ["evil"]
    feeder.close()
    sink.close()
