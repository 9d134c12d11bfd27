"""The fast path for the agent's edge rules: events of the kinds they act on
reach the reader as soon as they happen, not in the next batch.

A fork wakes the reader (the first record after a quiet spell does), so the
drain that follows arms the tail timer; an exec 50 ms later falls inside the
batching window and, unless its kind wakes at once, waits for that timer."""

import statistics
import subprocess
import sys
import time

import pytest

from wire import Exec

from .conftest import kernel

pytestmark = kernel

LATENCY = 1.0  # the batching bound, long so that a batched exec stands out

FORK_THEN_EXEC = """
import os, sys, time
if os.fork() == 0:
    time.sleep(0.05)
    os.execv("/bin/true", ["/bin/true", sys.argv[1]])
os.wait()
"""


def exec_delay(sensor, marker: str) -> float:
    """Seconds from the exec to the reader holding its event."""
    while sensor.wait(0):  # start from an empty ring
        sensor.drain()
    child = subprocess.Popen([sys.executable, "-S", "-c", FORK_THEN_EXEC, marker])
    try:
        deadline = time.monotonic() + LATENCY + 3
        while time.monotonic() < deadline:
            if not sensor.wait(0.5):
                continue
            for ev in sensor.drain():
                if type(ev) is Exec and ev.argv[1:] == [marker]:
                    return time.time() - ev.time / 1e9
        raise AssertionError(f"no exec of {marker} in {LATENCY + 3} s")
    finally:
        child.wait(5)


@pytest.fixture
def slow_sensor():
    from kmod import LinuxSensor

    s = LinuxSensor(latency=LATENCY)
    s.start()
    yield s
    s.close()


def test_an_exec_waits_for_the_batch_unless_its_kind_wakes_at_once(slow_sensor):
    batched = [exec_delay(slow_sensor, f"wake-batched-{n}") for n in range(3)]
    slow_sensor.wake_at_once(["exec", "connect"])
    woken = [exec_delay(slow_sensor, f"wake-now-{n}") for n in range(5)]
    assert statistics.median(batched) > LATENCY / 3, batched
    # The median shows the wake; one slow scheduling on a loaded machine
    # must still be well clear of the batching bound.
    assert statistics.median(woken) < LATENCY / 10 and max(woken) < LATENCY / 3, woken
    slow_sensor.wake_at_once([])  # and back to batching
    assert exec_delay(slow_sensor, "wake-batched-again") > LATENCY / 3


def test_an_unknown_kind_is_refused_with_the_known_ones(slow_sensor):
    with pytest.raises(ValueError, match="no such event kind: spawn .*known: exec"):
        slow_sensor.wake_at_once(["exec", "spawn"])
