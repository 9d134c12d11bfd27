"""The console's app in process (httpx over ASGI, no sockets): login,
sessions, CSRF, roles, tokens, throttling, security headers, and bad input
answered with a clear 4xx, never a 500."""

from __future__ import annotations

import re

import httpx
import pytest
from starlette.responses import JSONResponse
from starlette.routing import Route

from hive import Store
from hive.console import Console, allow, make_app
from hive.console._auth import SESSION_COOKIE
from hive.console._users import Users
from node import Config

PASSWORD = "correct horse battery"


@allow("viewer")
async def read_something(request):
    return JSONResponse({"user": request.state.user.name})


@allow("responder")
async def approve(request):
    return JSONResponse({"approved_by": request.state.user.name})


@allow("viewer")
async def page(request):
    return JSONResponse({"page": request.state.user.name})


@pytest.fixture
def console(store_location, tmp_path, monkeypatch):
    from hive.console import _api

    monkeypatch.setattr(_api, "routes", lambda: [
        Route("/api/things", read_something), Route("/api/approve", approve, methods=["POST"]),
        Route("/things", page), Route("/approve", approve, methods=["POST"])])
    store = Store(store_location)
    users = Users(store)
    users.add("vera", "viewer", PASSWORD, actor="t")
    users.add("rick", "responder", PASSWORD, actor="t")
    console = Console(Config(), store_location, run_dir=tmp_path / "run")
    console.tokens = {"vera": users.new_token("vera", actor="t")[1], "rick": users.new_token("rick", actor="t")[1]}
    console.users = users
    yield console
    console.close()
    store.close()


def client(console) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app(console), client=("10.0.0.7", 5555)),
                             base_url="https://console.test")


async def login(c: httpx.AsyncClient, name: str, password: str = PASSWORD, next: str = "/things") -> httpx.Response:
    page = await c.get("/login", params={"next": next})
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return await c.post("/login", data={"csrf": csrf, "name": name, "password": password, "next": next})


def csrf_of(c: httpx.AsyncClient, console) -> str:
    from hive.console._secrets import csrf_for

    return csrf_for(c.cookies[SESSION_COOKIE])


async def test_login_sets_a_secure_session_and_goes_next(console):
    async with client(console) as c:
        r = await login(c, "vera")
        assert r.status_code == 303 and r.headers["location"] == "/things"
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE))
        for attribute in ("Secure", "HttpOnly", "SameSite=strict", "Path=/", "Max-Age=43200"):
            assert attribute in cookie
        r = await c.get("/things")
        assert r.json() == {"page": "vera"}
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-frame-options"] == "DENY"
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert "max-age=" in r.headers["strict-transport-security"]
        assert (await c.get("/api/things")).json() == {"user": "vera"}  # the browser's htmx calls


async def test_anonymous_requests(console):
    async with client(console) as c:
        r = await c.get("/api/things")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert "error" in r.json()
        r = await c.get("/things", params={"x": "1"})
        assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fthings%3Fx%3D1"
        assert (await c.get("/health")).json() == {"ok": True}


async def test_roles_and_csrf(console):
    async with client(console) as c:
        await login(c, "vera")
        r = await c.post("/api/approve", headers={"X-CSRF-Token": csrf_of(c, console)})
        assert r.status_code == 403 and "responder" in r.json()["error"]
        assert (await c.post("/approve", data={"csrf": csrf_of(c, console)})).status_code == 403
    async with client(console) as c:
        await login(c, "rick")
        assert (await c.post("/api/approve")).status_code == 403  # no CSRF token
        assert (await c.post("/api/approve", headers={"X-CSRF-Token": "0" * 64})).status_code == 403
        assert (await c.post("/approve", data={"csrf": "nope"})).status_code == 403
        r = await c.post("/api/approve", headers={"X-CSRF-Token": csrf_of(c, console)})
        assert r.json() == {"approved_by": "rick"}
        assert (await c.post("/approve", data={"csrf": csrf_of(c, console)})).status_code == 200
        assert console.csrf_refused == 3


