"""File changes an open does not show (wire.File), from real processes
through the real sensor: each call form (absolute, relative, dirfd, fd),
the calls reported with no rule (set-id bits, file capabilities), and what
must give nothing."""

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from kmod import verdict_line
from wire import File

from .conftest import collect, drain_for, flush, kernel

pytestmark = kernel


def act(code: str, cwd: str | None = None) -> int:
    """Run ``code`` in a fresh Python process (``os`` imported); its pid.
    It fails the test if the code raises anything but OSError."""
    script = "import os, sys, json\nprint(os.getpid(), flush=True)\n" + textwrap.dedent(code)
    p = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True,
                       cwd=cwd, timeout=10)
    assert p.returncode == 0, p.stderr
    return int(p.stdout.split()[0])


def files_of(sensor, pid: int, n: int, timeout: float = 3.0) -> list[File]:
    """The pid's File events: waits for ``n``, then for any more for 0.3 s."""
    def keep(e):
        return isinstance(e, File) and e.pid == pid
    events = collect(sensor, keep, until=lambda evs: len(evs) >= n, timeout=timeout)
    return events + [e for e in drain_for(sensor, 0.3) if keep(e)]


def rules(directory: Path, ops: list[str] | None = None) -> str:
    op = f"match.op = {json.dumps(ops)}" if ops else ""
    return f"""
[[rule]]
name = "test-files"
hook = "file"
action = "audit"
match.path = "{directory}/**"
{op}
"""


@pytest.fixture(scope="module")
def watched():
    """A sensor whose file rule names a fresh folder, and the folder."""
    from kmod import LinuxSensor, Policy

    folder = Path(tempfile.mkdtemp(prefix="immune-kf-", dir="/var/lib"))
    s = LinuxSensor(Policy.parse(rules(folder)))
    s.start()
    yield s, folder
    s.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_setid_chmod_is_reported_without_a_rule_in_every_form(sensor, workdir):
    """chmod u+s anywhere: by absolute path, relative to the cwd, through a
    dirfd, and on an fd; the path is the file's in each."""
    flush(sensor)
    f = workdir / "tool"
    f.write_bytes(b"")
    pid = act(f"""
        os.chmod({str(f)!r}, 0o4755)
        os.chmod("tool", 0o2711)
        d = os.open({str(workdir)!r}, os.O_RDONLY)
        os.chmod("tool", 0o6750, dir_fd=d)
        fd = os.open({str(f)!r}, os.O_RDONLY)
        os.fchmod(fd, 0o4700)
        os.chmod({str(f)!r}, 0o755)  # no set-id bit: not reported
        """, cwd=str(workdir))
    events = files_of(sensor, pid, 4)
    assert [(e.op, e.path, oct(e.mode), e.result, e.rule, e.verdict) for e in events] == [
        ("chmod", str(f), oct(0o4755), 0, "file-setid-bits", "audit"),
        ("chmod", str(f), oct(0o2711), 0, "file-setid-bits", "audit"),
        ("chmod", str(f), oct(0o6750), 0, "file-setid-bits", "audit"),
        ("chmod", str(f), oct(0o4700), 0, "file-setid-bits", "audit")]
    ev = events[0]
    assert (ev.ppid, ev.tid, ev.uid, ev.euid) == (os.getpid(), pid, 0, 0)
    assert verdict_line(ev) == f"IMMUNE: [AUDIT] chmod {f} 4755 (pid={pid})"


def test_a_refused_setid_chmod_is_reported_with_its_error(sensor, workdir):
    flush(sensor)
    f = workdir / "theirs"
    f.write_bytes(b"")
    os.chmod(workdir, 0o755)
    pid = act(f"""
        os.setgid(65534); os.setuid(65534)
        try:
            os.chmod({str(f)!r}, 0o4755)
        except PermissionError:
            pass
        """)
    (ev,) = files_of(sensor, pid, 1)
    assert (ev.op, ev.path, ev.mode, ev.result, ev.euid) == ("chmod", str(f), 0o4755, -errno.EPERM, 65534)


def test_file_capabilities_are_reported_without_a_rule(sensor, workdir):
    flush(sensor)
    f = workdir / "capped"
    f.write_bytes(b"")
    # VFS_CAP_REVISION_2, effective: cap_net_raw permitted
    blob = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    pid = act(f"""
        os.setxattr({str(f)!r}, "security.capability", {blob!r})
        fd = os.open({str(f)!r}, os.O_RDONLY)
        os.setxattr(fd, "security.capability", {blob!r})
        os.setxattr({str(f)!r}, "user.note", b"x")  # not reported
        """)
    events = files_of(sensor, pid, 2)
    assert [(e.op, e.path, e.xattr, e.result, e.rule) for e in events] == [
        ("setxattr", str(f), "security.capability", 0, "file-capability")] * 2
    assert verdict_line(events[0]) == f"IMMUNE: [AUDIT] setxattr {f} security.capability (pid={pid})"


