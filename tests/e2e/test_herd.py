"""Herd end to end: two real hives (demo nodes: hive, agent and kernel
sensor each) on loopback.

Hive A runs a program from /tmp: its playbook quarantines it (the file's
SHA-256 is denied exec); an operator blocks an address by hand.  A serves
both as signed STIX indicators over TAXII to a peer token.  Hive B pulls
A's collection with ``enforce`` (A's key pinned, A's CA, the token): its
agent refuses the first exec of a copy of the same program and the first
connect to the address, and B's blocks and alerts name A's indicators.  An
``observe`` feed (a bundle file signed by A) only alerts: its program
runs.  A forged and an expired indicator are refused with the reason in
B's log.  Run under ``flock /tmp/immune-kernel.lock`` (a shared kernel)."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

import fleet
from hive import Store
from hive.console._taxii import TAXII, collection_id
from hive.herd import Intel, build
from hive.herd._stix import Fact
from hive.playbook import Records
from tests.kmod.conftest import kernel
from tests.ports import tcp_endpoint

from .hosts import wait_until
from .nodes import IMMUNE_NODE

pytestmark = [*kernel, pytest.mark.slow]
PASSWORD = "a long enough password"
BLOCKED = "192.0.2.77"  # TEST-NET-1: never this machine's, never the hive's


def cli(data: Path, *args: str, password: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([*IMMUNE_NODE, *args, "--data", str(data)], input=password and password + "\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 or not check, f"{args}: {r.stdout}{r.stderr}"
    return r


def program(path: Path, tag: str, source: str = "/bin/true") -> str:
    """A copy of ``source`` with bytes of its own appended: it runs, and its
    SHA-256 is no other file's (a block of it blocks nothing else)."""
    shutil.copy(source, path)
    with open(path, "ab") as f:
        f.write(f"\0herd-test {tag} {time.time_ns()}\0".encode())
    path.chmod(0o755)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store(data: Path) -> Store:
    return Store(data / "hive.db", readonly=True)


def actions(data: Path) -> list:
    s = store(data)
    try:
        return Records(s.db).actions(limit=1000)
    finally:
        s.close()


def the_agent(data: Path) -> str:
    s = store(data)
    try:
        online = [a.id for a in s.agents() if a.online]
    finally:
        s.close()
    assert online
    return online[0]


