"""The console's users, API tokens and sessions in the hive's store (tables
``users``, ``api_tokens``, ``sessions``; schema version 6).

Written against a :class:`hive.Store` (its connection of the calling
thread), like ``hive.playbook.Records``, so the CLI (``immune-node users``)
and the console share one file.  Every change of a user or a token goes
into the ``audit`` table with who did it; so do logins and logouts.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from .._store import Store, StoreError
from ._auth import ALL_ROLES, User
from ._secrets import digest, hash_password, new_session_id, new_token, same, split_token

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
NAME_RULE = "1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"


class UsersError(StoreError):
    """What was asked cannot be done (no such user, a name taken, a bad role); one line."""


@dataclass
class UserRow:
    name: str
    role: str
    created: float
    changed: float
    """When the password was last set."""
    tokens: int
    """Live (unrevoked) API tokens."""
    sessions: int
    """Sessions not yet expired."""


@dataclass
class TokenRow:
    id: str
    user: str
    created: float
    revoked: float | None


def check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise UsersError(f"user name {name[:80]!r}: {NAME_RULE}")


def check_role(role: str) -> None:
    if role not in ALL_ROLES:
        raise UsersError(f"role {role[:80]!r}: one of {', '.join(ALL_ROLES)}")


def _keep_an_admin(db: Any, name: str) -> None:
    """Refuse to take the last admin away: nobody could manage users from
    the console again."""
    if db.execute("SELECT count(*) FROM users WHERE role='admin' AND name<>?", (name,)).fetchone()[0] == 0:
        raise UsersError(f"{name} is the only admin: make another user admin first")


class Users:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- managing users (the CLI) -------------------------------------------------

    def add(self, name: str, role: str, password: str, *, actor: str) -> None:
        check_name(name)
        check_role(role)
        hashed = hash_password(password)  # before the transaction: ~50 ms of scrypt
        now = time.time()
        with self.store._tx() as db:
            if db.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone():
                raise UsersError(f"user {name!r} exists already (`users passwd` changes a password)")
            db.execute("INSERT INTO users(name, role, password, created, changed) VALUES(?,?,?,?,?)",
                       (name, role, hashed, now, now))
            Store._audit(db, actor, "user_add", json.dumps({"user": name, "role": role}))

    def set_role(self, name: str, role: str, *, actor: str, keep_an_admin: bool = False) -> None:
        """Give ``name`` the role ``role``; it holds from their next request.
        ``keep_an_admin``: refuse to demote the last admin (the console's
        admins; the CLI on the hive's host can always add one back)."""
        check_role(role)
        with self.store._tx() as db:
            r = db.execute("SELECT role FROM users WHERE name=?", (name,)).fetchone()
            if r is None:
                raise UsersError(f"no user {name!r}")
            if keep_an_admin and r[0] == "admin" and role != "admin":
                _keep_an_admin(db, name)
            db.execute("UPDATE users SET role=? WHERE name=?", (role, name))
            Store._audit(db, actor, "user_role", json.dumps({"user": name, "role": role, "was": r[0]}))

    def set_password(self, name: str, password: str, *, actor: str) -> int:
        """Change ``name``'s password and end their sessions; how many ended."""
        hashed = hash_password(password)
        with self.store._tx() as db:
            if db.execute("UPDATE users SET password=?, changed=? WHERE name=?",
                          (hashed, time.time(), name)).rowcount == 0:
                raise UsersError(f"no user {name!r}")
            ended = db.execute("DELETE FROM sessions WHERE \"user\"=?", (name,)).rowcount
            Store._audit(db, actor, "user_passwd", json.dumps({"user": name, "sessions_ended": ended}))
        return ended

    def remove(self, name: str, *, actor: str, keep_an_admin: bool = False) -> None:
        """Remove ``name``: their sessions end and their tokens are revoked.
        ``keep_an_admin``: as for :meth:`set_role`."""
        now = time.time()
        with self.store._tx() as db:
            r = db.execute("SELECT role FROM users WHERE name=?", (name,)).fetchone()
            if r is None:
                raise UsersError(f"no user {name!r}")
            if keep_an_admin and r[0] == "admin":
                _keep_an_admin(db, name)
            db.execute("DELETE FROM users WHERE name=?", (name,))
            ended = db.execute("DELETE FROM sessions WHERE \"user\"=?", (name,)).rowcount
            revoked = db.execute("UPDATE api_tokens SET revoked=? WHERE \"user\"=? AND revoked IS NULL",
                                 (now, name)).rowcount
            Store._audit(db, actor, "user_remove", json.dumps(
                {"user": name, "sessions_ended": ended, "tokens_revoked": revoked}))

    def list(self) -> list[UserRow]:
        now = time.time()
        rows = self.store._read(
            "SELECT name, role, created, changed, "
            "(SELECT count(*) FROM api_tokens t WHERE t.\"user\"=u.name AND t.revoked IS NULL), "
            "(SELECT count(*) FROM sessions s WHERE s.\"user\"=u.name AND s.expires > ?) "
            "FROM users u ORDER BY name", (now,))
        return [UserRow(*r) for r in rows]

    def new_token(self, name: str, *, actor: str) -> tuple[str, str]:
        """(id, token) of a new API token for ``name``; the token is shown
        once and only its digest kept."""
        token_id, token = new_token()
        secret = split_token(token)[1]  # type: ignore[index]
        with self.store._tx() as db:
            if not db.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone():
                raise UsersError(f"no user {name!r}")
            db.execute("INSERT INTO api_tokens(id, \"user\", hash, created) VALUES(?,?,?,?)",
                       (token_id, name, digest(secret), time.time()))
            Store._audit(db, actor, "token_add", json.dumps({"user": name, "token": token_id}))
        return token_id, token

    def revoke_token(self, token_id: str, *, actor: str) -> str:
        """Revoke the token ``token_id``; the user it was for."""
        with self.store._tx() as db:
            r = db.execute("SELECT \"user\", revoked FROM api_tokens WHERE id=?", (token_id,)).fetchone()
            if r is None:
                raise UsersError(f"no API token {token_id[:80]!r}")
            if r[1] is not None:
                raise UsersError(f"API token {token_id!r} was revoked already")
            db.execute("UPDATE api_tokens SET revoked=? WHERE id=?", (time.time(), token_id))
            Store._audit(db, actor, "token_revoke", json.dumps({"user": r[0], "token": token_id}))
        return r[0]

    def tokens(self, name: str | None = None) -> list[TokenRow]:
        where, args = ("WHERE \"user\"=?", (name,)) if name else ("", ())
        return [TokenRow(*r) for r in self.store._read(
            f"SELECT id, \"user\", created, revoked FROM api_tokens {where} ORDER BY created", args)]

    # -- signing in (the console) ----------------------------------------------------

    def password_of(self, name: str) -> tuple[User, str] | None:
        """The user named ``name`` and their stored password hash."""
        r = self.store._read("SELECT name, role, password FROM users WHERE name=?", (name,))
        return (User(name=r[0][0], role=r[0][1]), r[0][2]) if r else None

    def token_user(self, token: str) -> User | None:
        """The user a live API token belongs to, else None."""
        parts = split_token(token)
        if parts is None:
            return None
        r = self.store._read("SELECT u.name, u.role, t.hash FROM api_tokens t JOIN users u ON u.name=t.\"user\" "
                             "WHERE t.id=? AND t.revoked IS NULL", (parts[0],))
        return User(name=r[0][0], role=r[0][1]) if r and same(r[0][2], digest(parts[1])) else None

    def start_session(self, user: User, hours: float, address: str = "") -> str:
        """A new session for ``user`` (who just gave their password); its
        id, which only the browser keeps.  Expired sessions go now."""
        sid = new_session_id()
        now = time.time()
        with self.store._tx() as db:
            db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            db.execute("INSERT INTO sessions(hash, \"user\", created, expires, address) VALUES(?,?,?,?,?)",
                       (digest(sid), user.name, now, now + hours * 3600, address))
            Store._audit(db, user.name, "login", json.dumps({"address": address}))
        return sid

    def session_user(self, session_id: str) -> User | None:
        """The user of a live session, else None (expired, ended, user removed)."""
        r = self.store._read("SELECT u.name, u.role FROM sessions s JOIN users u ON u.name=s.\"user\" "
                             "WHERE s.hash=? AND s.expires > ?", (digest(session_id), time.time()))
        return User(name=r[0][0], role=r[0][1]) if r else None

    def end_session(self, session_id: str, user: str) -> None:
        with self.store._tx() as db:
            if db.execute("DELETE FROM sessions WHERE hash=?", (digest(session_id),)).rowcount:
                Store._audit(db, user, "logout", "{}")
