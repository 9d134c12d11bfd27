"""Blocks beyond the default policy: SHA-256 deny list, open blocks,
policy reloads in place, the allow cache and its invalidation."""

import errno
import hashlib
import os
import socket
import subprocess
import sys
import time

import pytest

from kmod import DEFAULT_POLICY, LinuxSensor, Policy, verdict_line
from wire import Connect, Exec, Notice, Open

from .conftest import _REASON, collect, executable_copy, flush, kernel, run_child

pytestmark = kernel


@pytest.fixture(scope="module")
def sensor():
    if _REASON is not None:
        pytest.skip(_REASON)
    s = LinuxSensor()
    s.start()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def default_policy_after(sensor):
    yield
    sensor.reload(Policy.default())


def with_rules(extra: str) -> Policy:
    """Extra rules first (first match wins), then the default ones."""
    return Policy.parse(extra + "\n" + DEFAULT_POLICY.read_text().replace("version = 1", ""))


def with_connect_block(name: str, address: str, port: int) -> Policy:
    return with_rules(f'[[rule]]\nname = "{name}"\nhook = "connect"\naction = "block"\n'
                      f'match.address = "{address}"\nmatch.port = {port}\n')


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_denied_digest_is_blocked_under_any_name(sensor, workdir):
    bad = executable_copy(workdir, "tool", tag=b"bad" + workdir.name.encode())
    good = executable_copy(workdir, "other", tag=b"good" + workdir.name.encode())
    sensor.reload(with_rules(f'''
[[rule]]
name = "known-bad"
hook = "exec"
action = "block"
match.sha256 = "{sha256(bad)}"
'''))
    flush(sensor)
    first = run_child("exec", str(bad))
    assert first.errno == errno.EPERM
    renamed = workdir / "sub" / "innocent-name"
    renamed.parent.mkdir()
    renamed.write_bytes(bad.read_bytes())  # a new inode: nothing cached about it
    renamed.chmod(0o755)
    second = run_child("exec", str(renamed))
    assert second.errno == errno.EPERM
    assert run_child("exec", str(good)).returncode == 0
    pids = {first.pid: bad, second.pid: renamed}
    events = collect(sensor, lambda e: isinstance(e, Exec) and e.pid in pids
                     and e.verdict == "block", until=lambda evs: len(evs) == 2)
    for ev in events:
        path = pids[ev.pid]
        assert (ev.rule, ev.exe, ev.filename) == ("known-bad", str(path), str(path))
        assert verdict_line(ev) == f"IMMUNE: [BLOCKED] exec {path} (pid={ev.pid})"


def test_reload_takes_effect_without_detaching(sensor):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        before = sensor.attachments()
        assert run_child("connect", "127.0.0.1", str(port)).errno == 0

        sensor.reload(with_connect_block("reload-test", "127.0.0.0/8", port))
        flush(sensor)
        child = run_child("connect", "127.0.0.1", str(port))
        assert child.errno == errno.EPERM
        (ev,) = collect(sensor, lambda e: isinstance(e, Connect) and e.pid == child.pid)
        assert (ev.verdict, ev.rule) == ("block", "reload-test")
        assert sensor.attachments() == before
        assert sensor.statistics().policy_generation >= 1

        sensor.reload(Policy.default())
        assert run_child("connect", "127.0.0.1", str(port)).errno == 0


HOLDER = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("connected", flush=True)
s.settimeout(10)
try:
    print("closed" if s.recv(1) == b"" else "data", flush=True)
except OSError as e:
    print(type(e).__name__, flush=True)