def test_history_redirected_to_dev_null(sensor):
    """`ln -sf /dev/null ~/.bash_history`, the default policy's rule, by an
    absolute and by a relative name."""
    home = Path(tempfile.mkdtemp(prefix="immune-kf-", dir="/home"))
    try:
        flush(sensor)
        pid = act(f"""
            os.symlink("/dev/null", {str(home / '.bash_history')!r})
            os.unlink({str(home / '.bash_history')!r})
            os.symlink("/dev/null", ".zsh_history")
            """, cwd=str(home))
        events = files_of(sensor, pid, 3)
    finally:
        shutil.rmtree(home)
    assert [(e.op, e.path, e.source, e.rule) for e in events] == [
        ("symlink", f"{home}/.bash_history", "/dev/null", "file-tamper-history"),
        ("unlink", f"{home}/.bash_history", "", "file-tamper-history"),
        ("symlink", f"{home}/.zsh_history", "/dev/null", "file-tamper-history")]
    assert verdict_line(events[0]) == \
        f"IMMUNE: [AUDIT] symlink {home}/.bash_history -> /dev/null (pid={pid})"


def test_unrelated_changes_give_nothing(sensor):
    flush(sensor)
    d = tempfile.mkdtemp(dir="/tmp")
    try:
        quiet = act(f"""
            p = os.path.join({d!r}, "f")
            open(p, "w").close()
            os.chmod(p, 0o700)
            os.chown(p, 1, 1)
            os.rename(p, p + ".2")
            os.symlink("/dev/null", os.path.join({d!r}, ".bash_history.bak"))
            os.unlink(p + ".2")
            """, cwd=d)
        marker = act(f"os.chmod({d!r}, 0o1777 | 0o4000)")
        collect(sensor, lambda e: isinstance(e, File) and e.pid == marker)
        assert [e for e in drain_for(sensor, 0.2) if isinstance(e, File) and e.pid == quiet] == []
    finally:
        shutil.rmtree(d)


def test_rename_unlink_link_by_every_path_form(watched):
    sensor, folder = watched
    flush(sensor)
    (folder / "a").write_bytes(b"")
    (folder / "sub").mkdir(exist_ok=True)
    pid = act(f"""
        os.rename({str(folder / 'a')!r}, {str(folder / 'b')!r})
        os.rename("b", "c")
        d = os.open({str(folder)!r}, os.O_RDONLY)
        os.rename("c", "sub/d", src_dir_fd=d, dst_dir_fd=d)
        s = os.open({str(folder / 'sub')!r}, os.O_RDONLY)
        os.link("d", "e", src_dir_fd=s, dst_dir_fd=s)
        os.unlink("sub/e")
        os.unlink("d", dir_fd=s)
        os.rmdir("sub", dir_fd=d)
        try:
            os.unlink("missing")
        except FileNotFoundError:
            pass
        """, cwd=str(folder))
    events = files_of(sensor, pid, 8)
    f = str(folder)
    assert [(e.op, e.path, e.source, e.result, e.rule) for e in events] == [
        ("rename", f"{f}/b", f"{f}/a", 0, "test-files"),
        ("rename", f"{f}/c", f"{f}/b", 0, "test-files"),
        ("rename", f"{f}/sub/d", f"{f}/c", 0, "test-files"),
        ("link", f"{f}/sub/e", f"{f}/sub/d", 0, "test-files"),
        ("unlink", f"{f}/sub/e", "", 0, "test-files"),
        ("unlink", f"{f}/sub/d", "", 0, "test-files"),
        ("rmdir", f"{f}/sub", "", 0, "test-files"),
        ("unlink", f"{f}/missing", "", -errno.ENOENT, "test-files")]
    assert verdict_line(events[0]) == f"IMMUNE: [AUDIT] rename {f}/a -> {f}/b (pid={pid})"
    assert verdict_line(events[4]) == f"IMMUNE: [AUDIT] unlink {f}/sub/e (pid={pid})"


