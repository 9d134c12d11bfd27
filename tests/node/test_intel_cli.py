"""``immune-node intel``: pull from a peer's bundle file now (what passes,
what is refused and why), list the entries with their peers, revoke one,
and print the hive's herd key and collection URL."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import fleet
from hive.console._taxii import collection_id
from hive.herd import build
from hive.herd._stix import Fact

SHA = "ab" * 32


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "intel", *args], capture_output=True, text=True,
                          timeout=60)


def test_pull_list_revoke_and_key(tmp_path):
    sender = fleet.SigningKey.generate()
    now = time.time()
    good = build(Fact("sha256", SHA, now - 60, now), sender, now=now, share_for=86400)[0]
    forged = build(Fact("ipv4", "198.51.100.7", now - 60, now), fleet.SigningKey.generate(), now=now,
                   share_for=86400)[0]
    feed = tmp_path / "feed.json"
    feed.write_text(json.dumps({"type": "bundle", "id": "bundle--6a1b0c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d",
                                "objects": [good, forged]}))
    config = tmp_path / "c.toml"
    config.write_text(f'[node]\ndata = "{tmp_path / "data"}"\n[[herd.peers]]\nname = "hive-a"\npath = "{feed}"\n'
                      f'trust = "enforce"\nkey = "{sender.public.hex()}"\n')
    r = run("pull", "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert "hive-a: 1 accepted (1 new, 0 revoked, 0 expiry capped), 1 refused" in r.stdout
    assert f"refused {forged['id']}: bad signature" in r.stdout
    listed = run("list", "--config", str(config))
    assert f"sha256:{SHA}" in listed.stdout and good["id"] in listed.stdout and "198.51.100.7" not in listed.stdout
    doc = json.loads(run("list", "--json", "--config", str(config)).stdout)
    assert doc[0]["in_force"] is True and doc[0]["sources"][0]["peer"] == "hive-a"
    assert run("pull", "nobody", "--config", str(config)).stderr.strip().endswith("no peer 'nobody' in [herd] peers")
    r = run("revoke", good["id"], "--config", str(config))
    assert r.returncode == 0 and f"revoked sha256:{SHA}" in r.stdout
    r = run("revoke", good["id"], "--config", str(config))
    assert r.returncode != 0 and "revoked already" in r.stderr
    assert json.loads(run("list", "--json", "--config", str(config)).stdout)[0]["in_force"] is False
    r = run("key", "--config", str(config))
    key = fleet.SigningKey.load_or_create(tmp_path / "data" / "keys")
    assert f'key = "{key.public.hex()}"' in r.stdout
    assert f"https://127.0.0.1:7480/taxii2/immune/collections/{collection_id(key.public)}/" in r.stdout
