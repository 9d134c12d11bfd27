"""The container identity resolver: each runtime's files as it writes them
(in a folder laid out as /), and a real runc container."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from kmod._containers import ContainerIdentity, Containers, cgroup2_mount
from tests import containers

CID = "4f" * 32
OTHER = "9a" * 32


class Machine:
    """A fake root (the runtimes' state), procfs and cgroup2 mount."""

    def __init__(self, tmp: Path):
        self.root, self.proc, self.cgroup2 = tmp / "root", tmp / "proc", tmp / "cgroup2"
        for d in (self.root, self.proc, self.cgroup2):
            d.mkdir()
        self.pids = 100

    def resolver(self) -> Containers:
        return Containers(root=self.root, proc=self.proc, cgroup2=self.cgroup2)

    def file(self, rel: str, content) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    def process(self, *paths: str, v1: bool = True) -> int:
        """A process whose cgroup v2 path is ``paths[0]`` (its folder made),
        with the v1 lines a hybrid machine shows."""
        self.pids += 1
        (self.cgroup2 / paths[0].lstrip("/")).mkdir(parents=True, exist_ok=True)
        lines = [f"0::{paths[0]}"]
        if v1:
            lines = [f"9:name=systemd:{paths[0]}", "4:memory:/"] + lines
        (self.proc / str(self.pids)).mkdir()
        (self.proc / str(self.pids) / "cgroup").write_text("\n".join(lines) + "\n")
        return self.pids


@pytest.fixture
def machine(tmp_path):
    return Machine(tmp_path)


def identity(machine: Machine, cgroup: str) -> ContainerIdentity | None:
    return machine.resolver().of_pid(machine.process(cgroup))


def test_docker(machine):
    machine.file(f"var/lib/docker/containers/{CID}/config.v2.json",
                 {"ID": CID, "Name": "/web", "Config": {"Image": "nginx:1.27", "Env": ["A=1"]}})
    want = ContainerIdentity(CID, "docker", "web", "nginx:1.27", f"/system.slice/docker-{CID}.scope")
    assert identity(machine, f"/system.slice/docker-{CID}.scope") == want
    # The cgroupfs driver's layout names it the same.
    assert identity(machine, f"/docker/{CID}").name == "web"


def test_containerd_kubernetes(machine):
    machine.file(f"run/containerd/io.containerd.runtime.v2.task/k8s.io/{CID}/config.json", {
        "ociVersion": "1.1.0", "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "vllm",
            "io.kubernetes.cri.image-name": "docker.io/vllm/vllm-openai:v0.6.0",
            "io.kubernetes.cri.sandbox-name": "inference-0"}})
    got = identity(machine, "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/"
                            f"cri-containerd-{CID}.scope")
    assert (got.id, got.runtime, got.name, got.image) == (CID, "containerd", "vllm",
                                                         "docker.io/vllm/vllm-openai:v0.6.0")
    # cgroupfs driver: a bare id under the pod; the runtime is whoever has its state.
    assert identity(machine, f"/kubepods/burstable/pod1/{CID}").runtime == "containerd"


def test_crio(machine):
    machine.file(f"run/containers/storage/overlay-containers/{CID}/userdata/config.json", {
        "annotations": {"io.kubernetes.cri-o.ContainerName": "k8s_api_pod-1_default_uid_0",
                        "io.kubernetes.container.name": "api",
                        "io.kubernetes.cri-o.ImageName": "quay.io/acme/api:2"}})
    got = identity(machine, f"/kubepods.slice/kubepods-pod1.slice/crio-{CID}.scope")
    assert (got.runtime, got.name, got.image) == ("cri-o", "api", "quay.io/acme/api:2")
    assert identity(machine, f"/kubepods.slice/kubepods-pod1.slice/crio-conmon-{CID}.scope") is None


def test_podman(machine):
    machine.file(f"var/lib/containers/storage/overlay-containers/{CID}/userdata/config.json",
                 {"annotations": {"io.container.manager": "libpod"}})
    machine.file("var/lib/containers/storage/overlay-containers/containers.json", [
        {"id": OTHER, "names": ["other"], "metadata": json.dumps({"image-name": "x"})},
        {"id": CID, "names": ["db"], "image": "ab" * 32,
         "metadata": json.dumps({"image-name": "docker.io/library/postgres:16", "name": "db"})}])
    got = identity(machine, f"/machine.slice/libpod-{CID}.scope/container")
    assert (got.runtime, got.name, got.image) == ("podman", "db", "docker.io/library/postgres:16")
    assert got.cgroup == f"/machine.slice/libpod-{CID}.scope"
    assert identity(machine, f"/machine.slice/libpod-conmon-{CID}.scope") is None


def test_runc_labels_carry_the_bundles_annotations(machine):
    machine.file("run/runc/web-1/state.json", {"id": "web-1", "config": {"labels": [
        "org.opencontainers.image.ref.name=registry.local/web:3", "bundle=/srv/bundles/web-1"]}})
    assert identity(machine, "/web-1") == ContainerIdentity("web-1", "runc", "web-1", "registry.local/web:3",
                                                             "/web-1")


