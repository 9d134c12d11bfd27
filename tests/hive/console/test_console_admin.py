"""The admins' users page, in process (httpx over ASGI): only an admin
gets in; every change (add, role, password, remove, token, revoke) is made
as ``immune-node users`` makes it and recorded as ``console:ADMIN``; a bad
form is a 400 with the reason; the last admin cannot be taken away."""

from __future__ import annotations

import re

import pytest

from hive.console._admin import VERBS, admin_change
from hive.console._users import Users
from test_console_pages import PASSWORD, client, console, login  # noqa: F401  (console is a fixture)

NEW = "a fresh long password"


@pytest.fixture
def admin(console):
    Users(console.store).add("ada", "admin", PASSWORD, actor="t")
    return console


@pytest.mark.parametrize("verb, target, form, why", [
    ("add", "", {"name": "bad name", "role": "viewer", "password": NEW}, "user name 'bad name'"),
    ("add", "", {"name": "bob", "role": "root", "password": NEW}, "role 'root': one of viewer, responder, admin"),
    ("add", "", {"name": "bob", "role": "viewer", "password": "short"}, "too short"),
    ("add", "", {"name": "bob", "role": "viewer", "password": NEW + "\n"}, "NUL or line break"),
    ("add", "", {"name": "bob", "role": "viewer"}, "the password is empty"),
    ("role", "bob", {"role": ""}, "role '': one of"),
    ("password", "bob", {"password": " " * 20}, "the password is empty"),
    ("remove", "../etc", {}, "user name '../etc'"),
    ("revoke", "xyz", {}, "an API token's id is 12 hex digits"),
    ("drop", "bob", {}, "no such change 'drop'"),
])
def test_bad_admin_forms_are_one_line(verb, target, form, why):
    with pytest.raises(ValueError) as e:
        admin_change(verb, target, form)
    assert why in str(e.value) and "\n" not in str(e.value)
    assert set(VERBS) == {"add", "role", "password", "remove", "token", "revoke"}


async def test_only_an_admin_gets_the_users_page(admin):
    for name in ("vera", "rick"):
        async with client(admin) as c:
            csrf = await login(c, name)
            assert "/users" not in (await c.get("/")).text
            assert (await c.get("/users")).status_code == 403
            r = await c.post("/users", data={"csrf": csrf, "name": "eve", "role": "admin", "password": NEW})
            assert r.status_code == 403
    async with client(admin, "rick") as c:  # a token is no way round it
        assert (await c.get("/users")).status_code == 403
    assert "eve" not in [u.name for u in Users(admin.store).list()]


async def test_an_admin_manages_users_and_tokens_and_the_trail_names_them(admin):
    users = Users(admin.store)
    async with client(admin) as c:
        csrf = await login(c, "ada")
        page = (await c.get("/users")).text
        assert 'href="/users"' in page and 'id="user-rick"' in page and "data-confirm" in page
        form = {"name": "bob", "role": "viewer", "password": NEW}
        assert (await c.post("/users", data=form)).status_code == 403  # no CSRF token
        r = await c.post("/users", data={**form, "csrf": csrf})
        assert r.status_code == 200 and "added bob (viewer)" in r.text
        assert (await c.post("/users", data={**form, "csrf": csrf})).status_code == 400  # exists already
        r = await c.post("/users/bob/role", data={"csrf": csrf, "role": "responder"})
        assert r.status_code == 200 and "bob is now responder" in r.text
        r = await c.post("/users/bob/token", data={"csrf": csrf})
        token = re.search(r'<p class="mono">(imt_[^<]+)</p>', r.text).group(1)
        assert users.token_user(token).role == "responder"
        assert token not in (await c.get("/users")).text  # shown once
        token_id = token.split("_")[1]
        r = await c.post(f"/tokens/{token_id}/revoke", data={"csrf": csrf})
        assert r.status_code == 200 and users.token_user(token) is None
        assert (await c.post(f"/tokens/{token_id}/revoke", data={"csrf": csrf})).status_code == 400
        r = await c.post("/users/bob/password", data={"csrf": csrf, "password": "another long password"})
        assert r.status_code == 200
        async with client(admin) as b:
            page = await b.get("/login")
            login_csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
            r = await b.post("/login", data={"csrf": login_csrf, "name": "bob", "password": "another long password"})
            assert r.status_code == 303
        r = await c.post("/users/bob/remove", data={"csrf": csrf})
        assert r.status_code == 200 and "removed bob" in r.text
        assert (await c.post("/users/bob/remove", data={"csrf": csrf})).status_code == 400
        for path, data, why in (("/users/ada/role", {"role": "viewer"}, "ada is the only admin"),
                                ("/users/ada/remove", {}, "ada is the only admin"),
                                ("/users/rick/role", {"role": "god"}, "role &#39;god&#39;"),
                                ("/users/rick/add", {}, "no such change")):
            r = await c.post(path, data={**data, "csrf": csrf})
            assert r.status_code in (400, 404) and why in r.text, (path, r.text[:2000])
        page = (await c.get("/users")).text
    trail = admin.store._read("SELECT actor, what FROM audit WHERE actor LIKE 'console:%' ORDER BY id", ())
    assert trail == [("console:ada", w) for w in ("user_add", "user_role", "token_add", "token_revoke",
                                                  "user_passwd", "user_remove")]
    assert "user_remove" in page and "console:ada" in page
    assert [u.name for u in users.list()] == ["ada", "rick", "vera"]
