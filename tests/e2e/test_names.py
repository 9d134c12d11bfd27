"""Names that are not UTF-8, end to end: on a real demo node (kernel sensor,
relay, hive), what any user can name so reaches the store, spelled as the
kernel spells it, and nothing restarts.  Before, a process seeded from /proc
with such a name crashed the relay at each of its events (and its
children's), and a blocked exec of such a name crashed the kmod reader."""

import errno
import os
import shutil
import subprocess
import tempfile

import pytest

from hive import Store
from tests.kmod.conftest import kernel, run_child

from .hosts import wait_until
from .nodes import free_port

pytestmark = kernel


@pytest.fixture
def folders():
    """One folder where execs are allowed (outside /tmp), one where the
    default policy refuses them."""
    allowed = tempfile.mkdtemp(prefix="immune-names-", dir="/var/lib")
    refused = tempfile.mkdtemp(prefix="immune-names-", dir="/tmp")
    yield os.fsencode(allowed), os.fsencode(refused)
    shutil.rmtree(allowed, ignore_errors=True)
    shutil.rmtree(refused, ignore_errors=True)


def stored(db) -> list:
    store = Store(db, readonly=True)
    try:
        return store.events(limit=100_000)
    finally:
        store.close()


def test_names_not_utf8_reach_the_hive_and_nothing_restarts(tmp_path, start_node, folders):
    allowed, refused = folders
    shell = allowed + b"/sh-\xff\xfe"
    shutil.copy("/bin/sh", shell)
    # Started before the node, so that the agent learns of it from /proc.
    proc = subprocess.Popen([shell, "-c", "read go; exec 3</etc/shadow; read done", "name", b"\xfe" * 100_000],
                            stdin=subprocess.PIPE)
    blocked = refused + b"/run-\xff"
    shutil.copy("/bin/true", blocked)
    try:
        node = start_node("demo", tmp_path, "--listen", f"tcp://127.0.0.1:{free_port()}")
        node.wait_ready(timeout=120)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert run_child("exec", os.fsdecode(blocked)).errno == errno.EPERM
        spelled_shell, spelled_blocked = shell.decode(errors="replace"), blocked.decode(errors="replace")

        def arrived() -> bool:
            events = stored(tmp_path / "hive.db")
            opened = any(e.pid == proc.pid and getattr(e, "path", "") == "/etc/shadow" and e.image == spelled_shell
                         for e in events)
            refused_exec = any(getattr(e, "exe", "") == spelled_blocked and e.verdict == "block" for e in events)
            return opened and refused_exec

        wait_until(arrived, timeout=30, what="the shadow read and the refused exec in the store")
        restarted = {a.name: a.restarts for a in node.status().actors if a.restarts}
        assert restarted == {}
        assert node.stop() == 0
    finally:
        proc.kill()
        proc.wait()
