"""trio-native ZeroMQ sockets between real actors over real sockets."""

import time

import msgspec
import pytest
import trio
import zmq

from actors import Child, Codec, Supervisor

N = 1_000_000
BURST = 512


async def test_push_pull_million_in_order(runtime, root_ctx):
    done = trio.Event()
    result = {}

    async def sender(ctx, *, task_status):
        sock = ctx.socket(zmq.PUSH, connect="inproc://pp", sndhwm=10_000)
        task_status.started()
        for base in range(0, N, BURST):
            await sock.send_many([[i.to_bytes(4, "little")] for i in range(base, min(base + BURST, N))])
        await trio.sleep_forever()

    async def receiver(ctx, *, task_status):
        sock = ctx.socket(zmq.PULL, bind="inproc://pp", rcvhwm=10_000)
        task_status.started()
        expect = 0
        while expect < N:
            for (frame,) in await sock.recv_frames():
                if int.from_bytes(frame, "little") != expect:
                    result["error"] = f"got {int.from_bytes(frame, 'little')} expected {expect}"
                    done.set()
                    return
                expect += 1
        result["count"] = expect
        done.set()

    sup = Supervisor([Child("rx", receiver), Child("tx", sender)])
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        with trio.fail_after(60):
            await done.wait()
        n.cancel_scope.cancel()
    assert result == {"count": N}
    assert runtime.registry["t.tx"].msgs_out == N
    assert runtime.registry["t.rx"].msgs_in == N


async def test_router_dealer_million_in_order_with_replies(runtime, root_ctx, tmp_path):
    endpoint = f"ipc://{tmp_path}/rd.sock"
    done = trio.Event()
    result = {}

    async def router(ctx, *, task_status):
        d = ctx.duplex(zmq.ROUTER, bind=endpoint)
        async with trio.open_nursery() as n:
            await n.start(d.pump)
            task_status.started()
            expect = 0
            while expect < N:
                for ident, frame in await d.recv():
                    assert int.from_bytes(frame, "little") == expect, (frame, expect)
                    expect += 1
                    if expect % 10_000 == 0:  # acknowledge, as the hive will
                        await d.send([ident, expect.to_bytes(4, "little")])
            result["count"] = expect
            await trio.sleep_forever()

    async def dealer(ctx, *, task_status):
        d = ctx.duplex(zmq.DEALER, connect=endpoint)
        async with trio.open_nursery() as n:
            await n.start(d.pump)
            task_status.started()
            acked = 0

            async def acks():
                nonlocal acked
                while acked < N:
                    for (frame,) in await d.recv():
                        acked = int.from_bytes(frame, "little")
                result["acked"] = acked
                done.set()

            n.start_soon(acks)
            for base in range(0, N, BURST):
                await d.send_many([[i.to_bytes(4, "little")] for i in range(base, min(base + BURST, N))])

    sup = Supervisor([Child("router", router), Child("dealer", dealer)])
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        with trio.fail_after(90):
            await done.wait()
        n.cancel_scope.cancel()
    assert result == {"count": N, "acked": N}


class Ping(msgspec.Struct, tag="ping"):
    n: int


async def test_malformed_frame_is_counted_and_the_actor_keeps_running(runtime, root_ctx):
    got = []
    seen = trio.Event()

    async def receiver(ctx, *, task_status):
        sock = ctx.socket(zmq.PULL, bind="inproc://mal", codec=Codec(Ping))
        task_status.started()
        while True:
            got.extend(await sock.recv())
            if len(got) == 2:
                seen.set()

    sup = Supervisor([Child("rx", receiver)])
    push = runtime.zmq.socket(zmq.PUSH)
    push.connect("inproc://mal")
    good = Codec(Ping)
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        push.send(good.encode(Ping(1)))
        push.send(b"\xc1garbage")  # not msgpack
        push.send(msgspec.msgpack.encode([1, {"type": "pong"}]))  # wrong type
        push.send(msgspec.msgpack.encode([9, {"type": "ping", "n": 3}]))  # newer envelope
        push.send(good.encode(Ping(2)))
        with trio.fail_after(5):
            await seen.wait()
        n.cancel_scope.cancel()
    push.close()
    st = runtime.registry["t.rx"]
    assert got == [Ping(1), Ping(2)]
    assert st.malformed == 3
    assert "newer than supported" in st.last_error
    assert st.restarts == 0 and st.exits == 1  # the one exit is our shutdown


@pytest.mark.slow
async def test_idle_actors_spend_no_cpu(runtime, root_ctx, tmp_path):
    async def idle(ctx, *, task_status):
        pull = ctx.socket(zmq.PULL, bind=f"ipc://{tmp_path}/idle.sock")
        d = ctx.duplex(zmq.ROUTER, bind=f"ipc://{tmp_path}/idle2.sock")
        async with trio.open_nursery() as n:
            await n.start(d.pump)
            task_status.started()
            n.start_soon(d.recv)
            await pull.recv()

    sup = Supervisor([Child("a", idle), Child("b", idle.__call__ and _idle_sub)], intensity=0)
    sup.children[1] = Child("b", _idle_sub, args={"path": str(tmp_path)})
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        await trio.sleep(0.2)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await trio.sleep(5)
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        n.cancel_scope.cancel()
    assert cpu / wall < 0.01, f"idle actors used {100 * cpu / wall:.2f}% CPU"


async def _idle_sub(ctx, *, task_status, path):
    sub = ctx.socket(zmq.SUB, connect=f"ipc://{path}/nothing.sock")
    sub.zmq.setsockopt(zmq.SUBSCRIBE, b"")
    task_status.started()
    await sub.recv()


async def test_a_switched_dealer_talks_to_the_new_peer_only_and_its_pump_keeps_up(runtime, root_ctx, tmp_path):
    ends = [f"ipc://{tmp_path}/one.sock", f"ipc://{tmp_path}/two.sock"]
    got: dict[str, list[int]] = {e: [] for e in ends}
    replies: list[bytes] = []

    async def router(ctx, *, task_status, endpoint):
        d = ctx.duplex(zmq.ROUTER, bind=endpoint)
        async with trio.open_nursery() as n:
            await n.start(d.pump)
            task_status.started()
            while True:
                for ident, frame in await d.recv():
                    got[endpoint].append(int.from_bytes(frame, "little"))
                    await d.send([ident, endpoint.encode()])

    sup = Supervisor([Child(f"r{i}", router, args={"endpoint": e}) for i, e in enumerate(ends)])
    async with trio.open_nursery() as n:
        await n.start(sup, root_ctx)
        d = root_ctx.duplex(zmq.DEALER, connect=ends[0])
        await n.start(d.pump)

        async def answers():
            while True:
                replies.extend(f for (f,) in await d.recv())

        n.start_soon(answers)
        with trio.fail_after(10):
            await d.send_many([[i.to_bytes(4, "little")] for i in range(100)])
            while len(replies) < 100:
                await trio.sleep(0.01)
            d.switch(ends[0], ends[1])
            await d.send_many([[i.to_bytes(4, "little")] for i in range(100, 200)])
            while len(replies) < 200:  # a wake-up lost in the switch would hang here
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    assert got[ends[0]] == list(range(100)) and got[ends[1]] == list(range(100, 200))
    assert replies[100:] == [ends[1].encode()] * 100