def test_a_rename_out_of_a_watched_folder_names_both(watched):
    sensor, folder = watched
    flush(sensor)
    (folder / "secret").write_bytes(b"")
    elsewhere = tempfile.mkdtemp(dir="/var/lib")
    try:
        pid = act(f"os.rename({str(folder / 'secret')!r}, {elsewhere + '/x'!r})")
        (ev,) = files_of(sensor, pid, 1)
    finally:
        shutil.rmtree(elsewhere)
    assert (ev.op, ev.path, ev.source) == ("rename", elsewhere + "/x", str(folder / "secret"))


def test_chmod_chown_xattr_mknod_by_rule(watched):
    sensor, folder = watched
    flush(sensor)
    f = folder / "conf"
    f.write_bytes(b"")
    pid = act(f"""
        os.chmod("conf", 0o600)
        fd = os.open("conf", os.O_RDONLY)
        os.fchown(fd, 1234, -1)
        os.chown({str(f)!r}, -1, 99)
        os.setxattr("conf", "user.tag", b"1")
        os.removexattr(fd, "user.tag")
        os.mkfifo("pipe", 0o640)
        """, cwd=str(folder))
    events = files_of(sensor, pid, 6)
    got = [(e.op, e.path, e.mode, e.owner, e.group, e.xattr) for e in events]
    assert got == [
        ("chmod", str(f), 0o600, -1, -1, ""),
        ("chown", str(f), -1, 1234, -1, ""),
        ("chown", str(f), -1, -1, 99, ""),
        ("setxattr", str(f), -1, -1, -1, "user.tag"),
        ("removexattr", str(f), -1, -1, -1, "user.tag"),
        ("mknod", str(folder / "pipe"), 0o10640, -1, -1, "")]
    assert verdict_line(events[1]) == f"IMMUNE: [AUDIT] chown {f} 1234:-1 (pid={pid})"


def test_ops_a_rule_does_not_name_give_nothing(workdir):
    from kmod import LinuxSensor, Policy

    with LinuxSensor(Policy.parse(rules(workdir, ["unlink"]))) as s:
        (workdir / "a").write_bytes(b"")
        pid = act("""
            os.rename("a", "b")
            os.chmod("b", 0o600)
            os.unlink("b")
            """, cwd=str(workdir))
        (ev,) = files_of(s, pid, 1)
    assert (ev.op, ev.path) == ("unlink", str(workdir / "b"))


def test_a_block_file_rule_is_refused():
    from kmod import PolicyError, Policy

    with pytest.raises(PolicyError, match="file rules can only audit: .* no refusal point here"):
        Policy.parse('[[rule]]\nname = "x"\nhook = "file"\naction = "block"\nmatch.path = "/etc/passwd"\n')


# ---- creates and writes of watched paths, by any path form --------------------------


def opens_of(sensor, pid: int, n: int) -> list:
    from wire import Open

    def keep(e):
        return isinstance(e, Open) and e.pid == pid
    events = collect(sensor, keep, until=lambda evs: len(evs) >= n)
    return events + [e for e in drain_for(sensor, 0.3) if keep(e)]


def test_files_created_in_folders_made_after_load(workdir):
    """The rule's folder does not exist when the policy loads: a file created
    in it later by a relative name, through a dirfd, or deeper down (mkdir -p)
    is reported with its path; so are writes through path forms the prefix
    filter cannot judge (a doubled slash, a symlinked folder)."""
    from kmod import LinuxSensor, Policy

    spool = workdir / "var-spool" / "cron"  # its first missing name longer than 8 bytes
    policy = Policy.parse(f"""
[[rule]]
name = "test-spool"
hook = "open"
action = "audit"
match.path = "{spool}/**"
""")
    with LinuxSensor(policy) as s:
        pid = act(f"""
            os.makedirs({str(spool / 'crontabs')!r})
            os.chdir({str(spool / 'crontabs')!r})
            os.close(os.open("root", os.O_CREAT | os.O_WRONLY, 0o600))
            d = os.open({str(spool)!r}, os.O_RDONLY)
            os.close(os.open("atjob", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=d))
            os.close(os.open({str(workdir) + '/var-spool//cron/crontabs/bob'!r}, os.O_CREAT | os.O_WRONLY, 0o600))
            os.symlink({str(spool)!r}, {str(workdir / 'alias')!r})
            os.close(os.open({str(workdir / 'alias' / 'evil')!r}, os.O_CREAT | os.O_WRONLY, 0o600))
            os.close(os.open({str(workdir / 'elsewhere')!r}, os.O_CREAT | os.O_WRONLY, 0o600))
            """)
        events = opens_of(s, pid, 4)
    assert [(e.path, e.rule, e.result >= 0) for e in events] == [
        (f"{spool}/crontabs/root", "test-spool", True),
        (f"{spool}/atjob", "test-spool", True),
        (f"{spool}/crontabs/bob", "test-spool", True),
        (f"{spool}/evil", "test-spool", True)]


