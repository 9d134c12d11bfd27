"""The kmod reader actor under the actors runtime: it drains the sensor in
batches and pushes wire.EventBatch messages downstream."""

import errno

import pytest
import trio
import zmq

import wire
from actors import Codec, Context, Runtime
from kmod import Sensor, reader_actor, verdict_line

from .conftest import _REASON, kernel, run_child

pytestmark = kernel


async def test_reader_pushes_batches_of_wire_events(tmp_path):
    if _REASON is not None:
        pytest.skip(_REASON)
    ctx = Context(Runtime(), "t")
    sink = f"ipc://{tmp_path}/events"
    inbox = ctx.socket(zmq.PULL, bind=sink, codec=Codec(wire.EventBatch))
    sensors: list[Sensor] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: reader_actor(
            ctx.child("kmod"), task_status=task_status, sink=sink, batch=64,
            on_sensor=sensors.append))
        child = await trio.to_thread.run_sync(run_child, "connect", "127.0.0.1", "4444")
        assert child.errno == errno.EPERM
        seqs, line = [], None
        with trio.fail_after(5):
            while line is None:
                for batch in await inbox.recv():
                    seqs.append(batch.seq)
                    assert 0 < len(batch.events) <= 64
                    for ev in batch.events:
                        if isinstance(ev, wire.Connect) and ev.pid == child.pid:
                            line = verdict_line(ev)
        assert line == f"IMMUNE: [BLOCKED] connect 127.0.0.1:4444 (pid={child.pid})"
        assert seqs == list(range(1, len(seqs) + 1))
        stats = ctx.runtime.stats("t.kmod").extra
        assert stats["batches"] >= len(seqs) and stats["drops"] == 0
        assert sensors and sensors[0].statistics().watchdog == "armed"
        nursery.cancel_scope.cancel()
    assert sensors[0].attachments() == {"programs": [], "links": []}  # closed with the actor
    ctx.close()