def test_crun_reads_the_bundle(machine):
    bundle = machine.file("srv/b/config.json", {"annotations": {"io.kubernetes.cri.image-name": "img:1"}}).parent
    machine.file("run/crun/job7/status", {"pid": 1, "bundle": str(bundle)})
    assert identity(machine, "/job7") == ContainerIdentity("job7", "crun", "job7", "img:1", "/job7")


def test_lxc(machine):
    machine.file("var/lib/lxc/web1/config", "# Template used to create this container: "
                 "/usr/share/lxc/templates/lxc-download\n# Parameters passed to the template: "
                 "--dist debian --release bookworm --arch amd64\nlxc.uts.name = web1\n")
    want = ContainerIdentity("web1", "lxc", "web1", "debian:bookworm", "/lxc.payload.web1")
    assert identity(machine, "/lxc.payload.web1/system.slice/nginx.service") == want
    assert identity(machine, "/lxc.monitor.web1") is None
    assert identity(machine, "/lxc/old").runtime == "lxc"  # the older layout, no config: name only


def test_systemd_nspawn(machine):
    machine.file("run/systemd/machines/my-box", "NAME=my-box\nSCOPE=x\nSERVICE=systemd-nspawn\n"
                 "CLASS=container\nROOT=/var/lib/machines/my-box\nLEADER=1\n")
    got = identity(machine, "/machine.slice/systemd-nspawn@my\\x2dbox.service/payload")
    assert got == ContainerIdentity("my-box", "systemd-nspawn", "my-box", "/var/lib/machines/my-box",
                                    "/machine.slice/systemd-nspawn@my\\x2dbox.service")
    assert identity(machine, "/machine.slice/systemd-nspawn@my\\x2dbox.service/supervisor") is None
    # machined's scope is a container only if machined says so (a VM's is not).
    assert identity(machine, "/machine.slice/machine-my\\x2dbox.scope").name == "my-box"
    machine.file("run/systemd/machines/vm1", "NAME=vm1\nCLASS=vm\nSERVICE=libvirt-qemu\n")
    assert identity(machine, "/machine.slice/machine-vm1.scope") is None


@pytest.mark.parametrize("cgroup", ["/", "/system.slice/ssh.service", "/user.slice/user-0.slice/session-3.scope",
                                    "/init.scope"])
def test_the_host_is_no_container(machine, cgroup):
    assert identity(machine, cgroup) is None


def test_an_id_without_state_is_still_an_id_and_looked_up_again(machine):
    resolver = machine.resolver()
    pid = machine.process(f"/system.slice/docker-{CID}.scope")
    assert resolver.of_pid(pid) == ContainerIdentity(CID, "docker", "", "", f"/system.slice/docker-{CID}.scope")
    machine.file(f"var/lib/docker/containers/{CID}/config.v2.json", {"Name": "/late", "Config": {"Image": "i"}})
    assert resolver.of_pid(pid).name == ""  # cached for a second
    time.sleep(1.05)
    assert resolver.of_pid(pid).name == "late"


def test_a_runc_id_used_again_is_a_new_container(machine):
    # runc's state is written after the container's first process is in
    # its cgroup; and a deleted container's name may be taken again.
    resolver = machine.resolver()
    pid = machine.process("/job")
    assert resolver.of_pid(pid) is None
    state = machine.file("run/runc/job/state.json", {"config": {"labels": ["org.opencontainers.image.ref.name=a"]}})
    time.sleep(1.05)
    assert resolver.of_pid(pid).image == "a"
    (machine.cgroup2 / "job").rmdir()
    (machine.cgroup2 / "spacer").mkdir()  # takes the inode number ext4 or tmpfs may reuse (cgroupfs never does)
    state.write_text(json.dumps({"config": {"labels": ["org.opencontainers.image.ref.name=b"]}}))
    (machine.cgroup2 / "job").mkdir()  # a new directory, a new inode
    assert resolver.of_pid(pid).image == "b"


def test_cached_by_cgroup_id_and_swept_when_the_container_goes(machine, monkeypatch):
    from kmod import _containers

    machine.file(f"var/lib/docker/containers/{CID}/config.v2.json", {"Name": "/web", "Config": {"Image": "i"}})
    resolver = machine.resolver()
    pid = machine.process(f"/docker/{CID}")
    assert resolver.of_pid(pid, cgroup=77).name == "web"
    (machine.proc / str(pid) / "cgroup").unlink()  # no /proc read needed any more
    assert resolver.of_pid(pid, cgroup=77).name == "web"
    before = resolver.statistics()
    assert (before.resolved, before.proc_reads, before.cached) == (1, 1, 2)
    (machine.cgroup2 / "docker" / CID).rmdir()
    monkeypatch.setattr(_containers, "_SWEEP", 0.0)
    resolver._next_sweep = 0
    other = machine.process("/system.slice/cron.service/x")
    resolver.of_pid(other)
    assert resolver.of_pid(pid, cgroup=77) is None  # forgotten: looked up again, the process is gone
    assert resolver.statistics().cached == 1