def test_a_file_created_by_a_relative_name_is_blocked(workdir):
    """fanotify judges the file opened, whatever the path form."""
    from kmod import LinuxSensor, Policy

    guarded = workdir / "guarded"
    guarded.mkdir()
    policy = Policy.parse(f"""
[[rule]]
name = "test-no-drop"
hook = "open"
action = "block"
match.path = "{guarded}/*"
""")
    with LinuxSensor(policy) as s:
        pid = act(f"""
            os.chdir({str(guarded)!r})
            for how in ("rel", "dirfd"):
                try:
                    if how == "rel":
                        os.open("dropped", os.O_CREAT | os.O_WRONLY, 0o600)
                    else:
                        os.open("dropped2", os.O_CREAT | os.O_WRONLY, 0o600,
                                dir_fd=os.open({str(workdir)!r} + "/guarded", os.O_RDONLY))
                except PermissionError:
                    print(json.dumps(how), flush=True)
            """)
        events = opens_of(s, pid, 2)
    assert [(e.path, e.verdict, e.result) for e in events] == [
        (f"{guarded}/dropped", "block", -errno.EPERM), (f"{guarded}/dropped2", "block", -errno.EPERM)]


def test_a_watched_name_is_found_at_any_offset(sensor):
    """The kernel finds the last component 8 bytes at a time: names starting
    and ending at every offset within a word, absolute and relative, and a
    longer stale path in the scratch before a short one."""
    dirs = [Path(tempfile.mkdtemp(prefix="immune-kf-" + "d" * k, dir="/home")) for k in range(8)]
    try:
        calls = []
        for d in dirs:
            calls.append(f"os.symlink('/dev/null', {str(d / '.bash_history')!r})")
            calls.append(f"os.unlink({str(d / '.bash_history')!r})")
            calls.append(f"os.chdir({str(d)!r}); os.symlink('/dev/null', '.zsh_history')")
            calls.append("os.unlink('./.zsh_history')")
            calls.append("os.symlink('/dev/null', 'x.bash_history')")  # not the name
            calls.append("os.symlink('/dev/null', '.bash_historyx')")
        flush(sensor)
        pid = act("\n".join(calls))
        events = files_of(sensor, pid, 4 * len(dirs))
    finally:
        for d in dirs:
            shutil.rmtree(d)
    expected = []
    for d in dirs:
        expected += [("symlink", f"{d}/.bash_history"), ("unlink", f"{d}/.bash_history"),
                     ("symlink", f"{d}/.zsh_history"), ("unlink", f"{d}/.zsh_history")]
    assert [(e.op, e.path) for e in events] == expected


def test_the_newer_call_forms(watched):
    """fchmodat2 (AT_EMPTY_PATH on an O_PATH fd), setxattrat and removexattrat
    (Linux 6.13), renameat2 with RENAME_NOREPLACE, linkat of an fd (AT_EMPTY_PATH)."""
    sensor, folder = watched
    flush(sensor)
    (folder / "n").write_bytes(b"")
    pid = act(f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        def call(*args):
            if libc.syscall(*args) != 0:
                raise OSError(ctypes.get_errno(), "syscall")
        fd = os.open({str(folder / 'n')!r}, os.O_PATH)
        call(452, fd, b"", 0o640, 0x1000)  # fchmodat2
        d = os.open({str(folder)!r}, os.O_RDONLY)
        args = (ctypes.c_uint64 * 3)(ctypes.cast(ctypes.c_char_p(b"1"), ctypes.c_void_p).value, 1, 0)
        call(463, d, b"n", 0, b"user.a", args, 24)  # setxattrat
        call(466, d, b"n", 0, b"user.a")  # removexattrat
        call(316, d, b"n", d, b"m", 1)  # renameat2, RENAME_NOREPLACE
        call(265, os.open({str(folder / 'm')!r}, os.O_RDONLY), b"", d, b"hard", 0x1000)  # linkat
        """)
    events = files_of(sensor, pid, 5)
    f = str(folder)
    assert [(e.op, e.path, e.source, e.mode, e.xattr, e.result) for e in events] == [
        ("chmod", f"{f}/n", "", 0o640, "", 0),
        ("setxattr", f"{f}/n", "", -1, "user.a", 0),
        ("removexattr", f"{f}/n", "", -1, "user.a", 0),
        ("rename", f"{f}/m", f"{f}/n", -1, "", 0),
        ("link", f"{f}/hard", f"{f}/m", -1, "", 0)]
