"""The exec guard reaches every mount namespace, including those made after
the sensor started: runc containers (their root, a tmpfs /tmp), a chroot on
a fresh overlay, a tmpfs in `unshare -m`, a detached fsmount; an exec that
comes before the guard could mark its filesystem is reported unguarded and
gets it marked.  Real BPF, real mounts, real containers; the plain objects
(mountinfo, coalescing) without a kernel at the end."""

import errno
import os
import subprocess
import sys
import textwrap
import time

import pytest

from kmod import Policy, verdict_line
from kmod._mounts import M_FSMOUNT, M_MOUNT, M_UNGUARDED, News, Requests, kernel_dev, parse_mountinfo
from tests import containers
from tests.containers import Container, overlay_chroot
from wire import Exec, Open

from .conftest import collect, executable_copy, flush, kernel

HOST_MNTNS = os.stat("/proc/self/ns/mnt").st_ino
TMP_EXEC = "cp /bin/busybox /tmp/sh && /tmp/sh -c true; echo status=$?"


def on_kernel(test):
    """Only the tests that load the sensor need root and BTF."""
    for mark in kernel:
        test = mark(test)
    return test


def ns_inode(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def refused_exec(sensor, mntns=None):
    """The kernel's record of the refused exec of /tmp/sh in another mount namespace."""
    (ev,) = collect(sensor, lambda e: isinstance(e, Exec) and e.filename == "/tmp/sh"
                    and e.mntns != HOST_MNTNS and (mntns is None or e.mntns == mntns))
    assert (ev.verdict, ev.rule, ev.result) == ("block", "exec-from-temp", -errno.EPERM)
    assert verdict_line(ev) == f"IMMUNE: [BLOCKED] exec /tmp/sh (pid={ev.pid})"
    return ev


# ---- containers made after the sensor started ----------------------------------------


@pytest.mark.parametrize("tmpfs_tmp", [False, True], ids=["tmp-on-root", "tmpfs-tmp"])
@on_kernel
def test_exec_from_tmp_in_a_runc_container_is_refused(sensor, tmp_path, tmpfs_tmp):
    with Container(tmp_path, ["sleep", "300"], tmpfs_tmp=tmpfs_tmp) as c:
        done = c.run("sh", "-c", TMP_EXEC)
        mntns, pidns = ns_inode(c.pid, "mnt"), ns_inode(c.pid, "pid")
    assert "status=126" in done.stdout and "Operation not permitted" in done.stderr, done
    ev = refused_exec(sensor, mntns)
    # seen from inside: the container's namespaces, its own small pid
    assert ev.pidns == pidns and ev.pidns != ns_inode(os.getpid(), "pid")
    assert 1 < ev.vpid < 100 and ev.vpid != ev.pid
    assert ev.exe == "/tmp/sh"


@on_kernel
def test_exec_from_tmp_in_a_chroot_on_a_fresh_overlay_is_refused(sensor, tmp_path):
    flush(sensor)
    done = overlay_chroot(tmp_path, TMP_EXEC)
    # the chroot's own shell ran (from the overlay, allowed); its /tmp/sh did not
    assert "status=126" in done.stdout and "Operation not permitted" in done.stderr, done
    ev = refused_exec(sensor)
    # judged and reported by the path the chrooted process sees, not the
    # host's .../merged/tmp/sh
    assert ev.exe == "/tmp/sh" and ev.vpid == ev.pid


@on_kernel
def test_watched_file_opened_inside_is_reported_by_its_path_inside(sensor, tmp_path):
    with Container(tmp_path, ["sleep", "300"]) as c:
        (c.rootfs / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
        done = c.run("cat", "/etc/shadow")
        mntns = ns_inode(c.pid, "mnt")
    assert done.returncode == 0, done
    (ev,) = collect(sensor, lambda e: isinstance(e, Open) and e.mntns == mntns)
    assert (ev.path, ev.verdict, ev.rule, ev.result >= 0) == \
        ("/etc/shadow", "audit", "open-credentials", True)
    assert verdict_line(ev) == f"IMMUNE: [AUDIT] open /etc/shadow (pid={ev.pid})"
    assert 1 < ev.vpid < 100


@on_kernel
def test_a_guard_switched_on_by_a_reload_covers_namespaces_made_meanwhile(sensor):
    """A policy without exec rules needs no exec guard: it is off, mount news
    is ignored.  The reload that brings one back scans every namespace."""
    containers.require()
    no_exec = Policy.parse('[[rule]]\nname = "c2"\nhook = "connect"\naction = "block"\n'
                           'match.port = 4444\n')
    assert not no_exec.needs_exec_guard
    script = ("mount -t tmpfs tmpfs /tmp && cp /bin/true /tmp/x && echo ready && read go && /tmp/x; "
              "echo status=$?")
    sensor.reload(no_exec)
    try:
        with subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout.readline() == "ready\n"
            sensor.reload(Policy.default())
            out, _ = child.communicate("go\n", timeout=10)
    finally:
        sensor.reload(Policy.default())
    assert "status=126" in out, out


# ---- the window between a mount and its mark ---------------------------------------


@pytest.fixture
def mount_news_missed(sensor):
    """Drill: the guard ignores what the mount hooks report, as if a mount
    came by a way they do not see.  Nothing else changes: the kernel still
    flags an exec from a filesystem the guard has not marked."""
    sensor.guard.skip_mount_news(True)
    yield
    sensor.guard.skip_mount_news(False)


@on_kernel
def test_an_exec_before_the_mark_is_unguarded_and_gets_it_marked(sensor, mount_news_missed):
    containers.require()
    flush(sensor)
    # the first goes through (fanotify was never asked), then again every
    # 10 ms until refused: at most 100 tries
    script = ("mount -t tmpfs tmpfs /tmp && cp /bin/true /tmp/x && /tmp/x; echo first=$?; i=0; "
              "while [ $i -lt 100 ]; do /tmp/x || { s=$?; break; }; i=$((i+1)); sleep 0.01; done; "
              "echo then=$s after $i")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=30)
    assert "first=0" in done.stdout and "then=126" in done.stdout, done
    allowed = int(done.stdout.split()[-1])
    print(f"execs allowed after the first, before the refusal: {allowed}")
    assert allowed < 50  # "at once": the marker's latency, not a poll's
    execs = collect(sensor, lambda e: isinstance(e, Exec) and e.filename == "/tmp/x",
                    until=lambda evs: len(evs) == allowed + 2)
    first, then = execs[0], execs[-1]
    assert (first.verdict, first.rule, first.result) == ("unguarded", "exec-from-temp", 0)
    assert verdict_line(first) == f"IMMUNE: [UNGUARDED] exec /tmp/x (pid={first.pid})"
    assert (then.verdict, then.rule, then.result) == ("block", "exec-from-temp", -errno.EPERM)
    assert first.mntns == then.mntns != HOST_MNTNS
    stats = sensor.statistics().fanotify
    assert stats["unguarded_news"] >= 1 and stats["mount_news_skipped"] >= 1


FSMOUNT = textwrap.dedent("""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    fs = libc.syscall(430, b"tmpfs", 1)               # fsopen(tmpfs, FSOPEN_CLOEXEC)
    assert fs >= 0 and libc.syscall(431, fs, 6, None, None, 0) == 0  # FSCONFIG_CMD_CREATE
    mnt = libc.syscall(432, fs, 1, 0)                  # fsmount(FSMOUNT_CLOEXEC)
    assert mnt >= 0, ctypes.get_errno()
    print(os.fstat(mnt).st_dev, flush=True)
    sys.stdin.read()                                   # hold it until told
""")


@on_kernel
def test_a_detached_mount_is_marked_through_its_descriptor(sensor):
    """fsmount's tree is in no namespace's mountinfo, yet one can exec from
    it (execveat on the descriptor): it is marked through /proc/PID/fd."""
    with subprocess.Popen([sys.executable, "-S", "-c", FSMOUNT], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as holder:
        dev = kernel_dev(int(holder.stdout.readline()))
        deadline = time.monotonic() + 2
        while dev not in sensor.guard.marked_filesystems():
            assert time.monotonic() < deadline, "the detached tmpfs was never marked"
            time.sleep(0.01)
        holder.stdin.close()


FILELESS = textwrap.dedent("""
    import os
    fd = os.memfd_create("payload", 0)
    os.write(fd, open("/bin/true", "rb").read())
    os.execve(fd, ["fileless-payload"], {})
""")


@on_kernel
def test_a_fileless_exec_is_named_by_its_memfd_and_not_unguarded(sensor):
    """memfd_create's files live on the kernel's internal tmpfs, which no
    path reaches and fanotify refuses to mark: the exec is reported by that
    name (a policy can audit "/memfd:*"), not as unguarded, and asks for no
    marking the guard could never do.  (The default policy's exec-fileless
    rule kills it in the kernel instead: tests/kmod/test_procs.py.)"""
    before = sensor.statistics().fanotify["unguarded_news"]
    p = subprocess.run([sys.executable, "-S", "-c", FILELESS], timeout=10)
    assert p.returncode == -9
    (ev,) = collect(sensor, lambda e: isinstance(e, Exec) and e.argv == ["fileless-payload"])
    assert (ev.exe, ev.fileless, ev.verdict, ev.result) == ("/memfd:payload", True, "block", 0)
    assert sensor.statistics().fanotify["unguarded_news"] == before


STORM = textwrap.dedent("""
    import ctypes, errno, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.unshare(0x20000) == 0                            # CLONE_NEWNS
    assert libc.mount(None, b"/", None, 0x4000 | 0x40000, None) == 0  # MS_REC | MS_PRIVATE
    where, busy = sys.argv[1].encode(), 0
    for _ in range(int(sys.argv[2])):
        assert libc.mount(b"tmpfs", where, b"tmpfs", 0, None) == 0
        while libc.umount2(where, 0):  # the marker looking at this very mount
            assert ctypes.get_errno() == errno.EBUSY
            busy += 1
    print(busy)
""")


@on_kernel
def test_a_mount_storm_never_holds_the_responder(sensor, workdir):
    """Thousands of mounts a second in a namespace: the marker coalesces
    them per namespace, on its own thread; an exec the responder must judge
    meanwhile is answered in its bound, and the guard never fails open."""
    before = sensor.statistics().fanotify
    target = workdir / "storm"
    target.mkdir()
    storm = subprocess.Popen([sys.executable, "-S", "-c", STORM, str(target), "20000"],
                             stdout=subprocess.PIPE, text=True)
    took = []
    try:
        for i in range(40):
            fresh = executable_copy(workdir, f"fresh-{i}")  # a new inode: asks the responder
            began = time.monotonic()
            subprocess.run([str(fresh)], check=True, timeout=5)
            took.append(time.monotonic() - began)
    finally:
        busy = int(storm.communicate(timeout=60)[0])
        assert storm.returncode == 0
    after = sensor.statistics()
    news = after.fanotify["mount_news"] - before["mount_news"] + after.drops.get("mount_news", 0)
    print(f"storm: {news} mount news, exec p100 {max(took) * 1000:.1f} ms, "
          f"coalesced {after.fanotify['coalesced'] - before['coalesced']}, umount EBUSY {busy}")
    assert news > 1000
    assert after.fanotify["fail_opens"] == before["fail_opens"] and after.watchdog == "armed"
    assert max(took) < 0.25


# ---- plain objects ----------------------------------------------------------------


def test_mountinfo_lines():
    text = ("22 27 0:21 / /proc rw,relatime - proc proc rw\n"
            "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
            "80 27 0:57 / /srv/with\\040space rw shared:1 master:2 - tmpfs tmpfs rw\n"
            "garbage\n"
            # device numbers no kernel writes (the fuzz target's first find): skipped
            "75 72 52766:811 / /big rw - tmpfs t rw\n"
            "76 72 +1:-2 / /signed rw - tmpfs t rw\n"
            "77 72 1_0:3 / /underscore rw - tmpfs t rw\n")
    assert parse_mountinfo(text) == [(21, "/proc", "proc"), (254 << 20, "/", "ext4"),
                                     (57, "/srv/with space", "tmpfs")]
    assert kernel_dev(os.makedev(254, 3)) == 254 << 20 | 3


def news(call, pid, mntns, ts=1, dev=0, result=0, ppid=1):
    return News(call, pid, ppid, mntns, result, dev, ts)


def test_requests_coalesce_per_namespace():
    r = Requests(limit=4)
    for i in range(100):  # a runtime setting up one container: many mounts
        r.add(news(M_MOUNT, 1000 + i % 3, mntns=7, ts=10 + i))
    r.add(news(M_UNGUARDED, 2000, mntns=7, dev=99, ts=500))
    r.add(news(M_MOUNT, 3000, mntns=8))
    r.add(news(M_FSMOUNT, 4000, mntns=8, result=5))
    first, second, third = r.take(10)
    assert (first.fd, first.pids) == (5, [4000])  # a detached mount on its own
    assert (second.mntns, second.ts, second.devs) == (7, 10, {99})
    assert second.pids[:2] == [2000, 1] and len(second.pids) <= 4  # the newest first
    assert (third.mntns, third.pids) == (8, [3000, 1])
    assert r.coalesced == 100 and not r.take(10)


def test_requests_past_the_bound_ask_for_one_scan_of_everything():
    r = Requests(limit=4)
    for ns in range(10):
        r.add(news(M_MOUNT, 100 + ns, mntns=ns + 1))
    assert r.overflow and len(r) == 4
    r.clear()
    assert not r.overflow and not r.take(10)

