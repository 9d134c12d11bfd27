"""Manual actions and the users page on a real ``immune-node demo`` (the
kernel sensor, the agent, the hive and its console over real HTTPS): a
responder kills a real process through POST /api/actions and it dies, the
result and the trail come back under their name; a viewer gets 403; bad
requests are a 400 with the reason and nothing reaches the agent; an admin
adds a user on the users page (session, CSRF) and that user logs in."""

from __future__ import annotations

import re
import ssl
import subprocess
import time

import httpx
import pytest

from hive import Store
from hive.playbook import Records
from tests.kmod.conftest import kernel

from tests.ports import tcp_endpoint

from .nodes import IMMUNE_NODE, RunningNode
from .test_console_access import login

pytestmark = [*kernel, pytest.mark.slow]
PASSWORD = "a long enough password"


def users(data, *args: str, password: str | None = None) -> str:
    r = subprocess.run([*IMMUNE_NODE, "users", *args, "--data", str(data)], input=password and password + "\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    data = tmp_path_factory.mktemp("actions")
    for name, role in (("vera", "viewer"), ("rhea", "responder"), ("ada", "admin")):
        users(data, "add", name, "--role", role, password=PASSWORD)
    node = RunningNode("demo", data, "--listen", tcp_endpoint())
    try:
        node.wait_ready(120)
        node.tokens = {name: users(data, "token", name) for name in ("vera", "rhea")}
        yield node
    finally:
        assert node.stop() == 0


def client(demo, user: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {demo.tokens[user]}"} if user else {}
    return httpx.Client(base_url=f"https://127.0.0.1:{demo.console_port}", headers=headers, timeout=30,
                        verify=ssl.create_default_context(cafile=demo.data / "console.crt"))


def online_agent(c: httpx.Client) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        online = [a["id"] for a in c.get("/api/agents").json() if a["state"] == "online"]
        if online:
            return online[0]
        time.sleep(0.5)
    raise AssertionError("the demo's agent never came online")


def test_a_responder_kills_a_real_process_from_the_console(demo):
    victim = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
    try:
        with client(demo, "rhea") as c:
            agent = online_agent(c)
            body = {"action": "kill_process", "agent": agent, "pid": victim.pid, "why": "e2e"}
            with client(demo, "vera") as v:
                assert v.post("/api/actions", json=body).status_code == 403
            for bad, why in (({"pid": 0}, "pid must be a positive integer"), ({"pid": 1}, "pid 1 is init"),
                             ({"agent": "nobody"}, "unknown or revoked"),
                             ({"action": "block_connect", "pid": None, "address": "127.0.0.1"}, "hive's address")):
                r = c.post("/api/actions", json={**body, **bad})
                assert r.status_code == 400 and why in r.json()["error"], r.text
            time.sleep(1.5)
            assert victim.poll() is None  # a viewer and bad requests reached nobody
            r = c.post("/api/actions", json=body)
            assert r.status_code == 200 and r.json()["state"] == "requested", r.text
            action_id = r.json()["id"]
            assert victim.wait(timeout=30) == -9
            deadline = time.monotonic() + 30
            while (detail := c.get(f"/api/actions/{action_id}").json())["action"]["state"] != "done":
                assert time.monotonic() < deadline, detail
                time.sleep(0.3)
            assert detail["action"]["result"].startswith("ok: killed")
            assert [t["actor"] for t in detail["audit"]][-2:] == ["operator:rhea", "operator:rhea"]
            assert action_id in c.get("/api/actions").text
    finally:
        victim.kill()
        victim.wait()
    store = Store(demo.data / "hive.db", readonly=True)
    try:
        assert len([a for a in Records(store.db).actions() if a.mode == "manual"]) == 1  # the refusals wrote nothing
    finally:
        store.close()


def test_an_admin_adds_a_user_on_the_users_page(demo):
    with client(demo) as c:
        assert login(c, "ada", PASSWORD).status_code == 303
        page = c.get("/users").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        r = c.post("/users", data={"csrf": csrf, "name": "newbie", "role": "viewer", "password": PASSWORD})
        assert r.status_code == 200 and "added newbie (viewer)" in r.text
    with client(demo) as c:
        assert login(c, "newbie", PASSWORD).status_code == 303
        assert c.get("/users").status_code == 403
    store = Store(demo.data / "hive.db", readonly=True)
    try:
        assert ("console:ada", "user_add") in store._read("SELECT actor, what FROM audit", ())
    finally:
        store.close()
