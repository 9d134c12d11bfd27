"""Binding an inproc name a previous run of an actor still holds: the sync
path waits only briefly, ``Context.bind`` waits without blocking trio."""

import time

import pytest
import trio
import zmq

from actors import Context, Runtime


def fresh_name() -> str:
    return f"inproc://bind-test-{time.monotonic_ns()}"


async def test_a_name_released_by_a_closed_socket_is_bound_again_at_once():
    ctx = Context(Runtime(), "t")
    name = fresh_name()
    for _ in range(200):  # as restarted actors do, back to back
        sock = await ctx.bind(ctx.socket(zmq.PULL), name)
        sock.close()
    ctx.close()


async def test_waiting_for_a_held_name_leaves_the_trio_thread_free():
    ctx = Context(Runtime(), "t")
    name = fresh_name()
    holder = ctx.socket(zmq.PULL, bind=name)
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    async with trio.open_nursery() as n:
        n.start_soon(tick)
        began = trio.current_time()
        with pytest.raises(zmq.ZMQError) as err:
            await ctx.bind(ctx.socket(zmq.PULL), name, wait=0.3)
        waited = trio.current_time() - began
        n.cancel_scope.cancel()
    assert err.value.errno == zmq.EADDRINUSE
    assert 0.3 <= waited < 1.0 and ticks >= 15  # the other task ran all along
    holder.close()
    ctx.close()


async def test_the_blocking_bind_gives_up_soon():
    ctx = Context(Runtime(), "t")
    name = fresh_name()
    ctx.socket(zmq.PULL, bind=name)
    began = time.monotonic()
    with pytest.raises(zmq.ZMQError):
        ctx.socket(zmq.PULL, bind=name)
    assert time.monotonic() - began < 0.5  # was 2 s on the trio thread
    ctx.close()
