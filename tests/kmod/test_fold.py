"""A thread's repeated identical audited opens are folded into one event with
a count, and every open is in exactly one event's count: whether the thread
then goes quiet, exits at once, or alternates between files."""

import subprocess
import sys
import time

import pytest

from kmod import verdict_line
from wire import Open

from .conftest import collect, flush, kernel

pytestmark = kernel


def opener(script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-S", "-c", "import os, sys, time\n" + script])


def opens_of(sensor, pid: int, total: int, timeout: float = 6.0) -> list[Open]:
    return collect(sensor, lambda e: isinstance(e, Open) and e.pid == pid,
                   until=lambda evs: sum(e.count for e in evs) >= total, timeout=timeout)


LOOP = "for i in range({n}):\n    os.close(os.open({path!r}, os.O_RDONLY))\n"


@pytest.fixture(scope="module")
def sensor():
    from kmod import LinuxSensor

    with LinuxSensor(fold=0.5) as s:
        yield s


def test_a_thread_gone_quiet_sends_its_folds(sensor):
    flush(sensor)
    p = opener(LOOP.format(n=1000, path="/etc/shadow") + "time.sleep(5)\n")
    try:
        t0 = time.monotonic()
        events = opens_of(sensor, p.pid, 1000)
        took = time.monotonic() - t0
    finally:
        p.kill()
        p.wait()
    assert sum(e.count for e in events) == 1000
    assert len(events) <= 4  # the first, then folds: not a thousand events
    assert events[0].count == 1 and events[0].result >= 0
    assert all(e.path == "/etc/shadow" and e.rule == events[0].rule for e in events)
    folded = events[-1]
    assert folded.count > 1 and folded.tid == p.pid and folded.ppid == events[0].ppid
    assert (folded.comm, folded.uid, folded.euid) == (events[0].comm, 0, 0)
    assert folded.time >= events[0].time
    assert verdict_line(folded) == (f"IMMUNE: [AUDIT] open /etc/shadow (pid={p.pid}, "
                                    f"{folded.count} times)")
    assert took < 4  # the flush came about `fold` after the last report, not at exit


def test_a_thread_that_exits_sends_its_folds(sensor):
    flush(sensor)
    p = opener(LOOP.format(n=500, path="/etc/shadow"))
    assert p.wait(10) == 0
    events = opens_of(sensor, p.pid, 500)
    assert sum(e.count for e in events) == 500 and len(events) <= 4


def test_alternating_files_are_each_counted(sensor):
    flush(sensor)
    p = opener("for i in range(200):\n"
               "    os.close(os.open('/etc/shadow', os.O_RDONLY))\n"
               "    os.close(os.open('/etc/shadow', os.O_RDONLY))\n"
               "    os.close(os.open('/etc/gshadow', os.O_RDONLY))\n")
    assert p.wait(10) == 0
    events = opens_of(sensor, p.pid, 600)
    per_path: dict[str, int] = {}
    for e in events:
        per_path[e.path] = per_path.get(e.path, 0) + e.count
    assert per_path == {"/etc/shadow": 400, "/etc/gshadow": 200}


def test_a_different_outcome_is_not_folded(sensor):
    """A refused open right after granted ones of the same file is news."""
    flush(sensor)
    p = opener(LOOP.format(n=50, path="/etc/shadow")
               + "os.setuid(65534)\n"
               + "try:\n    os.open('/etc/shadow', os.O_RDONLY)\nexcept PermissionError:\n    pass\n"
               + "time.sleep(5)\n")
    try:
        events = collect(sensor, lambda e: isinstance(e, Open) and e.pid == p.pid,
                         until=lambda evs: any(e.result < 0 for e in evs))
    finally:
        p.kill()
        p.wait()
    refused = next(e for e in events if e.result < 0)
    assert refused.count == 1 and refused.path == "/etc/shadow" and refused.euid == 65534


def test_fold_zero_reports_every_open():
    from kmod import LinuxSensor

    with LinuxSensor(fold=0) as s:
        p = opener(LOOP.format(n=300, path="/etc/shadow"))
        assert p.wait(10) == 0
        events = opens_of(s, p.pid, 300)
    assert len(events) == 300 and {e.count for e in events} == {1}
