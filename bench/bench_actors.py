"""Actor-to-actor message rate against raw blocking pyzmq, in one run.

    .venv/bin/python bench/bench_actors.py [--messages N] [--batches N]

Four cases, each over inproc and ipc:

* single: one small frame per message;
* batch: 256 wire events per message, encoded and decoded with the codec.

The baseline is two threads with blocking pyzmq PUSH/PULL sockets doing the
same work (the same codec for batches); the actors are two supervised trio
actors in one thread.  Printed: rate of each and actors/baseline ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time

import trio
import zmq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import wire  # noqa: E402
from actors import Child, Codec, Context, Runtime, Supervisor  # noqa: E402

BATCH = 256
HWM = 1000


def make_batch(seq: int) -> wire.EventBatch:
    return wire.EventBatch(seq=seq, events=[
        wire.Exec(time=1_700_000_000_000_000_000 + i, pid=1000 + i, ppid=1, uid=0, comm="bash",
                  filename="/usr/bin/ls", argv=["ls", "-la", "/tmp"], verdict="allow")
        for i in range(BATCH)
    ])


def raw(endpoint: str, count: int, batched: bool) -> float:
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, HWM)
    pull.bind(endpoint)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, HWM)
    push.connect(endpoint)
    codec = Codec(wire.AgentMessage)
    batch = make_batch(1)

    def send() -> None:
        for i in range(count):
            push.send(codec.encode(batch) if batched else i.to_bytes(4, "little"))

    t = threading.Thread(target=send)
    t0 = time.perf_counter()
    t.start()
    got = 0
    for _ in range(count):
        frame = pull.recv()
        got += len(codec.decode(frame).events) if batched else 1
    elapsed = time.perf_counter() - t0
    t.join()
    push.close(0)
    pull.close(0)
    return got / elapsed


def actors_rate(endpoint: str, count: int, batched: bool) -> float:
    result: dict[str, float] = {}

    async def sender(ctx: Context, *, task_status) -> None:
        sock = ctx.socket(zmq.PUSH, connect=endpoint, sndhwm=HWM, codec=Codec(wire.AgentMessage))
        task_status.started()
        batch = make_batch(1)
        if batched:
            for _ in range(count):
                await sock.send(batch)
        else:
            for base in range(0, count, 512):
                await sock.send_many([[i.to_bytes(4, "little")] for i in range(base, min(base + 512, count))])
        await trio.sleep_forever()

    async def receiver(ctx: Context, *, task_status, done: trio.Event) -> None:
        sock = ctx.socket(zmq.PULL, bind=endpoint, rcvhwm=HWM, codec=Codec(wire.AgentMessage))
        task_status.started()
        t0 = time.perf_counter()
        got = n = 0
        while n < count:
            if batched:
                for msg in await sock.recv():
                    got += len(msg.events)
                    n += 1
            else:
                frames = await sock.recv_frames()
                n += len(frames)
                got = n
        result["rate"] = got / (time.perf_counter() - t0)
        done.set()

    async def main() -> None:
        done = trio.Event()
        sup = Supervisor([Child("rx", receiver, args={"done": done}), Child("tx", sender)])
        async with trio.open_nursery() as n:
            await n.start(sup, Context(Runtime(), "bench"))
            await done.wait()
            n.cancel_scope.cancel()

    trio.run(main)
    return result["rate"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000, help="single messages per case")
    ap.add_argument("--batches", type=int, default=20_000, help="batches of 256 events per case")
    ap.add_argument("--rounds", type=int, default=3, help="best of N rounds per case")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    print(f"{'case':<22}{'raw pyzmq':>16}{'actors':>16}{'ratio':>8}")
    for transport in ("inproc", "ipc"):
        for batched in (False, True):
            count = args.batches if batched else args.messages
            unit = "events/s" if batched else "msg/s"
            best_raw = best_act = 0.0
            for r in range(args.rounds):
                ep = f"inproc://bench-{transport}-{batched}-{r}" if transport == "inproc" else f"ipc://{tmp}/b-{batched}-{r}.sock"
                best_raw = max(best_raw, raw(ep, count, batched))
                ep = ep + "-a"
                best_act = max(best_act, actors_rate(ep, count, batched))
            name = f"{transport} {'batch of 256' if batched else 'single'}"
            print(f"{name:<22}{best_raw / 1e6:>10.3f} M {unit:<4}{best_act / 1e6:>8.3f} M{best_act / best_raw:>7.2f}x")


if __name__ == "__main__":
    main()
