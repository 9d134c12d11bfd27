"""Responses in a container's own view, with real runc containers
(tests/containers.py): kills across pid namespaces, quarantine of the
container's file (not the host's), isolate_container, and evidence of a
process that has already exited.

Tests that load the kernel sensor are marked ``kernel`` (run them under
``flock /tmp/immune-kernel.lock``); the others need root, runc and
busybox-static only."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

import wire
from agent.response import Executor, Refused, ResponseError, SensorSlot, quarantine_file, unpack, verify_bundle
from agent.response._errors import Gone
from agent.response._view import AGENT_VIEW, find_view, mount_ns
from tests.containers import Container

from .test_response_kernel import Clock
from .test_response_process import alive, children_of, detached, run, wait_started

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")


def test_a_containers_process_tree_is_killed(tmp_path):
    """The sensor reports host pids; the tree lives in the container's pid
    namespace (busybox sh runs its last command in place: sleep 301 is the
    shell, sleep 300 its child)."""
    executor = Executor(tmp_path / "agent")
    with Container(tmp_path, ["sleep", "300"]) as c:
        runc = detached(f"runc exec {c.id} sh -c 'sleep 300 & sleep 301'")
        [shell] = children_of(runc)
        wait_started(shell, "sleep")
        [child] = children_of(shell)
        r = run(executor, "kill_process", pid=shell, tree=True, exe="/bin/busybox")
        assert r.ok, r.detail
        assert r.data["killed"] == sorted([shell, child])
        assert not alive(shell) and not alive(child)
        assert alive(c.pid)  # the container's init is not in that tree


def chrooted(where: Path, command: str) -> int:
    """``command`` (sh -c) chrooted in a fresh overlayfs in its own mount
    namespace, as tests.containers.overlay_chroot, but left running: the
    pid of its shell."""
    from tests.containers import busybox_rootfs

    lower = busybox_rootfs(where / "lower")
    for d in ("upper", "work", "merged"):
        (where / d).mkdir(exist_ok=True)
    script = (f"mount -t overlay overlay -o lowerdir={lower},upperdir={where}/upper,workdir={where}/work "
              f"{where}/merged && exec chroot {where}/merged /bin/sh -c \\\"{command}\\\"")
    return detached(f"exec unshare --mount --propagation private sh -c \"{script}\"")


def test_a_chrooted_process_tree_is_killed_by_the_exe_it_runs_in_its_root(tmp_path):
    """The playbook's ``exe`` is the sensor's, a path in the process's own
    root (/bin/busybox); readlink of /proc/PID/exe from the host's root
    names the same file by another path (the overlay's mount point)."""
    executor = Executor(tmp_path / "agent")
    shell = chrooted(tmp_path, "sleep 300 & sleep 301")
    wait_started(shell, "sleep")
    try:
        [child] = children_of(shell)
        r = run(executor, "kill_process", pid=shell, tree=True, exe="/bin/other")
        assert not r.ok and r.detail.startswith(f"refused: pid {shell} runs ")  # still checked
        r = run(executor, "kill_process", pid=shell, tree=True, exe="/bin/busybox")
        assert r.ok, r.detail
        assert r.data["killed"] == sorted([shell, child])
    finally:
        kill_namespace(shell)


def kill_namespace(pid: int) -> None:
    """SIGKILL every process in ``pid``'s mount namespace (a test's leftovers)."""
    try:
        ns = os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return
    if ns in (os.readlink("/proc/1/ns/mnt"), os.readlink("/proc/self/ns/mnt")):
        return  # gone, and its pid taken by a host process
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.readlink(f"/proc/{name}/ns/mnt") == ns:
                os.kill(int(name), 9)
        except OSError:
            continue


def exited_in(c: Container, script: str = "exit 0") -> int:
    """The host pid of a process that ran ``script`` in the container and exited."""
    runc = detached(f"runc exec {c.id} sh -c 'sleep 0.3; {script}'")
    [pid] = children_of(runc)
    deadline = time.monotonic() + 5
    while alive(pid):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return pid


def test_a_containers_file_is_quarantined_not_the_hosts(tmp_path):
    """The same name on the host and in the container: the container's file
    moves, the host's stays; also when the pid named has exited (resolved
    through the container's other process), and never through a symlink
    out of the container's root."""
    name = f"/tmp/immune-q-{uuid.uuid4().hex[:12]}"
    host = Path(name)
    host.write_bytes(b"the host's own file")
    try:
        with Container(tmp_path, ["sleep", "300"]) as c:
            inside = c.rootfs / name.lstrip("/")
            inside.write_bytes(b"the container's file")
            gone = exited_in(c)
            mntns = mount_ns(c.pid)
            view = find_view(gone, container=c.id, mntns=mntns)
            assert view.pid == c.pid and view.how == f"pid {c.pid} of container {c.id}"
            side = quarantine_file(name, tmp_path / "q", command="q1", view=view)
            assert not inside.exists() and host.read_bytes() == b"the host's own file"
            assert Path(side["path"]).read_bytes() == b"the container's file"
            assert side["original"] == name and side["view"] == {"pid": c.pid, "how": view.how}
            # a link inside that points at the host's file resolves in the container's root
            (c.rootfs / "tmp" / "link").symlink_to(name)
            (c.rootfs / "tmp" / "up").symlink_to("../../../../../../../..")
            with pytest.raises(ResponseError, match=f"does not exist in the root of pid {c.pid}"):
                quarantine_file(f"/tmp/up{name}", tmp_path / "q", command="q2", view=view)
            with pytest.raises(Refused, match="is a symbolic link"):
                quarantine_file("/tmp/link", tmp_path / "q", command="q3", view=view)
            assert host.read_bytes() == b"the host's own file"
    finally:
        host.unlink()


def test_a_view_no_live_process_has_is_a_clear_failure(tmp_path):
    with Container(tmp_path, ["sleep", "300"]) as c:
        gone = exited_in(c)
        mntns = mount_ns(c.pid)
        assert find_view(gone, mntns=mntns).pid == c.pid  # the mount namespace alone finds it
    with pytest.raises(Gone, match=f"no live process has the view of pid {gone} and container {c.id}"):
        find_view(gone, container=c.id)
    with pytest.raises(Gone, match=rf"mount namespace mnt:\[{mntns}\]"):
        find_view(gone, mntns=mntns)
    with pytest.raises(Gone, match=f"no live process has the view of pid {gone}:"):
        find_view(gone)  # no table to find its ancestors in, nothing to check a guess against
    assert find_view() is AGENT_VIEW  # a command that names nobody: the agent's own root, as before


# ---- with the kernel sensor ------------------------------------------------------


@pytest.fixture
def netns():
    name = f"immc{os.getpid()}-{uuid.uuid4().hex[:4]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture
def sensor(netns):
    """A sensor for the processes of ``netns`` only, refusing execs under /tmp."""
    from kmod import LinuxSensor, Policy, Scope

    require_kernel()
    base = Policy.parse('[[rule]]\nname = "exec-from-temp"\nhook = "exec"\naction = "block"\n'
                        'match.path = ["/tmp/**"]\n')
    s = LinuxSensor(base, scope=Scope.netns(f"/run/netns/{netns}"))
    s.start()
    slot = SensorSlot()
    slot.attach(s)
    try:
        yield slot
    finally:
        s.close()


def require_kernel() -> None:
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("kernel tests need a kernel with BTF")


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.mark.kernel
def test_the_playbook_quarantines_the_containers_file(netns, sensor, tmp_path):
    """exec-from-temp in a container: the guard refuses /tmp/x by the path
    the container sees, the playbook's quarantine_file names the process,
    its mount namespace and container, and the container's /tmp/x is the
    one moved; the host's /tmp/x (same name) is untouched, and the digest's
    exec is denied in the container afterwards."""
    from hive.playbook import DEFAULT_PLAYBOOKS, PlaybookEngine, parse_playbook

    name = f"/tmp/immune-q-{uuid.uuid4().hex[:12]}"
    host = Path(name)
    host.write_bytes(b"the host's own file")
    try:
        with Container(tmp_path, ["sleep", "300"], netns=f"/run/netns/{netns}") as c:
            made = c.run("sh", "-c", f"cat /bin/busybox > {name} && echo {c.id} >> {name} && chmod +x {name} "
                                     f"&& {name} true")
            assert made.returncode == 126 and "Operation not permitted" in made.stderr  # refused by /tmp/**
            caller = exited_in(c, f"{name} true")
            inside = c.rootfs / name.lstrip("/")
            kept = inside.read_bytes()
            event = wire.Exec(pid=caller, agent="web1", filename=name, exe=name, result=-1, verdict="block",
                              container=c.id, mntns=mount_ns(c.pid))
            engine = PlaybookEngine([parse_playbook((DEFAULT_PLAYBOOKS / "exec_from_temp.yml").read_text())])
            d = engine.on_alert(wire.Alert(id="al-1", rule_id="f0e573d2-6313-4ebf-acd3-66449483759d", title="t",
                                           agent="web1", events=[event]))
            [(agent, cmd)] = d.send  # collect_evidence is skipped: the exec was refused
            assert (cmd.action, cmd.path, cmd.pid, cmd.container, cmd.mntns) == (
                "quarantine_file", name, caller, c.id, event.mntns)
            executor = Executor(tmp_path / "agent", slot=sensor)
            executor.prepare(cmd)  # as the executor actor does: the file's half on a worker thread
            r = executor.execute(cmd)
            assert r.ok, r.detail
            assert not inside.exists() and host.read_bytes() == b"the host's own file"
            assert Path(r.data["path"]).read_bytes() == kept
            assert r.data["view"]["pid"] == c.pid and f"(in the root of pid {c.pid} of container {c.id})" in r.detail
            # its content is refused under any name in the container, even where /tmp is not
            again = c.run("sh", "-c", f"cat /bin/busybox > /root/y && echo {c.id} >> /root/y && chmod +x /root/y "
                                      "&& /root/y true")
            assert again.returncode == 126 and "Operation not permitted" in again.stderr
    finally:
        host.unlink()


# ---- isolate_container -------------------------------------------------------------


class Listener:
    """A TCP listener on the host, accepting in a thread; ``hold`` keeps
    the connections open (else each is closed at once)."""

    def __init__(self, address: str, hold: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        self.sock.bind((address, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.hold = hold
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn = self.sock.accept()[0]
            except OSError:
                return
            self.held.append(conn) if self.hold else conn.close()

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.sock.close()


def reaches(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture
def veth():
    """A network namespace joined to the host by a veth pair: the host's end
    10.79.N.1 and fd79:N::1, the namespace's (eth0) 10.79.N.2 and fd79:N::2
    with default routes through the host's end."""
    n = int.from_bytes(os.urandom(1), "big") % 250 + 1
    tag = uuid.uuid4().hex[:6]
    name, host_if = f"immi-{tag}", f"imh{tag}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "addr", "add", f"10.79.{n}.1/24", "dev", host_if)
        sh("ip", "addr", "add", f"fd79:{n}::1/64", "dev", host_if, "nodad")
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", name, "addr", "add", f"10.79.{n}.2/24", "dev", "eth0")
        sh("ip", "-n", name, "addr", "add", f"fd79:{n}::2/64", "dev", "eth0", "nodad")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", name, "route", "add", "default", "via", f"10.79.{n}.1")
        sh("ip", "-n", name, "-6", "route", "add", "default", "via", f"fd79:{n}::1")
        yield name, f"10.79.{n}.1", f"fd79:{n}::1"
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def network(netns: str) -> tuple[str, str, str]:
    """What the namespace's links, addresses and routes are (to compare)."""
    def ip(*args: str) -> str:
        return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=True).stdout

    return (ip("-br", "link"), ip("-br", "addr"), ip("route", "show", "table", "all"))


def test_isolate_container_cuts_only_its_network_and_unisolate_restores_it(veth, tmp_path):
    netns, host_ip, host_ip6 = veth
    server, holder, local = Listener(host_ip), Listener(host_ip, hold=True), Listener("127.0.0.1")
    server6 = Listener(host_ip6)
    clock = Clock()
    executor = Executor(tmp_path / "agent", clock=clock, grace=30)
    try:
        with Container(tmp_path, ["sleep", "300"], netns=f"/run/netns/{netns}") as c:
            def connects(address: str, port: int) -> bool:
                return c.run("nc", "-w", "2", address, str(port), timeout=10).returncode == 0

            assert connects(host_ip, server.port) and connects(host_ip6, server6.port)
            before = network(netns)
            talker = subprocess.Popen(["runc", "exec", c.id, "nc", host_ip, str(holder.port)],
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 5
            while not holder.held:
                assert time.monotonic() < deadline, "the container never connected"
                time.sleep(0.02)

            time.sleep(0.2)
            assert talker.poll() is None  # connected, waiting for its input
            r = run(executor, "isolate_container", container=c.id, ttl=60)
            assert r.ok, r.detail
            assert r.data["links"] == ["eth0"] and r.data["id"] == c.id
            assert f"container {c.id} cut off in its network namespace" in r.detail
            assert not connects(host_ip, server.port) and not connects(host_ip6, server6.port)
            talker.wait(timeout=5)  # its open connection was reset, not left to time out
            # the host's network is untouched: loopback, its own end of the veth
            assert reaches("127.0.0.1", local.port) and reaches(host_ip, server.port)
            # a second isolation of the same container changes nothing
            again = run(executor, "isolate_container", container=c.id)
            assert again.ok and again.detail == f"container {c.id} was already isolated (by {r.command})"

            # the hive's revert puts back exactly what was there: links, v6 address, both default routes
            u = run(executor, "unisolate_container", container=c.id)
            assert u.ok, u.detail
            assert network(netns) == before
            assert connects(host_ip, server.port) and connects(host_ip6, server6.port)
            assert run(executor, "unisolate_container", container=c.id).detail == f"container {c.id} was not isolated"

            # without the hive, the agent lifts it itself, a grace period after its ttl
            assert run(executor, "isolate_container", container=c.id, ttl=60).ok
            clock.t += 89
            assert executor.expire_containers() == []
            clock.t += 1
            assert executor.expire_containers() == [c.id]
            assert network(netns) == before and connects(host_ip, server.port)
    finally:
        for listener in (server, server6, holder, local):
            listener.close()


def test_isolate_container_refuses_the_hosts_network_and_an_unknown_container(tmp_path):
    executor = Executor(tmp_path / "agent")
    host = f"immh-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "attach", host, str(os.getpid()))  # a name for the host's own namespace, to join it
    try:
        with Container(tmp_path, ["sleep", "300"], netns=f"/run/netns/{host}") as c:
            r = run(executor, "isolate_container", container=c.id)
            assert not r.ok and r.detail == (f"refused: container {c.id} shares the host's network namespace; "
                                             "cutting it would cut the host: isolate_host instead")
    finally:
        sh("ip", "netns", "del", host)  # the name only: the host's namespace lives on
    r = run(executor, "isolate_container", container=c.id)
    assert not r.ok and r.detail == f"no container {c.id} runs on this host (no process of it found)"


def test_a_container_isolation_survives_an_agent_restart(veth, tmp_path):
    netns, host_ip, _ = veth
    with Container(tmp_path, ["sleep", "300"], netns=f"/run/netns/{netns}") as c:
        before = network(netns)
        assert run(Executor(tmp_path / "agent"), "isolate_container", container=c.id).ok
        fresh = Executor(tmp_path / "agent")
        fresh.restore()
        u = run(fresh, "unisolate_container", container=c.id)
        assert u.ok, u.detail
        assert network(netns) == before


# ---- evidence of a process that has exited ------------------------------------------


def test_evidence_of_a_process_that_exited_in_a_container(tmp_path):
    """The process ran a dropped program from the container's /tmp and
    exited before the evidence was taken: the bundle holds what the process
    table knew (from the sensor's exec: image, command line, digest, parents,
    container), a copy of the executable from the container's root, or from
    another process still running it once the file is deleted, and the
    manifest names what was missing."""
    from agent import ProcessTable

    table = ProcessTable()
    executor = Executor(tmp_path / "agent", table=table)
    with Container(tmp_path, ["sleep", "300"]) as c:
        made = c.run("sh", "-c", f"cat /bin/busybox > /tmp/busybox && echo {c.id} >> /tmp/busybox "
                                 "&& chmod +x /tmp/busybox")
        assert made.returncode == 0, made.stderr
        dropped = (c.rootfs / "tmp" / "busybox").read_bytes()
        runc = detached(f"runc exec {c.id} /tmp/busybox sleep 1")
        [pid] = children_of(runc)
        wait_started(pid, "busybox")
        # what the relay does with the sensor's events
        table.enrich(wire.Exec(pid=pid, ppid=runc, filename="/tmp/busybox", exe="/tmp/busybox",
                               argv=["/tmp/busybox", "sleep", "1"]))
        while alive(pid):
            time.sleep(0.05)
        table.enrich(wire.Exit(pid=pid, ppid=runc))

        r = run(executor, "collect_evidence", pid=pid)
        assert r.ok, r.detail
        m = r.data["manifest"]
        assert r.detail.startswith(f"pid {pid} had exited: 2 files from what the agent knew of it")
        assert set(m["files"]) == {"process.json", "exe"}
        assert set(m["missing"]) == {"status", "stat", "cmdline", "environ", "maps", "limits", "cgroup",
                                     "fds.json", "sockets.json", "cwd", "root"}
        assert "kept on the agent" in r.detail  # busybox: too large to travel
        bundle = unpack(Path(r.data["archive_path"]).read_bytes(), tmp_path / "hive")
        assert verify_bundle(bundle) == []
        assert (bundle / "exe").read_bytes() == dropped
        info = json.loads((bundle / "process.json").read_text())
        assert (info["image"], info["cmdline"], info["sha256"]) == (
            "/tmp/busybox", "/tmp/busybox sleep 1", hashlib.sha256(dropped).hexdigest())
        assert info["container"]["id"] == c.id and info["parents"][0]["pid"] == runc
        assert info["exe_copy"]["from"].startswith(f"/tmp/busybox in the root of pid {c.pid} of container {c.id}")
        assert info["exe_copy"]["verified"] is True

        # deleted from disk, but another process still runs it: copied from there
        keeper = children_of(detached(f"runc exec {c.id} /tmp/busybox sleep 300"))[0]
        wait_started(keeper, "busybox")
        assert c.run("rm", "/tmp/busybox").returncode == 0
        r = run(executor, "collect_evidence", pid=pid)
        assert r.ok, r.detail
        bundle = Path(r.data["bundle"])
        assert (bundle / "exe").read_bytes() == dropped
        info = json.loads((bundle / "process.json").read_text())
        assert info["exe_copy"]["from"] == f"/proc/{keeper}/exe, which pid {keeper} runs"

        # and once nothing has it any more, the manifest says so
        os.kill(keeper, 9)
        while alive(keeper):
            time.sleep(0.02)
        r = run(executor, "collect_evidence", pid=pid)
        assert r.ok and "exe" not in r.data["manifest"]["files"]
        assert r.data["manifest"]["missing"]["exe"].startswith("no copy of its executable was found")


@pytest.mark.kernel
def test_block_exec_by_path_holds_the_path_the_container_sees(netns, sensor, tmp_path):
    """No resolution needed: the guard names a file of a container's root
    by its path inside (the kernel's d_path of a mount the agent cannot
    reach starts at that mount's root), so a block of /root/a/busybox
    refuses the container's file of that path, and its other files still run."""
    executor = Executor(tmp_path / "agent", slot=sensor)
    with Container(tmp_path, ["sleep", "300"], netns=f"/run/netns/{netns}") as c:
        for d in ("a", "b"):
            made = c.run("sh", "-c", f"mkdir /root/{d} && cat /bin/busybox > /root/{d}/busybox "
                                     f"&& chmod +x /root/{d}/busybox")
            assert made.returncode == 0, made.stderr
        assert c.run("/root/a/busybox", "true").returncode == 0
        r = run(executor, "block_exec", path="/root/a/busybox")
        assert r.ok, r.detail
        refused = c.run("/root/a/busybox", "true")
        assert refused.returncode != 0 and "operation not permitted" in refused.stderr.lower()
        assert c.run("/root/b/busybox", "true").returncode == 0
