"""The launcher as a user meets it: help, config errors, status, signals."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from .nodes import IMMUNE_NODE, free_port

COMMANDS = ["hive", "agent", "demo", "tap", "status", "restart"]


def run(*args, **kw):
    return subprocess.run([*IMMUNE_NODE, *args], capture_output=True, text=True, timeout=60, **kw)


def test_top_level_help_lists_every_command():
    r = run("--help")
    assert r.returncode == 0
    for c in COMMANDS:
        assert c in r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command):
    r = run(command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: immune-node {command}")
    assert "--data DIR" in r.stdout


def one_line(r: subprocess.CompletedProcess, code: int, after_logs: bool = False) -> str:
    """The one line an unusable setup gets: no traceback, the exit code.  A
    node that had started logs before it (``after_logs``)."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    if after_logs:
        lines = [line for line in lines if not re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z ", line)]
    assert len(lines) == 1 and lines[0].startswith("immune-node: "), r.stderr
    assert r.returncode == code, r.stderr
    return lines[0].removeprefix("immune-node: ")


@pytest.mark.parametrize("text,reason", [
    (b"[hive]\nlisten = 5\n", "hive.listen: expected `str`, got `int`"),
    (b"not toml at all", "Expected '=' after a key"),
    (b'[node]\nlog_level = "\xff"\n', "not UTF-8 text (byte 20)"),
    (b"[hive]\nmax_frame = -5\n", "hive.max_frame: must be an integer from 1048576 to 67108864, not -5"),
    (b"[hive]\nheartbeat_timeout = -1\n", "hive.heartbeat_timeout: must be a number from 1 to 86400, not -1"),
    (b"[hive]\nrules = ['/nonexistent']\n", "hive.rules: /nonexistent: no such folder"),
])
def test_broken_config_fails_with_one_line(tmp_path, text, reason):
    cfg = tmp_path / "immune.toml"
    cfg.write_bytes(text)
    r = run("hive", "--config", str(cfg), "--data", str(tmp_path))
    assert one_line(r, 2).startswith(f"config {cfg}: {reason}")


@pytest.mark.parametrize("command,args,line", [
    ("hive", ["--listen", "127.0.0.1:7400"], "--listen: '127.0.0.1:7400' is not a ZeroMQ endpoint"),
    ("agent", ["--hive", "tcp://hive"], "--hive: 'tcp://hive' is not a ZeroMQ endpoint"),
    ("agent", ["--scope", "everywhere"], "--scope: 'everywhere': expected machine, cgroup:PATH, netns:PATH "
                                         "or container:SELECTOR"),
    ("agent", ["--policy", "/nonexistent.toml"], "--policy: /nonexistent.toml: No such file or directory"),
])
def test_a_bad_flag_fails_with_one_line(tmp_path, command, args, line):
    r = run(command, "--data", str(tmp_path), *args)
    assert one_line(r, 2).startswith(line)


# Root reads and writes anything; without these capabilities it obeys the
# permission bits as any service user does.
AS_A_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_a_data_folder_that_is_a_file(tmp_path):
    (tmp_path / "data").write_text("")
    for command in ("hive", "agent", "status", "events"):
        r = run(command, "--data", str(tmp_path / "data"))
        assert one_line(r, 2) == f"--data: {tmp_path}/data: not a folder"


@pytest.mark.parametrize("mode,problem", [(0o000, "cannot read it"), (0o500, "cannot write there")])
def test_a_data_folder_the_node_cannot_use(tmp_path, mode, problem):
    data = tmp_path / "data"
    data.mkdir(mode=mode)
    r = subprocess.run([*AS_A_USER, *IMMUNE_NODE, "hive", "--data", str(data)],
                       capture_output=True, text=True, timeout=60)
    assert one_line(r, 2) == f"--data: {data}: {problem}: Permission denied"
    r = subprocess.run([*AS_A_USER, *IMMUNE_NODE, "hive", "--data", str(data / "sub")],
                       capture_output=True, text=True, timeout=60)
    assert one_line(r, 2) == f"--data: {data}/sub: cannot make it: Permission denied"


def test_a_missing_data_folder_is_made(tmp_path, start_node):
    data = tmp_path / "new" / "data"
    # The later --data wins; the first is where the test keeps the log.
    n = start_node("hive", tmp_path, "--data", str(data), "--listen", f"tcp://127.0.0.1:{free_port()}")
    deadline = time.monotonic() + 30
    while not (data / "run" / "node.json").exists():
        assert n.proc.poll() is None and time.monotonic() < deadline, n.log()
        time.sleep(0.05)
    assert n.stop() == 0


# A small tmpfs in a mount namespace of its own: the disk fills for the node
# only, and vanishes with it.
SMALL_DISK = """
mount -t tmpfs -o size=1m tmpfs "$DISK" || exit 99
[ -z "$SEED" ] || cp -a "$SEED" "$DISK/data"
cat /dev/zero > "$DISK/fill" 2>/dev/null
truncate -s "-${FREE_KB}K" "$DISK/fill"
exec "$@"
"""


def run_on_a_full_disk(tmp_path, free_kb: int, *args: str, seed=None) -> subprocess.CompletedProcess:
    disk = tmp_path / "disk"
    disk.mkdir(exist_ok=True)
    env = {**os.environ, "DISK": str(disk), "FREE_KB": str(free_kb), "SEED": str(seed or "")}
    r = subprocess.run(["unshare", "-m", "sh", "-c", SMALL_DISK, "sh", *IMMUNE_NODE, *args,
                        "--data", f"{disk}/data", "--listen", f"tcp://127.0.0.1:{free_port()}"],
                       capture_output=True, text=True, timeout=60, env=env)
    if r.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    return r


def test_a_full_disk_stops_the_node_with_one_line(tmp_path):
    r = run_on_a_full_disk(tmp_path, 0, "hive")
    assert one_line(r, 2) == f"--data: {tmp_path}/disk/data: cannot write there: No space left on device"


@pytest.mark.parametrize("free_kb", [40, 120, 200])
def test_a_nearly_full_disk_stops_the_hive_with_one_line(tmp_path, free_kb):
    # Room for the probe, not for the store or the run files: each step that
    # fails says so in one line (what fails first depends on the room left).
    r = run_on_a_full_disk(tmp_path, free_kb, "hive")
    line = one_line(r, 1, after_logs=True)
    assert f"{tmp_path}/disk/data" in line and ("full" in line or "No space" in line or "I/O" in line), line


def test_a_restart_on_a_full_disk_is_one_line(tmp_path, start_node):
    seed = tmp_path / "seed"
    n = start_node("hive", seed, "--listen", f"tcp://127.0.0.1:{free_port()}")
    n.wait_ready()
    assert n.stop() == 0
    r = run_on_a_full_disk(tmp_path, 0, "hive", seed=seed)
    assert one_line(r, 2) == f"--data: {tmp_path}/disk/data: cannot write there: No space left on device"


def test_status_without_a_node_says_so(tmp_path):
    r = run("status", "--data", str(tmp_path))
    assert r.returncode == 1
    assert r.stderr.strip() == f"immune-node: no node is running with {tmp_path}/run (no node.json)"


def test_second_node_on_the_same_data_folder_is_refused(tmp_path, start_node):
    n = start_node("hive", tmp_path, "--listen", f"tcp://127.0.0.1:{free_port()}")
    n.wait_ready()
    r = run("hive", "--data", str(tmp_path), "--listen", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert f"another node (pid {n.pid}) is running with {tmp_path}/run" in r.stderr


def test_status_prints_every_actor(tmp_path, start_node):
    n = start_node("hive", tmp_path, "--listen", f"tcp://127.0.0.1:{free_port()}")
    st = n.wait_ready()
    r = run("status", "--data", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["pid"] == n.pid and doc["ready"] is True
    assert [a["name"] for a in doc["actors"]] == [a.name for a in st.actors]
    assert all(a["state"] == "running" for a in doc["actors"])
    table = run("status", "--data", str(tmp_path)).stdout
    assert "ACTOR" in table and "RESTARTS" in table


def test_restart_one_actor_of_a_running_node(tmp_path, start_node):
    n = start_node("hive", tmp_path, "--listen", f"tcp://127.0.0.1:{free_port()}")
    n.wait_ready()
    r = run("restart", "router", "--data", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("restarted hive.router: ")
    deadline = time.monotonic() + 10
    while True:
        router = next(a for a in n.status().actors if a.name == "hive.router")
        if router.restarts >= 1 and router.state == "running":
            break
        assert time.monotonic() < deadline, router
        time.sleep(0.1)
    r = run("restart", "nobody", "--data", str(tmp_path))
    said = one_line(r, 1)
    assert said.startswith("no running actor named 'nobody' (running: hive.") and "hive.correlate, " in said
    assert n.proc.poll() is None


def test_restart_without_a_node_says_so(tmp_path):
    r = run("restart", "router", "--data", str(tmp_path))
    assert one_line(r, 1) == f"no node is running with {tmp_path}/run (no node.json)"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_gives_a_clean_exit_within_the_shutdown_timeouts(tmp_path, start_node, sig):
    n = start_node("hive", tmp_path, "--listen", f"tcp://127.0.0.1:{free_port()}")
    n.wait_ready()
    t0 = time.monotonic()
    assert n.stop(sig) == 0
    assert time.monotonic() - t0 < 5.0  # the default per-actor shutdown timeout
    log = n.log()
    assert "node.stop" in log and "Traceback" not in log
    assert not (tmp_path / "run" / "node.json").exists()


def test_sighup_leaves_a_hive_and_its_child_processes_running(tmp_path, start_node):
    n = start_node("hive", tmp_path, "--listen", f"tcp://127.0.0.1:{free_port()}")
    st = n.wait_ready()
    children = {a.name: a.pid for a in st.actors if a.pid and a.pid != n.pid}
    assert children  # the detection processes
    for pid in [n.pid, *children.values()]:
        os.kill(pid, signal.SIGHUP)  # its default action ends a process
    time.sleep(1.0)
    assert n.proc.poll() is None, n.log()
    after = n.status()
    assert all(a.state == "running" and a.restarts == 0 for a in after.actors), after.actors
    assert {a.name: a.pid for a in after.actors if a.name in children} == children
    assert n.stop() == 0


@pytest.mark.slow
def test_an_idle_node_uses_under_one_percent_cpu(tmp_path, start_node):
    n = start_node("hive", tmp_path, "--listen", f"tcp://127.0.0.1:{free_port()}")
    n.wait_ready()
    time.sleep(0.5)

    def cpu_ticks():
        with open(f"/proc/{n.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    import os
    hz = os.sysconf("SC_CLK_TCK")
    c0, t0 = cpu_ticks(), time.monotonic()
    time.sleep(5)
    used = (cpu_ticks() - c0) / hz / (time.monotonic() - t0)
    assert used < 0.01, f"idle node used {used:.2%} CPU"


def test_a_port_in_use_stops_the_hive_with_the_reason(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run("hive", "--data", str(tmp_path), "--listen", f"tcp://127.0.0.1:{port}")
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last == (f"immune-node: hive stopped: hive.router failed to start: ZMQError: "
                    f"Address already in use (addr='tcp://127.0.0.1:{port}')")


def test_an_agent_that_was_never_enrolled_says_how_to_enroll(tmp_path):
    r = run("agent", "--data", str(tmp_path))
    assert r.returncode == 1
    assert r.stderr.strip() == (f"immune-node: this agent has no key in {tmp_path}/keys: enroll it first "
                                f"with `immune-node enroll join TOKEN --data {tmp_path}`")
