"""Blocks, isolation and quarantine in the real kernel, through a real kmod
sensor, asserted by what real processes get back (EPERM or not).

Everything happens in a network namespace made for this module (the
sensor's scope): ``10.77.0.1`` plays the hive, ``10.77.0.2`` any other host,
``10.77.0.3`` an allow-listed one, all served by one listener.  Nothing
outside the namespace is blocked, so other work on the machine goes on."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import wire
from agent.response import Executor, ResponsePolicy, SensorSlot
from hive.playbook import PlaybookEngine, parse_playbook

HIVE, OTHER, ALLOWED, PORT = "10.77.0.1", "10.77.0.2", "10.77.0.3", 7777

pytestmark = [pytest.mark.kernel, pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/sys/kernel/btf/vmlinux").exists(),
    reason="kernel tests need root and a kernel with BTF")]

CONNECT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(3)
try:
    getattr(s, sys.argv[1])((sys.argv[2], int(sys.argv[3])))
    print(0)
except OSError as e:
    print(e.errno)
"""
EXEC = """
import os, sys
try:
    os.execv(sys.argv[1], [sys.argv[1]])
except OSError as e:
    print(e.errno)
"""
SERVE = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", PORT)); s.listen(64)
print("ready", flush=True)
while True:
    s.accept()[0].close()
""".replace("PORT", str(PORT))


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture(scope="module")
def netns():
    name = f"immresp{os.getpid()}"
    sh("ip", "netns", "add", name)
    server = None
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        # A veth pair with both ends inside: local addresses that are not loopback.
        sh("ip", "-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        for addr in (HIVE, OTHER, ALLOWED):
            sh("ip", "-n", name, "addr", "add", f"{addr}/24", "dev", "v0")
        for dev in ("v0", "v1"):
            sh("ip", "-n", name, "link", "set", dev, "up")
        server = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-S", "-c", SERVE],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        yield name
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def base():
    """A base policy with a port-specific audit rule: an address block must
    not be bypassed on that port."""
    from kmod import Policy

    return Policy.parse(f"""
[[rule]]
name = "audit-listener-port"
hook = "connect"
action = "audit"
match.port = {PORT}
[[rule]]
name = "exec-from-temp"
hook = "exec"
action = "block"
match.path = ["/tmp/**"]
""")


@pytest.fixture(scope="module")
def sensor(netns, base):
    from kmod import LinuxSensor, Scope

    s = LinuxSensor(base, scope=Scope.netns(f"/run/netns/{netns}"))
    s.start()
    yield s
    s.close()


@pytest.fixture
def slot(sensor, base):
    slot = SensorSlot()
    slot.attach(sensor)
    yield slot
    slot.policy = ResponsePolicy(base)
    sensor.reload(base)


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="immune-response-", dir="/var/lib"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def call(netns: str, what: str, host: str, port: int = PORT) -> int:
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-S", "-c", CONNECT, what, host, str(port)],
                         capture_output=True, text=True, timeout=10, check=False)
    return int(out.stdout)


def run_exec(netns: str, path: Path) -> int:
    """0 if it ran, else the errno the exec got."""
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-S", "-c", EXEC, str(path)],
                         capture_output=True, text=True, timeout=10, check=False)
    return int(out.stdout) if out.stdout.strip() else out.returncode


class Clock:
    def __init__(self):
        self.t = time.time()

    def __call__(self):
        return self.t


def relay(engine: PlaybookEngine, executor: Executor, d) -> list[wire.CommandResult]:
    """What the router and the agent's relay do in between: carry commands
    to the executor and results back."""
    results = []
    for agent, cmd in d.send:
        result = executor.execute(cmd)
        results.append(result)
        engine.on_result(agent, result)
    return results


BLOCK = """
id: block
title: Block the remote end
trigger: {rules: [r1]}
steps:
  - action: block_connect
    params: {address: "{{ event.address }}"}
    ttl: 10m
"""
ISOLATE = """
id: isolate
title: Isolate
trigger: {rules: [r1]}
steps:
  - action: isolate_host
    params: {allow: ["ALLOWED"]}
    ttl: 1h