async def test_bearer_tokens(console):
    async with client(console) as c:
        vera = {"Authorization": f"Bearer {console.tokens['vera']}"}
        assert (await c.get("/api/things", headers=vera)).json() == {"user": "vera"}
        assert (await c.post("/api/approve", headers=vera)).status_code == 403
        rick = {"Authorization": f"Bearer {console.tokens['rick']}"}
        assert (await c.post("/api/approve", headers=rick)).json() == {"approved_by": "rick"}  # no CSRF needed
        console.users.revoke_token(console.tokens["rick"][4:16], actor="t")
        r = await c.post("/api/approve", headers=rick)
        assert r.status_code == 401 and "revoked" in r.json()["error"]
        r = await c.get("/api/things", headers={"Authorization": "Basic dmVyYTpw"})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


async def test_logout_and_removal_end_the_session(console):
    async with client(console) as c:
        await login(c, "vera")
        r = await c.post("/logout", data={"csrf": csrf_of(c, console)})
        assert r.status_code == 303
        assert (await c.get("/api/things")).status_code == 401
    async with client(console) as c:
        await login(c, "rick")
        assert (await c.get("/api/things")).status_code == 200
        console.users.remove("rick", actor="t")
        assert (await c.get("/api/things")).status_code == 401


async def test_wrong_passwords_are_throttled(console):
    async with client(console) as c:
        for _ in range(5):
            r = await login(c, "vera", "wrong password!")
            assert r.status_code == 401 and "Wrong user name or password" in r.text
        r = await login(c, "vera", "wrong password!")
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        r = await login(c, "vera")  # the right password, but closed for now
        assert r.status_code == 429
        assert console.throttle.failures == 6 and console.throttle.refused == 1


async def test_unknown_user_and_login_without_csrf(console):
    async with client(console) as c:
        assert (await login(c, "nobody")).status_code == 401
        r = await c.post("/login", data={"name": "vera", "password": PASSWORD})
        assert r.status_code == 403 and "CSRF" in r.text


@pytest.mark.parametrize("body,ctype,status", [
    (b"name=vera", "application/x-www-form-urlencoded", 403),  # no csrf field
    (b"x" * (1 << 20), "application/x-www-form-urlencoded", 413),
    (b"name=\xff\xfe", "application/x-www-form-urlencoded", 400),
    (b"name=%ff%fe", "application/x-www-form-urlencoded", 400),
    (b'{"name": "vera"}', "application/json", 415),
    (b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--", "multipart/form-data; boundary=x", 415),
])
async def test_bad_login_input_gets_a_clear_4xx(console, body, ctype, status):
    async with client(console) as c:
        r = await c.post("/login", content=body, headers={"Content-Type": ctype})
        assert r.status_code == status, r.text


async def test_missing_fields(console):
    async with client(console) as c:
        page = await c.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = await c.post("/login", data={"csrf": csrf, "name": "vera"})
        assert r.status_code == 400 and "Give a user name and a password" in r.text


async def test_bad_cookies_and_headers_are_anonymous_not_errors(console):
    async with client(console) as c:
        for cookie in (f"{SESSION_COOKIE}=".encode() + b"A" * 43, f"{SESSION_COOKIE}=\u00e9".encode(), b"=;;=",
                       b"a" * 10000, f"{SESSION_COOKIE}=".encode() + b"\xff" * 43):
            r = await c.get("/api/things", headers=[(b"Cookie", cookie)])
            assert r.status_code == 401
        r = await c.get("/api/things", headers=[(b"Authorization", b"Bearer \xff\xfe")])
        assert r.status_code == 401


async def test_requests_are_counted_by_route(console):
    async with client(console) as c:
        await c.get("/health")
        await c.get("/api/things")
        await c.get("/no/such/page/1")
        await c.get("/no/such/page/2")
    assert console.requests[("/health", 200)] == 1
    assert console.requests[("/api/things", 401)] == 1
    assert console.requests[("other", 404)] == 2


async def test_a_store_that_cannot_be_read_is_a_503_with_the_reason_not_a_500(store_location, console, tmp_path):
    """Checking a token reads the store; a broken one answers 503 and says why."""
    console.close()
    if isinstance(store_location, str):  # PostgreSQL: the tables it reads are gone
        import psycopg

        with psycopg.connect(store_location, autocommit=True) as db:
            db.execute("DROP TABLE api_tokens, users")
    else:
        store_location.write_bytes(b"not a database at all" * 300)
        for suffix in ("-wal", "-shm"):
            (tmp_path / f"hive.db{suffix}").unlink(missing_ok=True)
    async with client(console) as c:
        r = await c.get("/api/things", headers={"Authorization": f"Bearer {console.tokens['vera']}"})
    assert r.status_code == 503, r.text
    assert "store cannot be read" in r.json()["error"]
