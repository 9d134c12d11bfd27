"""Enrollment and the hive's query commands, as an operator uses them."""

import json
import subprocess

from actors import KeyPair

from .nodes import IMMUNE_NODE, free_port


def run(*args):
    return subprocess.run([*IMMUNE_NODE, *args], capture_output=True, text=True, timeout=60)


def test_token_join_list_revoke(tmp_path, start_node):
    hive_dir, agent_dir = tmp_path / "hive", tmp_path / "agent"
    port = free_port()
    hive = start_node("hive", hive_dir, "--listen", f"tcp://127.0.0.1:{port}")
    hive.wait_ready()

    token = run("enroll", "token", "--data", str(hive_dir)).stdout.strip()
    assert token.startswith("immune1-")
    r = run("enroll", "join", token, "--data", str(agent_dir), "--id", "web-1",
            "--enroll", f"tcp://127.0.0.1:{port + 1}")
    assert r.returncode == 0, r.stderr
    pinned = (agent_dir / "keys" / "hive.pub").read_bytes().strip()
    assert pinned == KeyPair.load(hive_dir / "keys", "hive").public
    assert (agent_dir / "keys" / "agent.id").read_text().strip() == "web-1"

    again = run("enroll", "join", token, "--data", str(agent_dir), "--id", "web-2",
                "--enroll", f"tcp://127.0.0.1:{port + 1}")
    assert again.returncode == 1 and again.stderr.strip() == "immune-node: enrollment refused: token already used"

    agents = json.loads(run("agents", "--data", str(hive_dir), "--json").stdout)
    me = KeyPair.load(agent_dir / "keys", "agent").public.decode()
    assert [(a["id"], a["public_key"], a["revoked"]) for a in agents] == [("web-1", me, None)]

    assert run("enroll", "revoke", "web-1", "--data", str(hive_dir)).returncode == 0
    table = run("agents", "--data", str(hive_dir)).stdout
    assert "web-1" in table and "revoked" in table
    nope = run("enroll", "revoke", "ghost", "--data", str(hive_dir))
    assert nope.returncode == 1 and "no enrolled agent 'ghost'" in nope.stderr


def test_bad_tokens_and_keys_are_clear_errors(tmp_path):
    r = run("enroll", "join", "hello", "--data", str(tmp_path))
    assert r.returncode == 1 and "not an enrollment token" in r.stderr
    r = run("enroll", "add", "x", "shortkey", "--data", str(tmp_path))
    assert r.returncode == 1 and "no hive store at" in r.stderr


def test_events_query_validates_its_arguments(tmp_path, start_node):
    hive = start_node("hive", tmp_path, "--listen", f"tcp://127.0.0.1:{free_port()}")
    hive.wait_ready()
    r = run("events", "--data", str(tmp_path), "--kind", "teleport")
    assert r.returncode == 1 and "--kind 'teleport': one of exec" in r.stderr
    r = run("events", "--data", str(tmp_path), "--since", "yesterday-ish")
    assert r.returncode == 1 and "--since 'yesterday-ish'" in r.stderr
    r = run("events", "--data", str(tmp_path), "--since", "10m", "--json")
    assert r.returncode == 0 and r.stdout == ""
