import asyncio
import threading

import pytest
import trio

from hive.cluster import Bridge, BridgeClosed


async def test_runs_coroutines_in_its_own_thread_and_returns_results():
    async with Bridge() as bridge:
        async def where(x):
            await asyncio.sleep(0)
            return threading.current_thread().name, x * 2

        name, doubled = await bridge.run(where, 21)
        assert doubled == 42
        assert name == "asyncio" and name != threading.current_thread().name


async def test_exceptions_cross_over():
    async with Bridge() as bridge:
        async def fail():
            raise ValueError("from asyncio")

        with pytest.raises(ValueError, match="from asyncio"):
            await bridge.run(fail)


async def test_a_cancelled_trio_caller_cancels_the_asyncio_task():
    cancelled = threading.Event()
    async with Bridge() as bridge:
        async def forever():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        with trio.move_on_after(0.2):
            await bridge.run(forever)
        assert await trio.to_thread.run_sync(cancelled.wait, 5.0)


async def test_many_concurrent_calls_without_a_worker_thread_each():
    async with Bridge() as bridge:
        results = []

        async def one(i):
            async def echo():
                await asyncio.sleep(0.01)
                return i
            results.append(await bridge.run(echo))

        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                for i in range(500):  # far more than trio's 40 worker threads
                    n.start_soon(one, i)
        assert sorted(results) == list(range(500))


async def test_closing_stops_the_thread_and_refuses_more():
    bridge = Bridge()
    async with bridge:
        async def hang():
            await asyncio.sleep(3600)

        async with trio.open_nursery() as n:
            n.start_soon(bridge.run, hang)
            await trio.sleep(0.05)
            n.cancel_scope.cancel()
    assert not bridge._thread.is_alive()
    with pytest.raises(BridgeClosed):
        async def nothing():
            return None
        await bridge.run(nothing)
