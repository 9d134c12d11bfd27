"""Actor functions for supervisor tests; importable by name so that they can
also run as process children."""

import os

import trio


async def forever(ctx, *, task_status, journal=None):
    if journal is not None:
        journal.append(("start", ctx.name))
    task_status.started()
    try:
        await trio.sleep_forever()
    finally:
        if journal is not None:
            journal.append(("stop", ctx.name))


async def crash_after(ctx, *, task_status, delay=0.0, journal=None):
    if journal is not None:
        journal.append(("start", ctx.name))
    task_status.started()
    await trio.sleep(delay)
    raise RuntimeError("boom")


async def return_after(ctx, *, task_status, delay=0.0, journal=None):
    if journal is not None:
        journal.append(("start", ctx.name))
    task_status.started()
    await trio.sleep(delay)


async def fail_to_start(ctx, *, task_status):
    raise OSError("cannot bind")


async def stubborn(ctx, *, task_status, hold=3.0):
    task_status.started()
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await trio.sleep(hold)


async def write_pid(ctx, *, task_status, path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    task_status.started()
    await trio.sleep_forever()


def ignore_sigterm_forever():
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)


async def stubborn_process(ctx, *, task_status, path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    task_status.started()
    await trio.to_thread.run_sync(ignore_sigterm_forever)


async def chatter(ctx, *, task_status, endpoint):
    """Sends a numbered message every 10 ms (a process child, for taps)."""
    import zmq

    sock = ctx.socket(zmq.PUSH, connect=endpoint, sndhwm=100_000)
    task_status.started()
    n = 0
    while True:
        n += 1
        await sock.send_many([[n.to_bytes(4, "little")]])
        await trio.sleep(0.01)


async def slow_start(ctx, *, task_status, delay=1.0):
    await trio.sleep(delay)
    task_status.started()
    await trio.sleep_forever()


async def fail_in_nursery(ctx, *, task_status):
    async with trio.open_nursery():
        raise OSError(98, "Address already in use")  # as a bind does, before started()