"""


def test_reload_resets_connections_the_new_rules_refuse(sensor):
    """A block added at runtime (a playbook's block_connect, an isolation)
    also ends the connections already open to that address: a reverse shell
    must not outlive the block."""
    with socket.socket() as server, socket.socket() as kept:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        doomed = subprocess.Popen([sys.executable, "-S", "-c", HOLDER, str(port)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert doomed.stdout.readline().strip() == "connected"
            peer, _ = server.accept()
            # another connection, to a port no rule names, lives on
            other = socket.create_server(("127.0.0.1", 0))
            kept.connect(other.getsockname())
            flush(sensor)
            sensor.reload(with_connect_block("c2-found", "127.0.0.1", port))
            assert doomed.stdout.readline().strip() == "ConnectionAbortedError"
            assert doomed.wait(5) == 0
            (notice,) = collect(sensor, lambda e: isinstance(e, Notice) and e.what == "connection_cut")
            assert notice.detail == f"tcp connection to 127.0.0.1:{port} reset (rule c2-found)"
            kept.sendall(b"still here")
            conn, _ = other.accept()
            assert conn.recv(10) == b"still here"
            conn.close()
            other.close()
            peer.close()
        finally:
            doomed.kill()
            doomed.wait()


def test_reload_flushes_the_allow_cache(sensor, workdir):
    tool = executable_copy(workdir, "tool")
    assert run_child("exec", str(tool)).returncode == 0  # allowed, so cached
    assert run_child("exec", str(tool)).returncode == 0
    sensor.reload(with_rules(f'''
[[rule]]
name = "no-tool"
hook = "exec"
action = "block"
match.path = "{workdir}/*"
'''))
    assert run_child("exec", str(tool)).errno == errno.EPERM


def test_modifying_a_cached_file_clears_its_cache(sensor, workdir):
    evil = executable_copy(workdir, "evil", tag=b"evil" + workdir.name.encode())
    digest = sha256(evil)
    bad_bytes = evil.read_bytes()
    evil.unlink()
    sensor.reload(with_rules(f'''
[[rule]]
name = "known-bad"
hook = "exec"
action = "block"
match.sha256 = "{digest}"
'''))
    tool = executable_copy(workdir, "tool")
    assert run_child("exec", str(tool)).returncode == 0  # allowed and cached
    with open(tool, "r+b") as f:  # same inode, new content
        f.write(bad_bytes)
    assert sha256(tool) == digest
    assert run_child("exec", str(tool)).errno == errno.EPERM


def test_open_block(sensor, workdir):
    secret = workdir / "secret"
    secret.write_text("s")
    keys = workdir / "keys"
    keys.mkdir()
    (keys / "a.pem").write_text("k")
    (keys / "b.txt").write_text("t")
    sensor.reload(with_rules(f'''
[[rule]]
name = "secrets"
hook = "open"
action = "block"
match.path = ["{secret}", "{keys}/*.pem"]
'''))
    flush(sensor)
    blocked = run_child("open", str(secret))
    assert blocked.errno == errno.EPERM
    (ev,) = collect(sensor, lambda e: isinstance(e, Open) and e.pid == blocked.pid)
    assert (ev.verdict, ev.rule, ev.result) == ("block", "secrets", -errno.EPERM)
    assert verdict_line(ev) == f"IMMUNE: [BLOCKED] open {secret} (pid={blocked.pid})"
    assert run_child("open", str(keys / "a.pem")).errno == errno.EPERM
    assert run_child("open", str(keys / "b.txt")).errno == 0
    assert sensor.statistics().fanotify["denied"] >= 2
    sensor.reload(Policy.default())
    assert run_child("open", str(secret)).errno == 0


def test_an_open_block_in_a_folder_made_after_the_load_holds_once_it_exists(sensor, workdir):
    later = workdir / "later"
    sensor.reload(with_rules(f'''
[[rule]]
name = "keys"
hook = "open"
action = "block"
match.path = ["{later}/app/key", "{later}/keys/*.pem"]
'''))
    (later / "app").mkdir(parents=True)
    (later / "keys").mkdir()
    (later / "app" / "key").write_text("k")
    (later / "keys" / "a.pem").write_text("k")
    deadline = time.monotonic() + 5
    while sensor.statistics().fanotify["late_marks"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sensor.statistics().fanotify["late_marks"] == 2
    assert run_child("open", str(later / "app" / "key")).errno == errno.EPERM
    assert run_child("open", str(later / "keys" / "a.pem")).errno == errno.EPERM
    (later / "keys" / "b.txt").write_text("t")
    assert run_child("open", str(later / "keys" / "b.txt")).errno == 0


def test_a_double_star_open_block_reaches_every_folder_below_also_those_made_later(sensor, workdir):
    """A fanotify mark on a folder sees its children only: each folder of
    the tree is marked, and inotify reports the new ones."""
    keys = workdir / "keys"
    (keys / "deep" / "deeper").mkdir(parents=True)
    (keys / "deep" / "deeper" / "old.pem").write_text("k")
    sensor.reload(with_rules(f'''
[[rule]]
name = "keys"
hook = "open"
action = "block"
match.path = "{keys}/**"
'''))
    assert run_child("open", str(keys / "deep" / "deeper" / "old.pem")).errno == errno.EPERM
    before = sensor.statistics().fanotify["tree_marks"]
    (keys / "new" / "inner").mkdir(parents=True)
    (keys / "new" / "inner" / "fresh.pem").write_text("k")
    deadline = time.monotonic() + 5
    while sensor.statistics().fanotify["tree_marks"] < before + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sensor.statistics().fanotify["tree_marks"] >= before + 2
    assert run_child("open", str(keys / "new" / "inner" / "fresh.pem")).errno == errno.EPERM
    (workdir / "outside.txt").write_text("o")
    assert run_child("open", str(workdir / "outside.txt")).errno == 0


def test_a_guarded_file_stays_blocked_replaced_by_a_rename_or_under_another_name(sensor, workdir):
    """passwd writes /etc/shadow anew and renames it into place: a new inode.
    A hard link names the same file where no rule looks; an allow cached on
    the file under one name would let it through under the other."""
    secret = workdir / "secret"
    secret.write_text("old")
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    sensor.reload(with_rules(f'''
[[rule]]
name = "secrets"
hook = "open"
action = "block"
match.path = "{secret}"
'''))
    flush(sensor)
    # another name, made after the load, of the file there at the load
    os.link(secret, elsewhere / "alias-1")
    assert run_child("open", str(elsewhere / "alias-1")).errno == errno.EPERM
    # replaced by a rename: the new file is blocked, and then under another name too
    (workdir / "secret.new").write_text("new")
    os.replace(workdir / "secret.new", secret)
    blocked = run_child("open", str(secret))
    assert blocked.errno == errno.EPERM
    (ev,) = collect(sensor, lambda e: isinstance(e, Open) and e.pid == blocked.pid)
    assert (ev.verdict, ev.rule) == ("block", "secrets")
    os.link(secret, elsewhere / "alias-2")
    assert run_child("open", str(elsewhere / "alias-2")).errno == errno.EPERM
    # a linked file the rule does not name is allowed each time, never cached
    (workdir / "plain").write_text("p")
    os.link(workdir / "plain", elsewhere / "plain-alias")
    before = sensor.statistics().fanotify["linked"]
    assert run_child("open", str(workdir / "plain")).errno == 0
    assert run_child("open", str(workdir / "plain")).errno == 0
    assert sensor.statistics().fanotify["linked"] >= before + 2
    assert run_child("open", str(secret)).errno == errno.EPERM
