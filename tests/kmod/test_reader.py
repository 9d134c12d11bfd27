"""The kmod reader actor under the actors runtime: it drains the sensor in
batches and pushes wire.EventBatch messages downstream."""

import errno
import subprocess
import sys

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
    assert sensors[0].attachments() == {"programs": [], "links": [], "off": []}  # closed with the actor
    ctx.close()


async def test_a_stopping_reader_hands_on_what_the_kernel_holds(tmp_path):
    """Opens folded in the kernel by a thread still alive, not yet flushed
    when the reader is told to stop, still reach the sink: the counts add up
    to every open."""
    if _REASON is not None:
        pytest.skip(_REASON)
    ctx = Context(Runtime(), "t")
    sink = f"ipc://{tmp_path}/events"
    inbox = ctx.socket(zmq.PULL, bind=sink, codec=Codec(wire.EventBatch))
    code = ("import os, time\nfor i in range(300):\n    os.close(os.open('/etc/shadow', os.O_RDONLY))\n"
            "print('done', flush=True)\ntime.sleep(30)\n")
    opener = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: reader_actor(
                ctx.child("kmod"), task_status=task_status, sink=sink, fold=30.0))
            opener = subprocess.Popen([sys.executable, "-S", "-c", code], stdout=subprocess.PIPE, text=True)
            assert await trio.to_thread.run_sync(opener.stdout.readline) == "done\n"
            opens: list[wire.Open] = []
            with trio.fail_after(5):
                while not opens:  # the first open is sent at once; the rest are folded
                    for batch in await inbox.recv():
                        opens += [e for e in batch.events
                                  if isinstance(e, wire.Open) and e.pid == opener.pid]
            nursery.cancel_scope.cancel()  # long before the 30 s fold window ends
        with trio.fail_after(5):
            while sum(e.count for e in opens) < 300:
                for batch in await inbox.recv():
                    opens += [e for e in batch.events if isinstance(e, wire.Open) and e.pid == opener.pid]
    finally:
        if opener is not None:
            opener.kill()
            opener.wait()
    assert sum(e.count for e in opens) == 300 and len(opens) == 2
    assert {e.path for e in opens} == {"/etc/shadow"}
    ctx.close()
