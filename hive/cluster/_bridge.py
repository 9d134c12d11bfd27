"""trio <-> asyncio: an asyncio event loop on a thread of its own.

nats-py is an asyncio client and has no trio backend.  Rather than a second
event loop in the trio thread, its client lives in an asyncio loop on a
dedicated thread; trio tasks hand it coroutines with :meth:`Bridge.run`
and are woken through the trio token when they finish, so no trio worker
thread is held while a request is in flight.  Only the asyncio thread
touches the client; trio only ever sees results.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class BridgeClosed(Exception):
    """The asyncio loop is gone (closed, or never started)."""


class Bridge:
    """One asyncio loop on one daemon thread.  ``async with Bridge():`` in
    trio starts it and, on the way out, cancels what still runs in it and
    joins the thread."""

    def __init__(self, name: str = "asyncio") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._closed = False

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def start(self) -> None:
        self._thread.start()

    async def __aenter__(self) -> Bridge:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._thread.is_alive():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            done = asyncio.run_coroutine_threadsafe(cancel_all(), self.loop)
            await trio.to_thread.run_sync(done.result, 5.0)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass  # a task that will not end: the loop stops with it pending
        self.loop.call_soon_threadsafe(self.loop.stop)
        await trio.to_thread.run_sync(self._thread.join, 5.0)

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` in the asyncio loop and return its result here.
        A cancelled trio caller cancels the asyncio task."""
        if self._closed or not self._thread.is_alive():
            raise BridgeClosed("the asyncio loop is not running")
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()

        def wake(_: object) -> None:
            try:
                token.run_sync_soon(finished.set)
            except trio.RunFinishedError:
                pass  # the trio side is gone; nobody waits

        try:
            fut = asyncio.run_coroutine_threadsafe(_call(fn, args), self.loop)
        except RuntimeError as e:  # the loop closed between the check and here
            raise BridgeClosed(str(e)) from None
        fut.add_done_callback(wake)
        try:
            await finished.wait()
        except BaseException:
            fut.cancel()
            raise
        return fut.result()


async def _call(fn: Callable[..., Awaitable[T]], args: tuple) -> T:
    return await fn(*args)
