"""Responses in a container's own view, end to end on a demo node: a runc
container started after the agent runs a dropped program from its /tmp;
the sensor refuses it, the hive alerts, and the exec-from-temp playbook's
quarantine moves the container's file, not the host's file of that name."""

import os
import uuid
from pathlib import Path

import pytest

from hive import Store
from hive.playbook import Records
from tests.containers import Container
from tests.kmod.conftest import kernel

from .hosts import wait_until
from .nodes import free_port

pytestmark = kernel


@pytest.fixture
def demo(tmp_path, start_node):
    node = start_node("demo", tmp_path / "node", "--listen", f"tcp://127.0.0.1:{free_port()}")
    node.wait_ready(timeout=120)
    yield node
    assert node.stop() == 0


def test_the_playbook_quarantines_the_containers_file_end_to_end(demo, tmp_path):
    name = f"/tmp/immune-e2e-{uuid.uuid4().hex[:12]}"
    host = Path(name)
    host.write_bytes(b"the host's own file")  # the same name on the host: never touched
    try:
        with Container(tmp_path / "c", ["sleep", "300"]) as c:
            ran = c.run("sh", "-c", f"cat /bin/busybox > {name} && echo {c.id} >> {name} && chmod +x {name} "
                                    f"&& {name} true")
            assert ran.returncode == 126 and "Operation not permitted" in ran.stderr
            inside = c.rootfs / name.lstrip("/")

            def quarantined():
                return [a for a in Records(Store(tmp_path / "node" / "hive.db").db).actions()
                        if a.playbook == "exec-from-temp" and a.action == "quarantine_file"
                        and a.params.get("path") == name]
            wait_until(lambda: quarantined() and quarantined()[0].state not in ("sent", "queued"),
                       what="the quarantine's result")
            action = quarantined()[0]
            assert action.state == "done", action.result
            # whose file: the refused caller (gone by now) and its mount namespace, from the kernel
            assert action.params["pid"] and action.params["mntns"]
            assert not inside.exists()
            assert host.read_bytes() == b"the host's own file"
            assert f"(in the root of pid {c.pid} " in action.result
            # the refused exec as the hive stored it: the container's identity and view
            store = Store(tmp_path / "node" / "hive.db")
            [refused] = [e for e in store.events(kind="exec", limit=1000)
                         if e.filename == name and e.verdict == "block"]
            assert (refused.container, refused.container_runtime, refused.container_name) == (c.id, "runc", c.id)
            host_mntns = os.stat("/proc/self/ns/mnt").st_ino
            assert refused.mntns == os.stat(f"/proc/{c.pid}/ns/mnt").st_ino != host_mntns
            assert refused.pidns == os.stat(f"/proc/{c.pid}/ns/pid").st_ino and 1 < refused.vpid < 1000
            # the built-in rule's alert and SigmaHQ's (both run by default), each with the container
            alerts = [a for a in store.alerts(limit=1000) if any(e.filename == name for e in a.events)]
            assert alerts and all(a.events[0].container == c.id for a in alerts), alerts
    finally:
        host.unlink()
