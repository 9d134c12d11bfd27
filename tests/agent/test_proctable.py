"""The process table as a plain object, against this machine's real /proc."""

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import msgspec
import pytest

import wire
from agent import TOO_LARGE, ProcessTable, parse_cgroup
from agent._proctable import ENRICHED
from kmod import Containers, cgroup2_mount
from tests import containers

GONE = 4_000_000_000  # beyond any pid_max: never in /proc


def sha256_of(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def cmdline_of(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return " ".join(a.decode() for a in f.read().split(b"\0")[:-1])


def test_seed_finds_this_process_and_enriches_its_events():
    table = ProcessTable()
    assert table.seed() > 1
    me = table.get(os.getpid())
    assert me is not None
    assert me.image == os.path.realpath(sys.executable)
    assert me.cmdline == " ".join(sys.orig_argv)
    assert me.ppid == os.getppid()

    ev = wire.Open(pid=os.getpid(), ppid=os.getppid(), uid=os.getuid(), path="/etc/hosts")
    table.enrich(ev)
    assert ev.image == os.path.realpath(sys.executable)
    assert ev.cmdline == " ".join(sys.orig_argv)
    assert ev.parent_image == os.readlink(f"/proc/{os.getppid()}/exe")
    assert ev.parent_cmdline == cmdline_of(os.getppid())
    assert ev.user == pwd.getpwuid(os.getuid()).pw_name
    assert ev.sha256 == sha256_of(sys.executable)


def test_a_child_started_before_the_seed_is_found_with_its_arguments():
    args = [sys.executable, "-c", "import time; time.sleep(30)", "marker-" + uuid.uuid4().hex]
    child = subprocess.Popen(args)
    try:
        time.sleep(0.05)
        table = ProcessTable()
        table.seed()
        p = table.get(child.pid)
        assert p.image == os.path.realpath(sys.executable)
        assert p.cmdline == " ".join(args)
        assert p.ppid == os.getpid()
    finally:
        child.kill()
        child.wait()


def test_fork_exec_exit_keep_the_table_current(tmp_path):
    table = ProcessTable()
    table.seed()
    me = os.getpid()
    my_image = table.get(me).image
    child = GONE + 1

    fork = wire.Fork(pid=me, ppid=os.getppid(), child_pid=child)
    table.enrich(fork)
    assert fork.image == my_image
    assert table.get(child).image == my_image and table.get(child).ppid == me

    true = os.path.realpath("/usr/bin/true")
    ex = wire.Exec(pid=child, ppid=me, uid=0, filename="/usr/bin/true", exe=true,
                   argv=["true", "--flag", "x y"], cwd="/tmp")
    table.enrich(ex)
    assert (ex.image, ex.cmdline) == ("/usr/bin/true", "true --flag x y")
    assert ex.exe == true  # the resolved path stays apart
    assert ex.parent_image == my_image
    assert ex.parent_cmdline == " ".join(sys.orig_argv)
    assert ex.cwd == "/tmp"  # from the sensor, untouched
    assert ex.sha256 == sha256_of(true)  # the child is gone: hashed by path

    op = wire.Open(pid=child, ppid=me, uid=65534, path="/etc/passwd")
    table.enrich(op)
    assert (op.image, op.cmdline, op.parent_image) == ("/usr/bin/true", "true --flag x y", my_image)
    assert op.sha256 == ex.sha256
    assert op.user == pwd.getpwuid(65534).pw_name

    ex_ = wire.Exit(pid=child, ppid=me, code=0)
    table.enrich(ex_)
    assert ex_.image == "/usr/bin/true"
    assert table.get(child) is None
    assert table.known(child).image == "/usr/bin/true"  # recently exited: still known

    # A grandchild whose event races its parent's exit still finds the parent.
    late = wire.Open(pid=GONE + 2, ppid=child, path="/x")
    table.enrich(late)
    assert late.parent_image == "/usr/bin/true"


def test_a_relative_exec_is_made_absolute_and_a_failed_exec_changes_nothing(tmp_path):
    table = ProcessTable()
    table.seed()
    pid = GONE + 3
    table.enrich(wire.Fork(pid=os.getpid(), child_pid=pid))
    script = tmp_path / "run.sh"
    script.write_bytes(b"#!/bin/sh\necho hi\n")
    ev = wire.Exec(pid=pid, ppid=os.getpid(), filename="./run.sh", exe="", argv=["./run.sh"],
                   cwd=str(tmp_path), result=-13)
    table.enrich(ev)
    assert ev.image == str(script)
    assert ev.sha256 == sha256_of(script)  # what it tried to run
    assert table.get(pid).image == table.get(os.getpid()).image  # still the old image

    ev = wire.Exec(pid=pid, ppid=os.getpid(), filename="./run.sh", exe=str(script), argv=["./run.sh", "a"],
                   cwd=str(tmp_path))
    table.enrich(ev)
    assert table.get(pid).image == str(script)
    assert table.get(pid).cmdline == "./run.sh a"


def test_hashes_are_cached_by_file_identity_and_change_with_the_file(tmp_path):
    table = ProcessTable()
    exe = tmp_path / "tool"
    exe.write_bytes(b"version one")
    for pid in (GONE + 10, GONE + 11):
        ev = wire.Exec(pid=pid, filename=str(exe), exe=str(exe), argv=["tool"])
        table.enrich(ev)
        assert ev.sha256 == hashlib.sha256(b"version one").hexdigest()
    st = table.statistics()
    assert (st.hashed, st.hash_hits) == (1, 1)

    exe.write_bytes(b"version two, longer")
    ev = wire.Exec(pid=GONE + 12, filename=str(exe), exe=str(exe), argv=["tool"])
    table.enrich(ev)
    assert ev.sha256 == hashlib.sha256(b"version two, longer").hexdigest()
    assert table.statistics().hashed == 2


def test_huge_executables_are_not_hashed_but_marked(tmp_path):
    table = ProcessTable(hash_limit=1000)
    exe = tmp_path / "big"
    exe.write_bytes(b"x" * 1001)
    ev = wire.Exec(pid=GONE + 20, filename=str(exe), exe=str(exe))
    table.enrich(ev)
    assert ev.sha256 == TOO_LARGE
    assert table.statistics().hash_skipped == 1


def test_the_table_is_bounded_and_counts_what_it_forgets():
    table = ProcessTable(max_processes=5)
    for i in range(8):
        table.enrich(wire.Fork(pid=GONE, child_pid=GONE + 100 + i))
    assert len(table) == 5
    assert table.statistics().evicted >= 3
    # The most recently seen survive.
    assert table.get(GONE + 107) is not None


def test_a_process_gone_before_it_was_seen_is_read_from_proc_only_once():
    table = ProcessTable()
    for _ in range(3):
        ev = wire.Open(pid=GONE + 30, uid=0, path="/x")
        table.enrich(ev)
        assert ev.image == "" and ev.user == pwd.getpwuid(0).pw_name
    assert table.statistics().unknown == 1


def test_notices_from_the_agent_itself_are_left_alone():
    table = ProcessTable()
    ev = wire.Notice(what="spool_dropped", count=3)
    table.enrich(ev)
    assert ev == wire.Notice(what="spool_dropped", count=3)


@pytest.mark.parametrize("text, unit, container", [
    ("0::/system.slice/ssh.service\n", "ssh.service", ""),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope", ""),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/vte-spawn-1.scope\n",
     "vte-spawn-1.scope", ""),
    ("0::/system.slice/docker-" + "a" * 64 + ".scope\n", "docker-" + "a" * 64 + ".scope", "a" * 64),
    ("0::/docker/" + "b1" * 32 + "\n", "", "b1" * 32),
    ("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12_34.slice/cri-containerd-"
     + "c" * 64 + ".scope\n", "cri-containerd-" + "c" * 64 + ".scope", "c" * 64),
    ("0::/kubepods/burstable/pod0a1b/" + "d" * 64 + "\n", "", "d" * 64),
    ("0::/machine.slice/libpod-" + "e" * 64 + ".scope/container\n", "libpod-" + "e" * 64 + ".scope", "e" * 64),
    ("0::/machine.slice/libpod-conmon-" + "e" * 64 + ".scope\n", "libpod-conmon-" + "e" * 64 + ".scope", ""),
    ("0::/system.slice/crio-" + "f" * 64 + ".scope\n", "crio-" + "f" * 64 + ".scope", "f" * 64),
    ("0::/lxc.payload.web1/system.slice/nginx.service\n", "nginx.service", "web1"),
    ("12:pids:/system.slice/cron.service\n1:name=systemd:/system.slice/cron.service\n0::/\n", "", ""),
    ("12:pids:/x\n1:name=systemd:/system.slice/cron.service\n", "cron.service", ""),
    ("0::/init.scope\n", "init.scope", ""),
    ("0::/\n", "", ""),
])
def test_cgroup_lines_give_unit_and_container(tmp_path, text, unit, container):
    assert parse_cgroup(text)[1] == unit
    # No runtime's state in tmp_path: the id is what the cgroup's name says.
    found = Containers(root=tmp_path, proc=tmp_path, cgroup2=tmp_path).identify(text)
    assert (found.id if found else "") == container


def test_events_of_a_container_carry_its_identity(tmp_path):
    with containers.Container(tmp_path, ["sleep", "60"],
                              annotations={"org.opencontainers.image.ref.name": "vllm/vllm-openai:v1"}) as c:
        table = ProcessTable()
        table.seed()
        cgroup = os.stat(f"{table.cgroup_root}/{c.id}").st_ino
        inside = [wire.Open(pid=c.pid, cgroup=cgroup, path="/etc/hosts"),
                  wire.Exec(pid=c.pid, cgroup=cgroup, filename="/bin/sleep", exe="/bin/busybox", argv=["sleep"]),
                  wire.Fork(pid=c.pid, cgroup=cgroup, child_pid=GONE + 50),
                  wire.Connect(pid=GONE + 50, ppid=c.pid, cgroup=cgroup, address="10.0.0.1", port=443)]
        table.enrich_all(inside)
        for ev in inside:
            assert (ev.container, ev.container_runtime, ev.container_name, ev.container_image) == \
                (c.id, "runc", c.id, "vllm/vllm-openai:v1"), ev
        host = wire.Open(pid=os.getpid(), path="/etc/hosts")
        table.enrich(host)
        assert (host.container, host.container_runtime, host.container_name, host.container_image) == ("",) * 4


def test_a_refused_exec_whose_caller_is_gone_still_names_its_container(tmp_path):
    # runc exec: runc (on the host) forks runc init, which joins the
    # container's cgroup and execs; refused, it exits before the relay
    # enriches the event.  The table knew only runc's host process.
    # Nothing of the container was seen alive: its cgroup's id names it.
    table = ProcessTable()
    table.seed()
    with containers.Container(tmp_path, ["sleep", "60"],
                              annotations={"org.opencontainers.image.ref.name": "app/img:2"}) as c:
        cgroup = os.stat(f"{table.cgroup_root}/{c.id}").st_ino
        runc_init = GONE + 60
        events = [wire.Fork(pid=os.getpid(), child_pid=runc_init),
                  wire.Open(pid=runc_init, ppid=os.getpid(), cgroup=cgroup, path="/etc/shadow"),
                  wire.Exec(pid=runc_init, ppid=os.getpid(), cgroup=cgroup, filename="/tmp/x", result=-1,
                            verdict="block")]
        table.enrich_all(events)
        assert [(e.container, e.container_runtime, e.container_image) for e in events[1:]] == \
            [(c.id, "runc", "app/img:2")] * 2
        assert events[0].container == ""  # the fork happened on the host


def test_a_container_whose_runtime_wrote_its_state_late_is_known_at_its_next_exec(tmp_path):
    # runc writes state.json once its first process is in the cgroup: a
    # process seeded in between is known from its next exec on.
    root = cgroup2_mount("/proc")
    if not root or not os.access(root, os.W_OK):
        pytest.skip("needs a writable cgroup v2 mount (root)")
    name = f"immune-late-{uuid.uuid4().hex[:8]}"
    os.mkdir(f"{root}/{name}")
    child = subprocess.Popen(["sleep", "30"])
    try:
        with open(f"{root}/{name}/cgroup.procs", "w") as f:
            f.write(str(child.pid))
        table = ProcessTable(containers=Containers(root=tmp_path))
        table.seed()
        cgroup = os.stat(f"{root}/{name}").st_ino
        before = wire.Open(pid=child.pid, cgroup=cgroup, path="/etc/hosts")
        table.enrich(before)
        assert before.container == ""
        state = tmp_path / "run/runc" / name / "state.json"
        state.parent.mkdir(parents=True)
        state.write_text('{"config": {"labels": ["org.opencontainers.image.ref.name=late:1"]}}')
        time.sleep(1.05)  # a container without state is asked again after a second
        after = [wire.Exec(pid=child.pid, cgroup=cgroup, filename="/bin/sleep", exe="/bin/sleep", argv=["sleep"]),
                 wire.Open(pid=child.pid, cgroup=cgroup, path="/etc/hosts")]
        table.enrich_all(after)
        assert [(e.container, e.container_runtime, e.container_image) for e in after] == [(name, "runc", "late:1")] * 2
    finally:
        child.kill()
        child.wait()
        os.rmdir(f"{root}/{name}")


def test_runc_execs_name_a_container_whose_first_process_was_seen_before_its_state(tmp_path):
    # What a demo saw: the relay enriched `runc run`'s first process as it
    # joined the container's cgroup, before runc wrote state.json; then
    # `runc exec`'s process joined it, exec'd and was refused, and was gone
    # when its events were enriched.  They carried no container: the table
    # had kept the cgroup's first answer for good.
    root = cgroup2_mount("/proc")
    if not root or not os.access(root, os.W_OK):
        pytest.skip("needs a writable cgroup v2 mount (root)")
    name = f"immune-late-{uuid.uuid4().hex[:8]}"
    (tmp_path / "run/runc" / name).mkdir(parents=True)  # runc's directory comes first
    os.mkdir(f"{root}/{name}")
    child = subprocess.Popen(["sleep", "30"])
    try:
        table = ProcessTable(containers=Containers(root=tmp_path))
        table.seed()
        with open(f"{root}/{name}/cgroup.procs", "w") as f:
            f.write(str(child.pid))
        cgroup = os.stat(f"{root}/{name}").st_ino
        init = wire.SetId(pid=child.pid, cgroup=cgroup, old=0, new=0)
        table.enrich(init)
        assert (init.container, init.container_image) == (name, "")  # runc's, its image not known yet
        (tmp_path / "run/runc" / name / "state.json").write_text(
            '{"config": {"labels": ["org.opencontainers.image.ref.name=late:1"]}}')
        runc_init = GONE + 70  # runc exec's, forked on the host, moved in, gone
        events = [wire.Fork(pid=os.getpid(), child_pid=runc_init),
                  wire.SetId(pid=runc_init, ppid=os.getpid(), cgroup=cgroup, old=0, new=0),
                  wire.Exec(pid=runc_init, ppid=os.getpid(), cgroup=cgroup, filename="/tmp/x", result=-1,
                            verdict="block")]
        table.enrich_all(events)
        assert [(e.container, e.container_runtime, e.container_name, e.container_image) for e in events[1:]] == \
            [(name, "runc", name, "late:1")] * 2
    finally:
        child.kill()
        child.wait()
        os.rmdir(f"{root}/{name}")


def test_a_process_moved_to_another_cgroup_gets_its_unit():
    table = ProcessTable()
    if not table.cgroup_root:
        pytest.skip("no cgroup v2 mount")
    folder = os.path.join(table.cgroup_root, f"immune-test-{uuid.uuid4().hex[:8]}.scope")
    try:
        os.mkdir(folder)
    except OSError as e:
        pytest.skip(f"cannot make a cgroup: {e}")
    child = subprocess.Popen(["sleep", "30"])
    try:
        table.seed()
        with open(os.path.join(folder, "cgroup.procs"), "w") as f:
            f.write(str(child.pid))
        ev = wire.Open(pid=child.pid, cgroup=os.stat(folder).st_ino, path="/x")
        table.enrich(ev)
        assert ev.unit == os.path.basename(folder)
        again = wire.Open(pid=child.pid, cgroup=os.stat(folder).st_ino, path="/y")
        table.enrich(again)
        assert again.unit == ev.unit
    finally:
        child.kill()
        child.wait()
        os.rmdir(folder)


def test_enrich_all_leaves_hashing_to_a_job_that_runs_on_another_thread(tmp_path):
    table = ProcessTable()
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"tool one")
    two.write_bytes(b"tool two")
    a, b, c = GONE + 30, GONE + 31, GONE + 32
    burst = [
        wire.Exec(pid=a, filename=str(one), exe=str(one), argv=["one"]),
        wire.Open(pid=a, path="/etc/hosts"),
        wire.Fork(pid=a, child_pid=b),
        wire.Open(pid=b, path="/etc/hosts"),
        wire.Exec(pid=c, filename=str(two), exe=str(two), result=-13),  # refused: the file it tried
        wire.Exec(pid=b, filename=str(two), exe=str(two), argv=["two"]),
        wire.Open(pid=b, path="/etc/passwd"),
    ]
    job = table.enrich_all(burst)
    assert job is not None and len(job.files) == 2
    assert [e.sha256 for e in burst] == [""] * len(burst)  # nothing read on this thread
    assert burst[1].image == str(one) and burst[6].image == str(two)
    worker = threading.Thread(target=job.run)
    worker.start()
    worker.join()
    table.complete(job)
    d1, d2 = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (one, two))
    assert [e.sha256 for e in burst] == [d1, d1, d1, d1, d2, d2, d2]
    assert (table.get(a).sha256, table.get(b).sha256) == (d1, d2)  # b exec'd two after its fork
    assert table.statistics().hashed == 2
    again = [wire.Open(pid=a, path="/x"), wire.Exec(pid=GONE + 33, filename=str(one), exe=str(one))]
    assert table.enrich_all(again) is None and [e.sha256 for e in again] == [d1, d1]


