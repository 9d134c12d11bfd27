"""Two real hive processes (no agents, no kernel): B pulls A's TAXII
collection over HTTPS with taxii2-client, page after page, then only what
A added since (``added_after`` from the last page's date-added header); a
peer whose token A does not know fails with the reason logged once."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

import fleet
from hive import Store
from hive.console._taxii import collection_id
from hive.herd import HerdError, Intel
from hive.herd._pull import fetch
from node._config import HerdPeer
from tests.ports import tcp_endpoint

from .hosts import wait_until
from .nodes import IMMUNE_NODE

PASSWORD = "a long enough password"


def cli(data, *args: str, password: str | None = None) -> str:
    r = subprocess.run([*IMMUNE_NODE, *args, "--data", str(data)], input=password and password + "\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def learn(data, first: int, n: int) -> None:
    """``n`` quarantines in A's store, as its playbook actor writes them."""
    s = Store(data / "hive.db")
    try:
        now = time.time()
        with s._tx() as db:
            db.executemany(
                "INSERT INTO commands(id, agent, action, params, state, created, updated, result) "
                "VALUES(?,?,?,?,?,?,?,?)",
                [(f"q{i}", "web-1", "quarantine_file", '{"path": "/tmp/x"}', "done", now, now,
                  json.dumps({"data": {"sha256": f"{i:064x}"}})) for i in range(first, first + n)])
    finally:
        s.close()


def entries(data) -> dict:
    s = Store(data / "hive.db", readonly=True)
    try:
        return {e.key: e for e in Intel(s.db).entries()}
    finally:
        s.close()


def test_pages_and_added_after_between_real_hives(tmp_path, start_node):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    cli(a_dir, "users", "add", "hive-b", "--role", "peer", password=PASSWORD)
    a = start_node("hive", a_dir, "--listen", tcp_endpoint())
    a.wait_ready(60)
    token = cli(a_dir, "users", "token", "hive-b")
    key = fleet.SigningKey.load_or_create(a_dir / "keys")
    url = f"https://127.0.0.1:{a.console_port}/taxii2/immune/collections/{collection_id(key.public)}/"
    learn(a_dir, 0, 300)  # 601 objects: two pages of 500

    config = tmp_path / "b.toml"
    peer = f'url = "{url}"\nca = "{a_dir / "console.crt"}"\nkey = "{key.public.hex()}"\ninterval = 5\n'
    config.write_text(f'[[herd.peers]]\nname = "hive-a"\ntoken = "{token}"\ntrust = "observe"\n{peer}'
                      f'[[herd.peers]]\nname = "stranger"\ntoken = "imt_unknown.token"\n{peer}')
    b = start_node("hive", b_dir, "--listen", tcp_endpoint(), "--config", str(config))
    b.wait_ready(60)
    wait_until(lambda: len(entries(b_dir)) == 300, timeout=60, what="B taking A's 300 indicators")
    # A response past the byte bound is refused whole, with the reason (a page of 500 is larger).
    peer_a = HerdPeer(name="hive-a", url=url, token=token, ca=str(a_dir / "console.crt"))
    with pytest.raises(HerdError, match=r"a response larger than 65536 bytes"):
        fetch(peer_a, "", max_page=65536)
    assert len(fetch(peer_a, "").objects) == 601
    learn(a_dir, 300, 5)
    wait_until(lambda: len(entries(b_dir)) == 305, timeout=60, what="B taking A's 5 new indicators")
    time.sleep(6)  # a pull more: nothing new
    pulls = [line for line in b.log().splitlines() if "herd.pulled peer=hive-a" in line]
    assert "accepted=300 " in pulls[0] and "ignored=301" in pulls[0], pulls  # an identity, 300 sightings
    assert "accepted=5 " in pulls[-1] and len(pulls) == 2, pulls
    assert all(e.sources[0].peer == "hive-a" and e.sources[0].trust == "observe" for e in entries(b_dir).values())
    failed = [line for line in b.log().splitlines() if "herd.pull_failed peer=stranger" in line]
    assert len(failed) == 1 and "HTTP 401 (the token is refused)" in failed[0], failed
    assert b.stop() == 0 and a.stop() == 0
