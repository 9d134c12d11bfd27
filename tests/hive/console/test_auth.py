"""The console's access control as plain objects: password hashing, API
tokens, sessions in the store, the login throttle, and the parsing of what a
client sends (no sockets)."""

from __future__ import annotations

import hashlib
import time

import pytest

from hive import Store
from hive.console._auth import BadRequest, bearer_token, cookie_value, parse_form, role_allows, safe_next
from hive.console._secrets import (
    MIN_PASSWORD, PasswordError, csrf_for, digest, hash_password, is_session_id, new_session_id, split_token,
    verify_password,
)
from hive.console._throttle import Throttle, retry_after
from hive.console._users import Users, UsersError

PASSWORD = "correct horse battery"


# -- passwords --------------------------------------------------------------------

def test_a_password_hash_is_salted_scrypt_with_its_parameters():
    a, b = hash_password(PASSWORD), hash_password(PASSWORD)
    assert a != b  # a random salt each time
    assert a.startswith("scrypt$16384$8$1$")
    assert verify_password(PASSWORD, a) and verify_password(PASSWORD, b)
    assert not verify_password(PASSWORD + "x", a)
    assert not verify_password("", a)


def test_the_hash_is_what_scrypt_computes():
    import base64

    kind, n, r, p, salt, want = hash_password(PASSWORD).split("$")
    unb64 = lambda t: base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))  # noqa: E731
    assert hashlib.scrypt(PASSWORD.encode(), salt=unb64(salt), n=int(n), r=int(r), p=int(p), dklen=32) == unb64(want)


@pytest.mark.parametrize("password,says", [("", "empty"), ("   ", "empty"), ("a" * (MIN_PASSWORD - 1), "too short"),
                                           ("a" * 1025, "too long"), ("abc\0defghijklm", "NUL")])
def test_unusable_passwords_are_refused(password, says):
    with pytest.raises(PasswordError, match=says):
        hash_password(password)


@pytest.mark.parametrize("stored", [None, "", "scrypt$x", "md5$1$1$1$aa$bb", "scrypt$16384$8$1$!!$!!",
                                    "scrypt$1099511627776$8$1$AA$AA"])
def test_unknown_users_and_damaged_hashes_open_nothing(stored):
    assert not verify_password(PASSWORD, stored)


# -- secrets and the client's headers ---------------------------------------------------

def test_session_ids_and_csrf_tokens():
    sid = new_session_id()
    assert is_session_id(sid) and len(sid) == 43  # 32 random bytes
    assert csrf_for(sid) == csrf_for(sid) != csrf_for(new_session_id())
    assert digest(sid) == hashlib.sha256(sid.encode()).hexdigest()
    assert not is_session_id("x" * 42) and not is_session_id("a" * 42 + "!")


def test_bearer_header():
    assert bearer_token("Bearer imt_0123456789ab_x") == "imt_0123456789ab_x"
    assert bearer_token("bearer  abc=") == "abc="
    for bad in ("Basic abc", "Bearer", "Bearer a b", "Bearer \u00e9", "Bearer " + "a" * 9000, ""):
        with pytest.raises(BadRequest) as e:
            bearer_token(bad)
        assert e.value.status == 401


def test_cookie_header():
    assert cookie_value("a=1; __Host-immune-session=abc; b=2", "__Host-immune-session") == "abc"
    assert cookie_value('x="q"', "x") == "q"
    assert cookie_value("a=1", "x") is None
    assert cookie_value("x", "x") is None
    assert cookie_value("x=" + "a" * 9000, "x") is None


def test_form_parsing_refuses_clearly():
    form = "application/x-www-form-urlencoded"
    assert parse_form(b"name=alice&password=p%20w&name=mallory", form) == {"name": "alice", "password": "p w"}
    assert parse_form(b"", form + "; charset=utf-8") == {}
    for body, ctype, status in ((b"name=a", "text/plain", 415), (b"a=%ff%fe", form, 400), (b"\xff=1", form, 400),
                                (b"a=1&" * 20000, form, 413), (b"&".join(b"k%d=1" % i for i in range(200)), form, 400)):
        with pytest.raises(BadRequest) as e:
            parse_form(body, ctype)
        assert e.value.status == status, body[:20]


@pytest.mark.parametrize("target,goes", [("/alerts?x=1", "/alerts?x=1"), (None, "/"), ("", "/"),
                                         ("https://evil.example/", "/"), ("//evil.example", "/"),
                                         ("/\\evil.example", "/"), ("/a\nb", "/"), ("alerts", "/")])
def test_after_login_only_paths_on_this_site(target, goes):
    assert safe_next(target) == goes


