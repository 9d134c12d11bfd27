"""The launcher as a user meets it: help, config errors, status, signals."""

import json
import signal
import subprocess
import time

import pytest

from .nodes import IMMUNE_NODE, free_port

COMMANDS = ["hive", "agent", "demo", "tap", "status"]


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


@pytest.mark.parametrize("text,reason", [
    ("[hive]\nlisten = 5\n", "hive.listen: expected `str`, got `int`"),
    ("not toml at all", "config "),
])
def test_broken_config_fails_with_one_line(tmp_path, text, reason):
    cfg = tmp_path / "immune.toml"
    cfg.write_text(text)
    r = run("hive", "--config", str(cfg), "--data", str(tmp_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("immune-node: config ") and reason in lines[0]


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