def test_a_job_that_never_ran_leaves_no_one_waiting(tmp_path):
    table = ProcessTable()
    exe = tmp_path / "tool"
    exe.write_bytes(b"tool")
    ev = wire.Exec(pid=GONE + 40, filename=str(exe), exe=str(exe))
    job = table.enrich_all([ev])
    table.complete(job)  # cancelled before it ran
    assert ev.sha256 == "" and table.get(GONE + 40).hashing is None
    assert table.statistics().hash_failed == 1
    later = wire.Exec(pid=GONE + 41, filename=str(exe), exe=str(exe))
    table.enrich(later)  # not remembered as failed: hashed next time
    assert later.sha256 == hashlib.sha256(b"tool").hexdigest()


@pytest.mark.parametrize("event", [
    wire.Exec(pid=os.getpid(), ppid=os.getppid(), filename="/usr/bin/true", exe="/usr/bin/true", argv=["true"],
              cwd="/"),
    wire.Fork(pid=os.getpid(), ppid=os.getppid(), child_pid=GONE + 40),
    wire.Exit(pid=GONE + 41, ppid=os.getpid(), code=1),
    wire.Open(pid=os.getpid(), ppid=os.getppid(), path="/etc/hosts", cgroup=1),
    wire.SetId(pid=os.getpid(), call="setuid", new=0),
    wire.Connect(pid=os.getpid(), address="10.0.0.1", port=443),
    wire.Bind(pid=os.getpid(), address="0.0.0.0", port=8080),
], ids=lambda e: type(e).__name__)
def test_enrichment_writes_only_the_fields_it_names(event):
    # The relay fits only these to the wire (the others passed the
    # contract's decoder): a field enrichment writes must be among them.
    table = ProcessTable()
    before = msgspec.structs.asdict(event)
    table.enrich(event)
    changed = {k for k, v in msgspec.structs.asdict(event).items() if before[k] != v}
    assert changed and changed <= ENRICHED


