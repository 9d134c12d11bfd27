"""The console of a real ``immune-node hive`` over real HTTPS (httpx): the
certificate it logs is the one it serves, login and throttling, roles,
CSRF, bearer tokens, users removed from a running hive, its failures at
start as one line, and a clean stop."""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import ssl
import subprocess
import time

import httpx
import pytest

from tests.e2e.nodes import IMMUNE_NODE, RunningNode
from tests.ports import free_port, tcp_endpoint

PASSWORD = "correct horse battery"
pytestmark = pytest.mark.slow


def users(data, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*IMMUNE_NODE, "users", *args, "--data", str(data)], input=password and password + "\n",
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def hive(tmp_path_factory):
    data = tmp_path_factory.mktemp("console")
    assert users(data, "add", "vera", "--role", "viewer", password=PASSWORD).returncode == 0
    assert users(data, "add", "rick", "--role", "responder", password=PASSWORD).returncode == 0
    node = RunningNode("hive", data, "--listen", tcp_endpoint())
    try:
        node.wait_ready(120)
        yield node
    finally:
        node.stop()


def url(hive) -> str:
    return f"https://127.0.0.1:{hive.console_port}"


def served_fingerprint(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def client(hive) -> httpx.Client:
    # Pinned to the hive's own certificate, as a user who checked its fingerprint would.
    return httpx.Client(base_url=url(hive), verify=ssl.create_default_context(cafile=hive.data / "console.crt"))


def login(c: httpx.Client, name: str, password: str = PASSWORD) -> httpx.Response:
    page = c.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return c.post("/login", data={"csrf": csrf, "name": name, "password": password, "next": "/"})


def test_the_logged_fingerprint_is_the_served_certificate(hive):
    logged = re.findall(r"console\.certificate sha256=(\S+)", hive.log())
    assert logged and logged[-1] == served_fingerprint(hive.console_port)
    assert oct((hive.data / "console.key").stat().st_mode & 0o777) == "0o600"
    with client(hive) as c:  # the certificate names 127.0.0.1: the pinned client verifies it
        r = c.get("/health")
        assert r.status_code == 200 and r.headers["strict-transport-security"]


def test_login_and_a_session(hive):
    with client(hive) as c:
        r = login(c, "vera")
        assert r.status_code == 303
        assert c.get("/logout").status_code == 405  # logout is a POST
        assert c.post("/logout").status_code == 403  # without its CSRF token


def test_anonymous_api_and_bad_tokens_get_401(hive):
    with client(hive) as c:
        r = c.get("/api/anything")
        # No API route of door's own: whoever serves /api/ later answers 401 before anything else.
        assert r.status_code in (401, 404)
        r = c.post("/logout", headers={"Authorization": "Bearer imt_000000000000_" + "A" * 43})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_tokens_roles_csrf_and_removal_on_a_running_hive(hive):
    token = users(hive.data, "token", "rick").stdout.strip()
    with client(hive) as c:
        bearer = {"Authorization": f"Bearer {token}"}
        # logout is door's own route that needs a user: a bearer request passes it without CSRF.
        assert c.post("/logout", headers=bearer).status_code == 303
        assert users(hive.data, "revoke-token", token).returncode == 0
        r = c.post("/logout", headers=bearer)
        assert r.status_code == 401 and "revoked" in r.json()["error"]
    assert users(hive.data, "add", "tmp", "--role", "viewer", password=PASSWORD).returncode == 0
    with client(hive) as c:
        assert login(c, "tmp").status_code == 303
        assert c.post("/logout", data={"csrf": "wrong"}).status_code == 403  # a live session, a wrong token
        assert users(hive.data, "remove", "tmp").returncode == 0
        r = c.post("/logout", data={"csrf": "wrong"})
        assert r.status_code == 303 and r.headers["location"].startswith("/login")  # anonymous now


def test_wrong_password_is_refused_then_throttled(hive):
    # After the others: the client's address stays throttled for a while.
    with client(hive) as c:
        codes = [login(c, "vera", "not the password").status_code for _ in range(6)]
        assert codes == [401] * 5 + [429]
        r = login(c, "vera")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "console.login_failed user=vera" in hive.log()
    assert "console.login_throttled user=vera" in hive.log()


def test_users_help():
    for args in (["users", "--help"], *[["users", a, "--help"] for a in
                                         ("add", "list", "passwd", "remove", "token", "revoke-token")]):
        r = subprocess.run([*IMMUNE_NODE, *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "usage: immune-node users" in r.stdout


def test_a_busy_port_or_a_missing_certificate_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([*IMMUNE_NODE, "hive", "--data", str(tmp_path / "a"), "--listen", tcp_endpoint(),
                            "--console-listen", f"https://127.0.0.1:{port}"], capture_output=True, text=True,
                           timeout=180)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("immune-node: ") and f"console.listen https://127.0.0.1:{port}: the port is in use" in last
    assert "Traceback" not in r.stderr
    config = tmp_path / "immune.toml"
    config.write_text(f'[console]\ncert = "{tmp_path}/no.crt"\nkey = "{tmp_path}/no.key"\n'
                      f'listen = "https://127.0.0.1:{free_port()}"\n')
    r = subprocess.run([*IMMUNE_NODE, "hive", "--data", str(tmp_path / "b"), "--listen", tcp_endpoint(),
                        "--config", str(config)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"console.cert: {tmp_path}/no.crt: No such file or directory" in r.stderr.strip().splitlines()[-1]


def test_the_hive_stops_cleanly_with_its_console(tmp_path):
    node = RunningNode("hive", tmp_path, "--listen", tcp_endpoint())
    node.wait_ready(120)
    with httpx.Client(verify=False) as c:
        assert c.get(f"https://127.0.0.1:{node.console_port}/health").status_code == 200
    started = time.monotonic()
    assert node.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5 * 5  # within the actors' shutdown_timeout
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", node.console_port), timeout=1).close()