@pytest.mark.parametrize("content", ["{not json", "[]", '{"Name": 5, "Config": "x"}', "x" * ((1 << 20) + 1)])
def test_a_broken_state_file_leaves_the_fields_empty_with_one_log_line(machine, caplog, content):
    path = machine.file(f"var/lib/docker/containers/{CID}/config.v2.json", content)
    caplog.set_level(logging.WARNING, "immune.kmod.containers")
    resolver = machine.resolver()
    for n in range(3):
        got = resolver.of_pid(machine.process(f"/docker{n}.slice/docker-{CID}.scope"))
        assert (got.id, got.runtime, got.name, got.image) == (CID, "docker", "", "")
    lines = [r.getMessage() for r in caplog.records]
    if content.startswith("{\"Name\": 5") or content == "[]":
        assert lines == []  # valid JSON of another shape: nothing to say but nothing known
    else:
        assert len(lines) == 1 and str(path) in lines[0] and "left empty" in lines[0]


def test_a_fifo_in_place_of_a_state_file_never_hangs(machine, caplog):
    path = machine.root / f"var/lib/docker/containers/{CID}/config.v2.json"
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    t = time.monotonic()
    got = identity(machine, f"/docker/{CID}")
    assert time.monotonic() - t < 1 and (got.runtime, got.name) == ("docker", "")
    assert "not a regular file" in caplog.text


def test_a_gone_process_is_no_container(machine):
    assert machine.resolver().of_pid(999_999) is None


def test_a_real_runc_container(tmp_path):
    """runc's own state: id, name, and the image an annotation in its bundle names."""
    resolver = Containers()
    with containers.Container(tmp_path, ["sleep", "60"],
                              annotations={"org.opencontainers.image.ref.name": "vllm/vllm-openai:v0.6.0"}) as c:
        got = resolver.of_pid(c.pid)
        assert (got.id, got.runtime, got.name, got.image) == (c.id, "runc", c.id, "vllm/vllm-openai:v0.6.0")
        assert got.cgroup.endswith("/" + c.id)
        # A process already gone, known only by the cgroup id the kernel reported.
        cgroup = os.stat(f"{resolver.cgroup2}/{c.id}").st_ino
        assert Containers().of_pid(4_000_000_000, cgroup) == got
        assert {i.id for i in resolver.running()} >= {c.id}
        assert c.pid in {pid for pid, i in resolver.processes() if i.id == c.id}
    assert resolver.of_pid(os.getpid()) is None


def test_a_runc_container_being_created_is_asked_again_at_once(machine):
    # runc makes /run/runc/ID, puts the first process in the cgroup, and
    # writes state.json ~20 ms later: what was found in between is not kept.
    resolver = machine.resolver()
    (machine.root / "run/runc/job").mkdir(parents=True)
    pid = machine.process("/job")
    got = resolver.of_pid(pid, cgroup=77)
    assert (got.id, got.runtime, got.name, got.image) == ("job", "runc", "job", "")
    machine.file("run/runc/job/state.json", {"config": {"labels": ["org.opencontainers.image.ref.name=a"]}})
    assert resolver.of_pid(pid, cgroup=77).image == "a"  # no second's wait
    assert resolver.of_pid(pid, cgroup=77).image == "a"


def _real_cgroup(name: str) -> tuple[str, subprocess.Popen]:
    """A cgroup v2 directory of that name with a sleeping process in it."""
    root = cgroup2_mount("/proc")
    if not root or not os.access(root, os.W_OK):
        pytest.skip("needs a writable cgroup v2 mount (root)")
    os.mkdir(f"{root}/{name}")
    child = subprocess.Popen(["sleep", "30"])
    with open(f"{root}/{name}/cgroup.procs", "w") as f:
        f.write(str(child.pid))
    return f"{root}/{name}", child


@pytest.mark.parametrize("creating", [True, False])
def test_a_gone_process_of_a_container_first_seen_without_state_is_named_once_it_has(tmp_path, creating):
    # The relay reads a runc container's first process before runc wrote
    # its state; a later process of the container (runc exec's, refused)
    # is gone when its event is enriched: its cgroup id still names it.
    name = f"immune-late-{uuid.uuid4().hex[:8]}"
    if creating:
        (tmp_path / "run/runc" / name).mkdir(parents=True)
    folder, child = _real_cgroup(name)
    try:
        resolver = Containers(root=tmp_path)
        cgroup = os.stat(folder).st_ino
        first = resolver.of_pid(child.pid, cgroup)
        assert (first.id if first else "") == (name if creating else "")
        state = tmp_path / "run/runc" / name / "state.json"
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text('{"config": {"labels": ["org.opencontainers.image.ref.name=late:1"]}}')
        if not creating:
            time.sleep(1.05)  # what no runtime's directory announced is asked again after a second
        got = resolver.of_pid(4_000_000_000, cgroup)
        assert got is not None and (got.id, got.runtime, got.name, got.image) == (name, "runc", name, "late:1")
    finally:
        child.kill()
        child.wait()
        os.rmdir(folder)
