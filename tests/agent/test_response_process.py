"""kill_process and collect_evidence on real processes.

The victims are started outside this process's tree (their launcher exits),
as an attacker's processes would be: the executor refuses to touch the
agent's own children, and here the test process plays the agent."""

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import pytest

import wire
from actors import Codec, DecodeError
from agent.response import (
    Executor,
    Refused,
    ResponseError,
    collect_evidence,
    kill_process,
    quarantine_file,
    unpack,
    verify_bundle,
)
from agent.response._files import protected_files

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="signalling and reading other processes needs root")


def detached(script: str, env: dict | None = None) -> int:
    """Run ``script`` in a bash subshell whose parent exits at once; its pid."""
    out = subprocess.run(["bash", "-c", f"({script}) </dev/null >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True, env=env)
    return int(out.stdout)


def children_of(pid: int, timeout: float = 3.0, want: int = 1) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    # bytes: another test's process may have a name that is not UTF-8
                    stat = Path(f"/proc/{name}/stat").read_bytes()
                except OSError:
                    continue
                if int(stat[stat.rindex(b")") + 2:].split()[1]) == pid:
                    found.append(int(name))
        if len(found) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Running (a zombie is dead: it only waits to be reaped by its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_started(pid: int, comm: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/comm").read_text().strip() != comm:
        assert time.monotonic() < deadline, f"pid {pid} never became {comm}"
        time.sleep(0.01)


@pytest.fixture
def executor(tmp_path):
    return Executor(tmp_path / "agent")


def command(action, **params):
    """The command as the executor gets it: decoded, so typed and checked."""
    return msgspec.convert({"id": f"c-{time.monotonic_ns()}", **params}, wire.COMMANDS[action])


def run(executor, action, **params):
    return executor.execute(command(action, **params))


def test_kill_a_process(executor):
    pid = detached("exec sleep 300")
    wait_started(pid, "sleep")
    r = run(executor, "kill_process", pid=pid)
    assert r.ok, r.detail
    assert r.data["killed"] == [pid] and r.detail == f"killed 1 process(es): {pid}"
    assert not alive(pid)


@pytest.mark.parametrize("children_files", [True, False], ids=["children-files", "scan"])
def test_kill_a_process_tree_frozen_first(executor, monkeypatch, children_files):
    """The tree is found through the threads' ``children`` files, or by a
    scan of /proc on a kernel without CONFIG_PROC_CHILDREN."""
    from agent.response import _process

    monkeypatch.setattr(_process, "_CHILDREN_FILES", children_files and _process._CHILDREN_FILES)
    pid = detached("sleep 300 & sleep 300 & bash -c 'sleep 300 & wait' & wait")
    kids = children_of(pid, want=3)
    grandkids = children_of(max(kids), want=1) if kids else []
    tree = {pid, *kids, *grandkids}
    assert len(tree) >= 5, tree
    r = run(executor, "kill_process", pid=pid, tree=True)
    assert r.ok, r.detail
    assert set(r.data["killed"]) >= tree
    assert not any(alive(p) for p in tree)


def test_a_struck_kill_is_dead_before_execute_and_finished_by_it(tmp_path):
    """The actor's order: the signals on its own thread (``strike``), the
    wait for the deaths and the result on a worker (``execute``), even if the
    command expires between the two."""
    now = [time.time()]
    executor = Executor(tmp_path / "agent", clock=lambda: now[0])
    pid = detached("sleep 300 & wait")
    [child] = children_of(pid)
    cmd = msgspec.convert({"id": "c-strike", "pid": pid, "tree": True, "expires": int((now[0] + 5) * 1e9)},
                          wire.KillProcess)
    executor.strike(cmd)
    deadline = time.monotonic() + 2
    while alive(pid) or alive(child):
        assert time.monotonic() < deadline, "strike sent no SIGKILL"
        time.sleep(0.005)
    now[0] += 10
    r = executor.execute(cmd)
    assert r.ok and sorted(r.data["killed"]) == sorted([pid, child]), r.detail
    assert executor.execute(cmd).detail.startswith("already done (command repeated): killed 2")


def test_a_struck_refusal_is_reported_by_execute(executor):
    cmd = command("kill_process", pid=1)
    executor.strike(cmd)
    r = executor.execute(cmd)
    assert not r.ok and r.detail == "refused: pid 1 is init; killing it would bring the host down"


def test_without_tree_the_children_survive(executor):
    pid = detached("sleep 300 & wait")
    [child] = children_of(pid)
    try:
        assert run(executor, "kill_process", pid=pid).ok
        assert not alive(pid) and alive(child)
    finally:
        os.kill(child, 9)


def test_refuses_init_the_agent_and_its_ancestors(executor):
    for pid, why in ((1, "pid 1 is init"), (os.getpid(), f"pid {os.getpid()} is the agent itself"),
                     (os.getppid(), f"is an ancestor of the agent (pid {os.getpid()})")):
        r = run(executor, "kill_process", pid=pid, tree=True)
        assert not r.ok and r.detail.startswith("refused:") and why in r.detail, r.detail
    assert alive(os.getppid())


def test_refuses_the_agents_own_children(executor):
    child = subprocess.Popen(["sleep", "300"])
    try:
        r = run(executor, "kill_process", pid=child.pid)
        assert not r.ok and f"pid {child.pid} is a child of the agent" in r.detail
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_refuses_a_tree_that_holds_the_agent_and_leaves_it_running():
    pid = detached("sleep 300 & wait")
    [child] = children_of(pid)
    try:
        with pytest.raises(Refused, match=f"refused: the tree of pid {pid} holds the agent"):
            kill_process(pid, tree=True, protected={1: "init", child: "the agent"})
        for p in (pid, child):  # frozen while the tree was walked, thawed after the refusal
            state = Path(f"/proc/{p}/stat").read_text().split(") ")[1][0]
            assert state != "T", (p, state)
    finally:
        for p in (child, pid):
            os.kill(p, 9)


def test_a_reused_pid_is_not_killed(executor):
    pid = detached("exec sleep 300")
    wait_started(pid, "sleep")
    try:
        r = run(executor, "kill_process", pid=pid, exe="/usr/bin/bash")
        assert not r.ok and "may have been reused" in r.detail and alive(pid)
        sleep_exe = os.readlink(f"/proc/{pid}/exe")
        assert run(executor, "kill_process", pid=pid, exe=sleep_exe).ok
    finally:
        if alive(pid):
            os.kill(pid, 9)


def test_a_gone_process_and_a_repeated_command(executor):
    pid = detached("exit 0")
    time.sleep(0.1)
    cmd = command("kill_process", pid=pid)
    r = executor.execute(cmd)
    assert r.ok and r.detail == f"pid {pid} was already gone"
    again = executor.execute(cmd)
    assert again.ok and again.detail.startswith("already done (command repeated)")


def test_expired_and_unknown_commands_are_not_run(executor):
    r = executor.execute(command("kill_process", pid=5, expires=1))
    assert not r.ok and r.detail == "expired before the executor took it; not run"
    r = executor.execute(command("block_connect", address="10.0.0.1"))
    assert not r.ok and r.detail == "no kernel sensor is running on this agent; nothing can be blocked"
    # an action the agent does not know never reaches the executor: the relay's decoder refuses it
    frame = msgspec.msgpack.encode([1, {"type": "format_disk", "id": "x"}])
    with pytest.raises(DecodeError, match="format_disk"):
        Codec(wire.HiveMessage).decode(frame)


LISTENER = r"""
import socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
cli = socket.create_connection(srv.getsockname())
f = open(sys.argv[1], "rb")
print(srv.getsockname()[1], flush=True)
time.sleep(300)
"""


def test_collect_evidence_bundle_verifies(tmp_path):
    marker = tmp_path / "marker.bin"
    marker.write_bytes(b"x")
    proc = subprocess.Popen([sys.executable, "-S", "-c", LISTENER, str(marker)], stdout=subprocess.PIPE, text=True,
                            env={"EVIDENCE_MARKER": "present", "PATH": os.environ["PATH"]})
    try:
        port = int(proc.stdout.readline())
        out = collect_evidence(proc.pid, tmp_path / "evidence", command="c-1", max_inline=64 << 20)
    finally:
        proc.kill()
        proc.wait()
    bundle = Path(out["bundle"])
    manifest = out["manifest"]
    assert set(manifest["files"]) == {"status", "stat", "cmdline", "environ", "maps", "limits", "cgroup",
                                      "fds.json", "sockets.json", "process.json", "exe"}
    assert manifest["errors"] == {}
    assert verify_bundle(bundle) == []
    assert b"EVIDENCE_MARKER=present" in (bundle / "environ").read_bytes()
    assert (bundle / "exe").read_bytes() == Path(os.path.realpath(sys.executable)).read_bytes()
    fds = json.loads((bundle / "fds.json").read_text())
    assert str(marker) in [fd["target"] for fd in fds]
    sockets = json.loads((bundle / "sockets.json").read_text())
    assert {"local": f"127.0.0.1:{port}", "state": "LISTEN"}.items() <= next(
        s for s in sockets if s["state"] == "LISTEN").items()
    assert any(s["remote"] == f"127.0.0.1:{port}" and s["state"] == "ESTABLISHED" for s in sockets)
    assert json.loads((bundle / "process.json").read_text())["pid"] == proc.pid
    # the archive that travels to the hive holds the same, intact
    copy = unpack(out["archive"], tmp_path / "at-the-hive")
    assert verify_bundle(copy) == []
    # and a changed file is caught
    (bundle / "cmdline").write_bytes(b"tampered")
    assert verify_bundle(bundle) == ["cmdline"]


def test_collect_evidence_of_a_gone_process(executor, caplog):
    """An expected race (the process exited before the evidence was taken)
    that nothing remembers (no process table): a failed result, logged as a
    warning, not as an agent fault."""
    pid = detached("exit 0")
    time.sleep(0.1)
    with caplog.at_level(logging.WARNING):
        r = run(executor, "collect_evidence", pid=pid)
    assert not r.ok and r.detail == (f"pid {pid} is gone and the agent's process table has no record of it; "
                                     "there is no process to collect evidence from")
    (record,) = [x for x in caplog.records if getattr(x, "event", "") == "response.failed"]
    assert record.levelno == logging.WARNING


def test_collect_evidence_through_the_executor(executor):
    pid = detached("exec sleep 300")
    wait_started(pid, "sleep")
    try:
        r = run(executor, "collect_evidence", pid=pid, exe=False)
    finally:
        os.kill(pid, 9)
    assert r.ok, r.detail
    assert "exe" not in r.data["manifest"]["files"] and "attached" in r.detail
    assert "archive" not in r.data and r.data["archive_size"] == len(r.archive) > 0


def test_an_archive_too_large_to_send_stays_on_the_agent(executor, tmp_path):
    """With an executable of a megabyte that does not compress, the archive
    is over what a result may carry to a hive at its least max_frame: the
    result says where it is kept, and still fits the wire."""
    big = tmp_path / "bigsleep"
    big.write_bytes(Path(shutil.which("sleep")).read_bytes() + os.urandom(1 << 20))
    big.chmod(0o755)
    pid = detached(f"exec {big} 300")
    wait_started(pid, "bigsleep")
    try:
        r = run(executor, "collect_evidence", pid=pid, exe=True)
    finally:
        os.kill(pid, 9)
    assert r.ok, r.detail
    assert r.archive == b"" and r.data["archive_size"] > wire.MAX_ARCHIVE
    assert f"kept on the agent at {r.data['archive_path']}" in r.detail
    assert hashlib.sha256(Path(r.data["archive_path"]).read_bytes()).hexdigest() == r.data["archive_sha256"]
    assert len(msgspec.msgpack.encode(r)) <= wire.MAX_RESULT_BYTES


def test_a_result_over_the_bound_leaves_its_archive_then_its_data_behind():
    from agent.response._executor import _fit

    big = {"files": {f"f{i}": "x" * 200 for i in range(1000)}}  # about 200 KiB of manifest
    r = _fit(wire.CommandResult(command="c", ok=True, detail="2 files from pid 7, 600 bytes packed, attached",
                                data=big, archive=bytes(wire.MAX_ARCHIVE)))
    assert r.archive == b"" and r.data == big
    assert r.detail.endswith("; the archive stays on the agent (the result would be too large)")
    assert "attached" not in r.detail
    huge = {"files": {f"f{i}": "x" * 1000 for i in range(1000)}}  # about 1 MB
    r = _fit(wire.CommandResult(command="c", ok=True, data=huge))
    assert list(r.data) == ["data_dropped"] and "over the" in r.data["data_dropped"]
    assert len(msgspec.msgpack.encode(r)) <= wire.MAX_RESULT_BYTES


def test_the_agents_launcher_is_never_quarantined(tmp_path, monkeypatch):
    """A checkout under /tmp runs its launcher from there, and the default
    playbooks quarantine what runs from /tmp: never the agent's own."""
    launcher = tmp_path / "bin" / "immune-node"
    launcher.parent.mkdir()
    launcher.write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "argv", [str(launcher)])
    with pytest.raises(Refused, match="the agent or the host needs to run"):
        quarantine_file(str(launcher), tmp_path / "q", command="q1")
    assert launcher.exists() and str(launcher) in protected_files()


def test_an_archive_that_climbs_out_is_refused(tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("bundle/ok", "bundle/../../escape"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ResponseError, match="plain files and folders only, not 'bundle/../../escape'"):
        unpack(buf.getvalue(), tmp_path / "in")
    assert not (tmp_path / "escape").exists()



def test_a_result_always_fits_the_wire_contract(executor):
    """A refusal that names a program whose path is not UTF-8 (read from
    /proc as surrogates, which no encoder takes), and a detail over the
    bound: the result is still kept and still decodes at the hive."""
    folder = Path(tempfile.mkdtemp(prefix="immune-odd-", dir="/var/lib"))  # not /tmp: a sensor may refuse it
    odd = folder / os.fsdecode(b"sleep-\xff")
    odd.write_bytes(Path("/bin/sleep").read_bytes())
    odd.chmod(0o755)
    pid = detached(f"exec {shlex.quote(str(odd))} 300")
    try:
        deadline = time.monotonic() + 3
        while os.readlink(f"/proc/{pid}/exe") != str(odd):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = run(executor, "kill_process", pid=pid, exe="/usr/bin/other")
    finally:
        os.kill(pid, 9)
        shutil.rmtree(folder)
    assert not r.ok and f"runs {folder}/sleep-\ufffd, not /usr/bin/other" in r.detail
    codec = Codec(wire.AgentMessage)
    assert codec.decode(codec.encode(r)) == r
    long = executor._finish(command("kill_process", pid=5), False, "x" * (wire.MAX_TEXT + 10))
    assert len(long.detail) == wire.MAX_TEXT and codec.decode(codec.encode(long)) == long