def test_roles_are_ordered():
    assert role_allows("admin", "responder") and role_allows("responder", "responder")
    assert not role_allows("viewer", "responder") and not role_allows("root", "viewer")


# -- users, tokens and sessions in the store -----------------------------------------------

@pytest.fixture
def users(store_location, tmp_path):
    store = Store(store_location)
    yield Users(store)
    store.close()


def _audit(users: Users) -> list[tuple[str, str]]:
    return users.store._read("SELECT actor, what FROM audit ORDER BY id", ())


def test_users_tokens_and_their_audit_trail(users):
    users.add("alice", "admin", PASSWORD, actor="cli:root")
    with pytest.raises(UsersError, match="exists already"):
        users.add("alice", "viewer", PASSWORD, actor="cli:root")
    for name, role in (("bad name", "viewer"), ("", "viewer"), ("bob", "root")):
        with pytest.raises(UsersError):
            users.add(name, role, PASSWORD, actor="cli:root")
    token_id, token = users.new_token("alice", actor="cli:root")
    assert split_token(token)[0] == token_id
    stored = users.store._read("SELECT hash FROM api_tokens", ())[0][0]
    assert token not in stored and stored == digest(split_token(token)[1])
    assert users.token_user(token).name == "alice"
    assert users.token_user(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert users.token_user("imt_nope") is None
    users.revoke_token(token_id, actor="cli:root")
    assert users.token_user(token) is None
    with pytest.raises(UsersError, match="revoked already"):
        users.revoke_token(token_id, actor="cli:root")
    assert [u.name for u in users.list()] == ["alice"]
    users.remove("alice", actor="cli:ops")
    assert _audit(users) == [("cli:root", "user_add"), ("cli:root", "token_add"), ("cli:root", "token_revoke"),
                             ("cli:ops", "user_remove")]


def test_sessions_end_with_a_new_password_or_the_user(users):
    users.add("alice", "responder", PASSWORD, actor="t")
    user, hashed = users.password_of("alice")
    assert verify_password(PASSWORD, hashed)
    sid = users.start_session(user, hours=1)
    assert users.store._read("SELECT hash FROM sessions", ())[0][0] == digest(sid)  # never the id itself
    assert users.session_user(sid) == user
    assert users.set_password("alice", PASSWORD + "!", actor="t") == 1
    assert users.session_user(sid) is None
    sid = users.start_session(user, hours=1)
    token = users.new_token("alice", actor="t")[1]
    users.remove("alice", actor="t")
    assert users.session_user(sid) is None and users.token_user(token) is None


def test_a_session_expires(users):
    users.add("alice", "viewer", PASSWORD, actor="t")
    user, _ = users.password_of("alice")
    sid = users.start_session(user, hours=1e-6)
    time.sleep(0.01)
    assert users.session_user(sid) is None
    users.start_session(user, hours=1)  # and a new login clears the expired ones away
    assert users.store._read("SELECT count(*) FROM sessions", ())[0][0] == 1


def test_logout_ends_the_session(users):
    users.add("alice", "viewer", PASSWORD, actor="t")
    user, _ = users.password_of("alice")
    sid = users.start_session(user, hours=1)
    users.end_session(sid, "alice")
    assert users.session_user(sid) is None
    assert _audit(users)[-2:] == [("alice", "login"), ("alice", "logout")]


# -- the login throttle ---------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_five_failures_are_free_then_the_wait_doubles():
    clock = Clock()
    t = Throttle(free=5, base=1.0, cap=60, clock=clock)
    keys = ("user:alice", "addr:10.0.0.1")
    assert [t.failed(keys) for _ in range(5)] == [0.0] * 5
    assert t.wait(keys) == 0
    assert [t.failed(keys) for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert t.wait(keys) == 8.0 and t.refused == 1
    assert t.wait(["user:bob", "addr:10.0.0.1"]) == 8.0  # the address is closed for every name
    assert t.wait(["user:bob", "addr:10.0.0.2"]) == 0
    clock.now += 8
    assert t.wait(keys) == 0
    for _ in range(10):
        t.failed(keys)
    assert t.wait(keys) == 60  # capped
    t.succeeded("user:alice")
    assert t.wait(keys) == 60  # the address stays closed
    assert t.failures == 19 and retry_after(0.2) == "1" and retry_after(7.1) == "8"


def test_the_throttle_forgets_idle_keys_and_stays_bounded():
    clock = Clock()
    t = Throttle(free=1, base=1, cap=10, forget=100, most=50, clock=clock)
    t.failed(["user:a"]), t.failed(["user:a"])
    clock.now += 200
    assert t.wait(["user:a"]) == 0 and t.failed(["user:a"]) == 0  # started over
    for i in range(1000):
        t.failed([f"user:{i}"])
    assert t.statistics()["keys"] == 50