def test_a_cgroup_named_in_bytes_that_are_not_utf8_is_read(tmp_path):
    # Anyone with a delegated cgroup (a systemd user session) may name one so.
    root = cgroup2_mount("/proc")
    if not root or not os.access(root, os.W_OK):
        pytest.skip("needs a writable cgroup v2 mount (root)")
    name = b"immune-" + uuid.uuid4().hex[:8].encode() + b"-\xff.scope"
    folder = os.fsencode(root) + b"/" + name
    os.mkdir(folder)
    child = subprocess.Popen(["sleep", "30"])
    try:
        with open(folder + b"/cgroup.procs", "wb") as f:
            f.write(str(child.pid).encode())
        ev = wire.Open(pid=child.pid, ppid=os.getpid(), path="/etc/hosts")
        table = ProcessTable()
        table.enrich(ev)
        assert ev.unit == name.decode(errors="replace")  # spelled as the kernel spells names
        assert table.get(child.pid).cgroup == os.stat(folder).st_ino  # and its id still found
    finally:
        child.kill()
        child.wait()
        os.rmdir(folder)


def test_an_executable_named_in_bytes_that_are_not_utf8_is_named_as_the_kernel_does_and_hashed():
    folder = tempfile.mkdtemp(prefix="immune-table-", dir="/var/lib" if os.access("/var/lib", os.W_OK) else None)
    exe = os.fsencode(folder) + b"/sleep-\xff"
    shutil.copy("/bin/sleep", exe)
    child = subprocess.Popen([exe, "30"])
    try:
        time.sleep(0.05)
        spelled = exe.decode(errors="replace")  # as kmod's decoder and wire.fit spell it
        seeded = ProcessTable()
        ev = wire.Open(pid=child.pid, ppid=os.getpid(), path="/etc/hosts")
        seeded.enrich(ev)
        assert ev.image == spelled and ev.sha256 == sha256_of(exe)
        # The same process as the sensor reports its exec: hashed through /proc all the same.
        table = ProcessTable()
        ex = wire.Exec(pid=child.pid, ppid=os.getpid(), filename=spelled, exe=spelled, argv=[spelled, "30"])
        table.enrich(ex)
        assert ex.image == spelled and ex.sha256 == sha256_of(exe)
    finally:
        child.kill()
        child.wait()
        shutil.rmtree(folder)
