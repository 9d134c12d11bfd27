"""The seed's four verdict lines, reproduced on the real kernel with real
processes: the blocked calls fail with EPERM, each line names the real pid."""

import errno
import os
from pathlib import Path

import pytest

from kmod import verdict_line
from wire import Connect, Exec, Open, SetId

from .conftest import collect, flush, kernel, run_child

pytestmark = kernel


def line_for(sensor, pid: int, kind) -> tuple[str, object]:
    events = collect(sensor, lambda e: isinstance(e, kind) and e.pid == pid and verdict_line(e))
    return verdict_line(events[0]), events[0]


@pytest.fixture
def test_sh():
    path = Path("/tmp/test.sh")
    path.write_text("#!/bin/sh\necho should not run\n")
    path.chmod(0o755)
    yield path
    path.unlink(missing_ok=True)


def test_exec_of_tmp_test_sh_is_blocked(sensor, test_sh):
    flush(sensor)
    child = run_child("exec", str(test_sh))
    assert child.errno == errno.EPERM
    assert "should not run" not in child.stdout
    line, ev = line_for(sensor, child.pid, Exec)
    assert line == f"IMMUNE: [BLOCKED] exec /tmp/test.sh (pid={child.pid})"
    assert (ev.rule, ev.result) == ("exec-from-temp", -errno.EPERM)


def test_connect_to_4444_is_blocked(sensor):
    flush(sensor)
    child = run_child("connect", "127.0.0.1", "4444")
    assert child.errno == errno.EPERM
    line, ev = line_for(sensor, child.pid, Connect)
    assert line == f"IMMUNE: [BLOCKED] connect 127.0.0.1:4444 (pid={child.pid})"
    assert ev.rule == "connect-c2-ports"


def test_reading_etc_shadow_is_audited(sensor):
    flush(sensor)
    child = run_child("open", "/etc/shadow")
    assert child.errno == 0
    line, ev = line_for(sensor, child.pid, Open)
    assert line == f"IMMUNE: [AUDIT] open /etc/shadow (pid={child.pid})"
    assert ev.result >= 0 and ev.rule == "open-credentials"


def test_setuid_is_audited(sensor):
    assert os.geteuid() == 0
    flush(sensor)
    child = run_child("setuid", "65534")
    assert child.errno == 0
    line, ev = line_for(sensor, child.pid, SetId)
    assert line == f"IMMUNE: [AUDIT] setuid 0->65534 (pid={child.pid})"
    assert ev.result == 0 and ev.rule == "setid-change"
