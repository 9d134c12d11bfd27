"""A storm of audited opens must never blind the sensor to the events that
matter: while a few processes open distinct audited files as fast as they
can (folding off, the ring saturated for seconds), every fork, exec, exit,
set*id and connect of another process arrives, none of those is dropped,
and the opens that could not be queued are counted exactly."""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from wire import Connect, Exec, Exit, Fork, Notice, Open, SetId

from .conftest import kernel

pytestmark = kernel

FILES = 64
OPENERS = 3
CHILDREN = 150

# Opens FILES distinct files in turn until SIGTERM, then prints how many.
OPENER = """
import os, signal, sys
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
paths = [f"{sys.argv[1]}/f{i}" for i in range(%d)]
n = 0
while not stop:
    for p in paths:
        os.close(os.open(p, os.O_RDONLY))
    n += len(paths)
print(n, flush=True)
""" % FILES

# Forks CHILDREN children, each a set*id call then an exec of /bin/true, and
# makes CHILDREN connects to a closed port; prints the children's pids.
FORKER = """
import json, os, socket, sys
children = []
for i in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        os.setgid(os.getgid())
        os.execv("/bin/true", ["/bin/true", "storm-child"])
    os.waitpid(pid, 0)
    children.append(pid)
    with socket.socket() as s:
        try:
            s.connect(("127.0.0.1", int(sys.argv[2])))
        except OSError:
            pass
print(json.dumps(children), flush=True)
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_an_open_storm_loses_no_process_or_network_event(workdir):
    from kmod import LinuxSensor, Policy

    for i in range(FILES):
        (workdir / f"f{i}").write_text("x")
    policy = Policy.parse(f'[[rule]]\nname="storm"\nhook="open"\naction="audit"\n'
                          f'match.path="{workdir}/**"')
    port = closed_port()
    prefix = f"{workdir}/"
    opens = 0
    notices: list[Notice] = []
    seen: dict[type, list] = {Fork: [], Exec: [], Exit: [], SetId: [], Connect: []}
    watched: set[int] = set()  # the forker and its children
    order: list[tuple[type, int]] = []  # (kind, the child it is about), as drained

    def drain(sensor) -> None:
        nonlocal opens
        sensor.wait(0.05)
        for e in sensor.drain(4096):
            kind = type(e)
            if kind is Open:
                if e.path.startswith(prefix):
                    opens += e.count
            elif kind is Notice:
                if e.what == "drops":
                    notices.append(e)
            elif e.pid in watched and kind in seen:
                seen[kind].append(e)
                order.append((kind, e.child_pid if kind is Fork else e.pid))
                if kind is Fork:
                    watched.add(e.child_pid)

    with LinuxSensor(policy, fold=0) as sensor:
        openers = [subprocess.Popen([sys.executable, "-S", "-c", OPENER, str(workdir)],
                                    stdout=subprocess.PIPE, text=True) for _ in range(OPENERS)]
        try:
            deadline = time.monotonic() + 20
            while sensor.statistics().drops["open"] == 0:  # the ring is full
                assert time.monotonic() < deadline, "the storm never filled the ring"
                drain(sensor)
            before = sensor.statistics().drops["open"]
            forker = subprocess.Popen([sys.executable, "-S", "-c", FORKER, str(CHILDREN), str(port)],
                                      stdout=subprocess.PIPE, text=True)
            watched.add(forker.pid)
            while forker.poll() is None:
                assert time.monotonic() < deadline + 60, "the forker did not finish"
                drain(sensor)
            children = json.loads(forker.stdout.read())
            during = sensor.statistics().drops["open"] - before
        finally:
            for p in openers:
                p.send_signal(signal.SIGTERM)
        calls = sum(int(p.communicate(timeout=10)[0]) for p in openers)
        deadline = time.monotonic() + 10
        while sensor.statistics().pending_bytes:
            assert time.monotonic() < deadline, "the ring never emptied"
            drain(sensor)
        quiet = time.monotonic() + 0.6  # drops are read and noticed at most every 0.5 s
        while time.monotonic() < quiet:
            drain(sensor)
        stats = sensor.statistics()

    assert during > 0, "the storm did not outrun the reader while the forker ran"
    assert {k: n for k, n in stats.drops.items() if n} == {"open": stats.drops["open"]}
    assert opens + stats.drops["open"] == calls
    assert sum(n.count for n in notices) == stats.drops["open"]
    assert all(n.detail.endswith(f"open={n.count}") for n in notices)
    assert sorted(e.child_pid for e in seen[Fork] if e.pid == forker.pid) == sorted(children)
    kids = set(children)
    for kind in (Exec, Exit, SetId):
        assert sorted(e.pid for e in seen[kind] if e.pid in kids) == sorted(children), kind.__name__
    assert all(e.argv == ["/bin/true", "storm-child"] for e in seen[Exec] if e.pid in kids)
    for child in children:  # in the order they happened
        assert [k for k, pid in order if pid == child] == [Fork, SetId, Exec, Exit]
    assert len([e for e in seen[Connect] if e.pid == forker.pid and e.port == port]) == CHILDREN


def test_the_wake_mark_is_within_the_smallest_share():
    """A storm of opens fills only their share: a wake mark above it would
    never be crossed, and the reader would wake only every ``latency``."""
    from kmod import LinuxSensor

    LinuxSensor(ring_size=1 << 20, wake_bytes=128 << 10)
    with pytest.raises(ValueError, match="wake_bytes"):
        LinuxSensor(ring_size=1 << 20, wake_bytes=(128 << 10) + 1)
