"""The admins' pages: the console's users and their API tokens, managed
as ``immune-node users`` manages them (``_users.Users``), each change in the
audit trail as ``console:ADMIN``.

What a form asks is read and checked by :func:`admin_change`, a plain
function (fuzzed in tests/fuzz): a :class:`ValueError` of one line, or a
change that ``Users`` then makes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._auth import ALL_ROLES, allow, read_form, refuse
from ._pages import _page, _store_errors
from ._secrets import PasswordError, check_password
from ._users import TokenRow, UserRow, Users, UsersError, check_name, check_role

VERBS = ("add", "role", "password", "remove", "token", "revoke")
"""add a user; change a user's role, reset their password, remove them,
issue them a token; revoke a token."""
_TOKEN_ID = re.compile(r"[0-9a-f]{12}")
_TRAIL = ("user_add", "user_role", "user_passwd", "user_remove", "token_add", "token_revoke")
"""What the users page's trail shows: the changes ``Users`` records."""


@dataclass(frozen=True)
class AdminChange:
    verb: str
    name: str = ""
    """The user it is about (for revoke: none, the token says)."""
    role: str = ""
    password: str = ""
    token: str = ""
    """The token's id, for revoke."""

    def describe(self) -> str:
        return {"add": f"added {self.name} ({self.role})", "role": f"{self.name} is now {self.role}",
                "password": f"password of {self.name} reset; their sessions ended",
                "remove": f"removed {self.name}: their sessions ended and their API tokens are revoked",
                "token": f"new API token for {self.name}", "revoke": f"revoked API token {self.token}"}[self.verb]


def admin_change(verb: str, target: str, form: Mapping[str, str]) -> AdminChange:
    """The change an admin's form asks for: ``verb`` (one of ``VERBS``) on
    ``target`` (a user's name, or a token's id for revoke; for add the
    form's ``name``); ValueError with the reason in one line."""
    if verb not in VERBS:
        raise ValueError(f"no such change {verb[:20]!r}: one of {', '.join(VERBS)}")
    try:
        if verb == "revoke":
            token = target.removeprefix("imt_").partition("_")[0]
            if not _TOKEN_ID.fullmatch(token):
                raise ValueError(f"token {target[:40]!r}: an API token's id is 12 hex digits")
            return AdminChange(verb, token=token)
        name = form.get("name", "") if verb == "add" else target
        check_name(name)
        role = form.get("role", "")
        if verb in ("add", "role"):
            check_role(role)
        password = form.get("password", "")
        if verb in ("add", "password"):
            check_password(password)
    except (UsersError, PasswordError) as e:
        raise ValueError(str(e)) from None
    return AdminChange(verb, name=name, role=role if verb in ("add", "role") else "",
                       password=password if verb in ("add", "password") else "")


def apply(users: Users, change: AdminChange, admin: str) -> str:
    """Make ``change`` as ``admin``; the new token for ``token``, else "".
    :class:`UsersError` (one line) if it cannot be made."""
    actor = f"console:{admin}"
    v = change.verb
    if v == "add":
        users.add(change.name, change.role, change.password, actor=actor)
    elif v == "role":
        users.set_role(change.name, change.role, actor=actor, keep_an_admin=True)
    elif v == "password":
        users.set_password(change.name, change.password, actor=actor)
    elif v == "remove":
        users.remove(change.name, actor=actor, keep_an_admin=True)
    elif v == "token":
        return users.new_token(change.name, actor=actor)[1]
    else:
        users.revoke_token(change.token, actor=actor)
    return ""


# -- the pages ----------------------------------------------------------------------------


async def _users_page(request: Request, *, flash: str = "", flash_kind: str = "", token: str = "",
                      status: int = 200) -> Response:
    def both(store: Any) -> tuple[list[UserRow], list[TokenRow], list[tuple]]:
        u = Users(store)
        marks = ",".join("?" * len(_TRAIL))
        trail = store._read(f"SELECT time, actor, what, detail FROM audit WHERE what IN ({marks}) "
                            "ORDER BY id DESC LIMIT 50", _TRAIL)
        return u.list(), u.tokens(), trail

    rows, tokens, trail = await request.app.state.console.read(both)
    return _page(request, "users.html", status=status, roles=ALL_ROLES, rows=rows, tokens=tokens, trail=trail, flash=flash,
                 flash_kind=flash_kind, token=token)


@allow("admin")
async def users(request: Request) -> Response:
    return await _users_page(request)


@allow("admin")
async def change(request: Request) -> Response:
    """POST /users (add), /users/{name}/{verb}, /tokens/{id}/revoke."""
    console = request.app.state.console
    form = await read_form(request)
    params = request.path_params
    if request.url.path == "/users":
        verb, target = "add", ""
    elif "verb" in params:
        verb, target = params["verb"], params["name"]
        if verb in ("add", "revoke"):
            return refuse(request, 404, f"no such change {verb!r} of a user")
    else:
        verb, target = "revoke", params["id"]
    admin = request.state.user.name
    try:
        c = admin_change(verb, target, form)
        token = await console.write(lambda store: apply(Users(store), c, admin))
    except (ValueError, UsersError) as e:
        return await _users_page(request, flash=str(e), flash_kind="error", status=400)
    # Rendered, not redirected: a new token is shown on this answer only (never cached: no-store).
    return await _users_page(request, flash=c.describe(), flash_kind="done", token=token)


def routes() -> list[Route]:
    guarded = _store_errors(change)
    return [
        Route("/users", _store_errors(users)),
        Route("/users", guarded, methods=["POST"]),
        Route("/users/{name}/{verb}", guarded, methods=["POST"]),
        Route("/tokens/{id}/revoke", guarded, methods=["POST"]),
    ]