""".replace("ALLOWED", ALLOWED)


def alert(event):
    return wire.Alert(id=f"al-{time.monotonic_ns()}", rule_id="r1", title="t", agent="web1", events=[event])


def test_block_connect_takes_effect_and_is_reverted_at_its_ttl(netns, slot, tmp_path):
    clock = Clock()
    engine = PlaybookEngine([parse_playbook(BLOCK)], clock=clock)
    executor = Executor(tmp_path, slot=slot, hive=[HIVE], clock=clock)
    assert call(netns, "connect", OTHER) == 0
    [result] = relay(engine, executor, engine.on_alert(alert(wire.Connect(pid=5, agent="web1", address=OTHER,
                                                                          port=PORT))))
    assert result.ok, result.detail
    assert call(netns, "connect", OTHER) == errno.EPERM       # on the audited port too (shadow rule)
    assert call(netns, "connect", OTHER, 22) == errno.EPERM
    assert call(netns, "connect", HIVE) == 0
    clock.t += 599
    assert not engine.tick().send
    clock.t += 1
    [revert] = relay(engine, executor, engine.tick())
    assert revert.ok and revert.detail == f"rule {result.data['rule']} lifted"
    assert call(netns, "connect", OTHER) == 0
    assert engine.statistics().reverted == 1


def test_the_hive_cannot_be_blocked(netns, slot, tmp_path):
    executor = Executor(tmp_path, slot=slot, hive=[HIVE])
    r = executor.execute(wire.BlockConnect(id="b1", address="10.77.0.0/24"))
    assert not r.ok and r.detail == ("refused: 10.77.0.0/24 covers the hive's address 10.77.0.1/32; "
                                     "the agent must keep reaching it")
    assert call(netns, "connect", OTHER) == 0


def test_isolation_keeps_the_hive_and_is_reverted_at_its_ttl(netns, slot, tmp_path):
    clock = Clock()
    engine = PlaybookEngine([parse_playbook(ISOLATE)], clock=clock)
    executor = Executor(tmp_path, slot=slot, hive=[HIVE], clock=clock)
    [result] = relay(engine, executor, engine.on_alert(alert(wire.Exec(pid=5, agent="web1"))))
    assert result.ok, result.detail
    assert call(netns, "connect", OTHER) == errno.EPERM
    assert call(netns, "connect", OTHER, 22) == errno.EPERM
    assert call(netns, "connect", HIVE) == 0
    assert call(netns, "connect", ALLOWED) == 0
    assert call(netns, "connect", "127.0.0.1") == 0
    assert call(netns, "bind", "0.0.0.0", 0) == errno.EPERM
    assert call(netns, "bind", "127.0.0.1", 0) == 0
    clock.t += 3600
    [revert] = relay(engine, executor, engine.tick())
    assert revert.ok and revert.detail == "isolation lifted"
    assert call(netns, "connect", OTHER) == 0
    assert call(netns, "bind", "0.0.0.0", 0) == 0


def test_the_agent_lifts_a_block_itself_when_the_hive_does_not(netns, slot, tmp_path):
    clock = Clock()
    executor = Executor(tmp_path, slot=slot, hive=[HIVE], clock=clock, grace=30)
    r = executor.execute(wire.BlockConnect(id="b2", address=OTHER, ttl=60))
    assert r.ok and call(netns, "connect", OTHER) == errno.EPERM
    clock.t += 89
    assert executor.expire() == []
    clock.t += 1
    assert executor.expire() == [r.data["rule"]]
    assert call(netns, "connect", OTHER) == 0
    # the hive's revert, arriving late, finds nothing to do
    late = executor.execute(wire.Unblock(id="u2", rule=r.data["rule"]))
    assert late.ok and late.detail == f"no rule {r.data['rule']} (already lifted)"


def test_blocks_survive_an_agent_restart_and_a_sensor_restart(netns, slot, sensor, base, tmp_path):
    executor = Executor(tmp_path, slot=slot, hive=[HIVE])
    assert executor.execute(wire.BlockConnect(id="b3", address=OTHER)).ok
    sensor.reload(base)  # as if the reader restarted with its base policy
    assert call(netns, "connect", OTHER) == 0
    slot.attach(sensor)  # the reader's on_sensor
    assert call(netns, "connect", OTHER) == errno.EPERM
    # a new agent process: a fresh slot and executor, the state file
    fresh = SensorSlot()
    sensor.reload(base)
    fresh.attach(sensor)
    Executor(tmp_path, slot=fresh, hive=[HIVE]).restore()
    assert call(netns, "connect", OTHER) == errno.EPERM
    state = json.loads((tmp_path / "response" / "state.json").read_text())
    assert [b["match"] for b in state["blocks"]] == [{"address": OTHER}]


def executable(directory: Path, name: str, tag: bytes) -> Path:
    path = directory / name
    path.write_bytes(Path("/bin/true").read_bytes() + tag)
    path.chmod(0o755)
    return path


def test_quarantine_moves_the_file_and_denies_its_exec(netns, slot, workdir, tmp_path):
    tag = f"malware {time.monotonic_ns()}".encode()
    bad = executable(workdir, "dropper", tag)
    other = executable(workdir, "harmless", b"harmless" + tag)
    digest = hashlib.sha256(bad.read_bytes()).hexdigest()
    assert run_exec(netns, bad) == 0
    executor = Executor(tmp_path, slot=slot, hive=[HIVE])
    cmd = wire.QuarantineFile(id="q1", path=str(bad))
    executor.prepare(cmd)  # the file's half, on a worker thread in the actor
    assert not bad.exists()
    r = executor.execute(cmd)  # the sensor's half
    assert r.ok, r.detail
    assert not bad.exists()
    kept = tmp_path / "quarantine" / digest
    assert kept.exists() and oct(kept.stat().st_mode & 0o777) == "0o400"
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == digest
    sidecar = json.loads(kept.with_name(digest + ".json").read_text())
    assert (sidecar["original"], sidecar["sha256"], sidecar["command"]) == (str(bad), digest, "q1")
    # the same bytes under another name, anywhere, no longer run
    copy = executable(workdir / "..", f"{workdir.name}-copy", tag)
    try:
        assert run_exec(netns, copy) == errno.EPERM
    finally:
        copy.unlink()
    assert run_exec(netns, other) == 0
    # unblocking the rule lets that content run again (the file stays in quarantine)
    assert executor.execute(wire.Unblock(id="u1", rule=r.data["rule"])).ok
    copy = executable(workdir, "copy2", tag)
    assert run_exec(netns, copy) == 0


def test_block_exec_by_path_and_the_agents_own_interpreter_is_protected(netns, slot, workdir, tmp_path):
    tool = executable(workdir, "tool", f"t{time.monotonic_ns()}".encode())
    executor = Executor(tmp_path, slot=slot, hive=[HIVE])
    r = executor.execute(wire.BlockExec(id="e1", glob=f"{workdir}/*"))
    assert r.ok, r.detail
    assert run_exec(netns, tool) == errno.EPERM
    me = os.path.realpath("/proc/self/exe")
    r = executor.execute(wire.BlockExec(id="e2", glob=os.path.dirname(me) + "/*"))
    assert not r.ok and r.detail.startswith("refused:") and me in r.detail
    r = executor.execute(wire.QuarantineFile(id="e3", path=me))
    assert not r.ok and r.detail.startswith("refused:")


def test_a_file_name_cannot_defeat_an_exec_block(netns, slot, workdir, tmp_path):
    """Whatever characters its name holds, a block of a file's path refuses
    that file's exec, and only that file's."""
    executor = Executor(tmp_path, slot=slot, hive=[HIVE])
    names = ["\U0001F600 tool", "q\"uo'te", "back\\slash", "new\nline", "ctl\x01\x1b[0m\x7f", "star*", "[x]", "x"]
    files = [executable(workdir, name, f"{i} {time.monotonic_ns()}".encode()) for i, name in enumerate(names)]
    for i, f in enumerate(files[:-1]):
        r = executor.execute(wire.BlockExec(id=f"n{i}", path=str(f)))
        assert r.ok, r.detail
        assert run_exec(netns, f) == errno.EPERM, f
    assert run_exec(netns, files[-1]) == 0  # "star*" and "[x]" are names, not patterns
