"""Never hang the host: with the fanotify responder deliberately stalled, an
exec elsewhere on the machine still completes within the bound, the watchdog
says so loudly, and blocking resumes once the responder answers again."""

import errno
import logging
import subprocess
import threading
import time

import pytest

from kmod import LinuxSensor, Policy
from wire import Notice

from .conftest import (_REASON, collect, dropped_script, executable_copy, free_port, kernel,
                       private_rules, run_child)

pytestmark = kernel

BOUND = 0.25


@pytest.fixture
def sensor(workdir):
    """Blocks exec under workdir/blocked only (see ``private_rules``)."""
    if _REASON is not None:
        pytest.skip(_REASON)
    policy = Policy.parse(private_rules(workdir / "blocked", free_port()))
    with LinuxSensor(policy, watchdog_bound=BOUND) as s:
        yield s


def test_stalled_responder_fails_open_within_the_bound(sensor, workdir, caplog):
    script = dropped_script(workdir / "blocked")
    first = executable_copy(workdir, "first")    # fresh inodes: nothing cached
    second = executable_copy(workdir, "second")
    assert run_child("exec", str(script)).errno == errno.EPERM  # armed

    sensor.guard.stall(1.5)
    stalled = threading.Thread(target=subprocess.run, args=([str(first)],))
    with caplog.at_level(logging.CRITICAL, logger="kmod.fanotify"):
        stalled.start()
        time.sleep(0.1)  # the responder now sits on the first exec
        began = time.monotonic()
        subprocess.run([str(second)], check=True, timeout=5)
        took = time.monotonic() - began
        stalled.join(timeout=5)
    print(f"exec with the responder stalled took {took * 1000:.0f} ms")
    assert took < BOUND, f"exec took {took * 1000:.0f} ms with the responder stalled"
    assert not stalled.is_alive()
    assert "FAILING OPEN" in caplog.text
    assert sensor.statistics().watchdog == "failed-open"
    notices = collect(sensor, lambda e: isinstance(e, Notice))
    assert notices[0].what == "watchdog-fail-open"

    # failed open means open: the dropped script runs while the responder is stuck
    assert run_child("exec", str(script)).returncode == 0

    # the stall ends, the watchdog puts the marks back, blocks resume
    resumed = collect(sensor, lambda e: isinstance(e, Notice) and e.what == "watchdog-resumed",
                      timeout=5)
    assert resumed and sensor.statistics().watchdog == "armed"
    assert run_child("exec", str(script)).errno == errno.EPERM
    stats = sensor.statistics().fanotify
    assert stats["fail_opens"] == 1 and stats["failed_open_answers"] >= 2