def test_two_hives_share_what_they_learn(tmp_path, start_node):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    cli(a_dir, "users", "add", "hive-b", "--role", "peer", password=PASSWORD)
    a = start_node("demo", a_dir, "--listen", tcp_endpoint())
    a.wait_ready(120)
    token = cli(a_dir, "users", "token", "hive-b").stdout.strip()
    wait_until(lambda: the_agent(a_dir), timeout=60, what="A's agent online")
    agent_a = the_agent(a_dir)

    # What A learns: a program run (or tried) from /tmp, quarantined by its playbook;
    # an address blocked by hand.
    evil = tmp_path / "evil"
    digest = program(evil, "enforced")
    evil_bytes = evil.read_bytes()  # the quarantine moves the file away
    try:
        subprocess.run([str(evil)], timeout=30)
    except PermissionError:
        pass  # the default policy may refuse execs from /tmp: the playbook quarantines it all the same
    wait_until(lambda: any(x.action == "quarantine_file" and x.state == "done" and x.data.get("sha256") == digest
                           for x in actions(a_dir)), timeout=60, what="A's quarantine of the program")
    cli(a_dir, "actions", "run", "block_connect", "--agent", agent_a, "--address", BLOCKED, "--ttl", "600",
        "--why", "C2 seen in an incident")
    wait_until(lambda: any(x.action == "block_connect" and x.state == "active" for x in actions(a_dir)),
               timeout=60, what="A's block of the address")

    # A's herd key and collection, as `intel key` prints them for B's config.
    printed = cli(a_dir, "intel", "key").stdout
    key_hex = printed.split('key = "')[1].split('"')[0]
    a_key = fleet.SigningKey.load_or_create(a_dir / "keys")
    assert key_hex == a_key.public.hex()
    url = f"https://127.0.0.1:{a.console_port}/taxii2/immune/collections/{collection_id(a_key.public)}/"
    assert collection_id(a_key.public) in printed

    # A serves both, signed, with where they came from.
    ctx = ssl.create_default_context(cafile=a_dir / "console.crt")
    with httpx.Client(verify=ctx, headers={"Authorization": f"Bearer {token}", "Accept": TAXII}) as c:
        assert c.get(url + "objects/", headers={"Authorization": "Bearer imt_wrong.token"}).status_code == 401

        def served() -> dict:
            return {o["pattern"]: o for o in c.get(url + "objects/").json().get("objects", [])
                    if o["type"] == "indicator"}
        hash_pattern = f"[file:hashes.'SHA-256' = '{digest}']"
        address_pattern = f"[ipv4-addr:value = '{BLOCKED}']"
        wait_until(lambda: {hash_pattern, address_pattern} <= set(served()), timeout=30, what="A serving both")
        ours = served()
    hash_ind, address_ind = ours[hash_pattern], ours[address_pattern]
    assert hash_ind["x_immune_source"]["what"].startswith("quarantined") and hash_ind["x_immune_source"]["alerts"]
    assert address_ind["x_immune_source"]["what"] == "blocked connect" and hash_ind["confidence"] == 90

    # B's peers: A's collection (enforce); a feed file A signed (observe);
    # a file with a forged and an expired indicator (A's key pinned).
    watched = tmp_path / "watched"
    # sleep: the relay hashes a running process's executable, so it must outlive the hashing
    watched_digest = program(watched, "observed", "/bin/sleep")
    now = time.time()
    feed = tmp_path / "feed.json"
    feed.write_text(json.dumps({"type": "bundle", "id": "bundle--6a1b0c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d", "objects": list(
        build(Fact("sha256", watched_digest, now - 60, now - 30, confidence=60, what="seen"), a_key, now=now,
              share_for=86400))}))
    forger = fleet.SigningKey.generate()
    forged = build(Fact("sha256", "f0" * 32, now - 60, now - 30), forger, now=now, share_for=86400)[0]
    expired = build(Fact("sha256", "e0" * 32, now - 9 * 86400, now - 8 * 86400), a_key, now=now,
                    share_for=86400)[0]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "bundle", "id": "bundle--7b2c1d3e-4f5a-4b6c-9d7e-8f9a0b1c2d3e",
                               "objects": [forged, expired]}))
    config = tmp_path / "b.toml"
    config.write_text(
        f'[[herd.peers]]\nname = "hive-a"\nurl = "{url}"\ntoken = "{token}"\ntrust = "enforce"\n'
        f'ca = "{a_dir / "console.crt"}"\nkey = "{key_hex}"\ninterval = 5\n'
        f'[[herd.peers]]\nname = "feed"\npath = "{feed}"\ntrust = "observe"\nkey = "{key_hex}"\ninterval = 5\n'
        f'[[herd.peers]]\nname = "forged"\npath = "{bad}"\ntrust = "enforce"\nkey = "{key_hex}"\ninterval = 5\n')
    b = start_node("demo", b_dir, "--listen", tcp_endpoint(), "--config", str(config))
    b.wait_ready(120)

    def pulled() -> dict:
        s = store(b_dir)
        try:
            return {e.key: e for e in Intel(s.db).entries()}
        finally:
            s.close()
    wait_until(lambda: {f"sha256:{digest}", f"ipv4:{BLOCKED}", f"sha256:{watched_digest}"} <= set(pulled()),
               timeout=60, what="B pulling A's collection and the feed")
    entries = pulled()
    assert [(s.peer, s.trust, s.indicator) for s in entries[f"sha256:{digest}"].sources] == [
        ("hive-a", "enforce", hash_ind["id"])]
    assert f"sha256:{'f0' * 32}" not in entries and f"sha256:{'e0' * 32}" not in entries
    refusals = {obj["id"]: [line for line in b.log().splitlines()
                            if "herd.refused peer=forged" in line and obj["id"] in line] for obj in (forged, expired)}
    assert refusals[forged["id"]] and "reason=\"bad signature: altered, or not signed by the peer's pinned key" \
        in refusals[forged["id"]][0], refusals
    assert refusals[expired["id"]] and "reason='expired at 20" in refusals[expired["id"]][0], refusals

    # A stops (its agent's own blocks go with its sensor); B's blocks must stand alone.
    assert a.stop() == 0
    agent_b = the_agent(b_dir)

    def herd_blocks() -> dict:
        return {x.action: x for x in actions(b_dir) if x.mode == "herd" and x.state == "active"}
    wait_until(lambda: {"block_exec", "block_connect"} <= set(herd_blocks()), timeout=60, what="B's herd blocks active")
    blocks = herd_blocks()
    assert blocks["block_exec"].params == {"sha256": digest} and blocks["block_exec"].agent == agent_b
    assert f"indicator {hash_ind['id']} of peer hive-a" in blocks["block_exec"].reason
    assert f"indicator {address_ind['id']} of peer hive-a" in blocks["block_connect"].reason
    assert 0 < blocks["block_exec"].ttl <= 30 * 86400

    # B's agent refuses the first exec of a copy (elsewhere, another name) and the first connect.
    away = Path(tempfile.mkdtemp(prefix="immune-herd-", dir="/var/lib"))
    try:
        copy = away / "renamed"
        copy.write_bytes(evil_bytes)
        copy.chmod(0o755)
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest
        with pytest.raises(PermissionError):
            subprocess.run([str(copy)], timeout=30)
        s = socket.socket()
        s.settimeout(5)
        try:
            assert s.connect_ex((BLOCKED, 80)) == errno.EPERM
        finally:
            s.close()
        # The observed program runs: observe never blocks.
        ran = away / "watched"
        shutil.copy(watched, ran)
        assert subprocess.run([str(ran), "1"], timeout=30).returncode == 0
    finally:
        shutil.rmtree(away, ignore_errors=True)

    def herd_alerts() -> list:
        s = store(b_dir)
        try:
            return [x for x in s.alerts(limit=1000) if x.rule_id == "herd-indicator"]
        finally:
            s.close()
    wait_until(lambda: len({x.title.split(" matches ")[0] for x in herd_alerts()}) >= 3, timeout=60,
               what="B's alerts on the three matches")
    titles = [x.title for x in herd_alerts()]
    assert any(f"hive-a's {hash_ind['id']} (blocked)" in t for t in titles), titles
    assert any(f"connect to {BLOCKED} matches hive-a's {address_ind['id']} (blocked)" in t for t in titles), titles
    observed = [x for x in herd_alerts() if watched_digest in x.title]
    assert observed and all(x.level == "medium" and "herd.observe" in x.tags and "(blocked)" not in x.title
                            for x in observed)

    # `intel list` shows them; `intel revoke` lifts B's block on the address.
    listing = cli(b_dir, "intel", "list").stdout
    assert hash_ind["id"] in listing and "hive-a" in listing and "feed" in listing
    assert "revoked ipv4:" in cli(b_dir, "intel", "revoke", address_ind["id"]).stdout
    wait_until(lambda: any(x.action == "unblock" and x.mode == "herd" and x.state == "done" for x in actions(b_dir)),
               timeout=60, what="B lifting the revoked indicator's block")
    s = socket.socket()
    s.settimeout(1)
    try:
        assert s.connect_ex((BLOCKED, 80)) != errno.EPERM
    finally:
        s.close()
    assert b.stop() == 0

