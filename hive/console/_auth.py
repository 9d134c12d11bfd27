"""Who a request is, and whether they may: ``@allow(role)`` on every endpoint.

A request proves who it is by an API token (``Authorization: Bearer
imt_...``) or by the session cookie the login page set.  Under ``/api/``
and ``/metrics`` an anonymous request gets 401 JSON with
``WWW-Authenticate: Bearer``; a page sends it to ``/login?next=...``.  A
role too low for the endpoint gets 403 (JSON under the API, a page
elsewhere).  An unsafe method (POST, PUT, PATCH, DELETE) authenticated by
the cookie must carry the session's CSRF token, as the form field ``csrf``
or the header ``X-CSRF-Token``; a bearer token is not sent by the browser
on its own, so it needs none.

The parsing of what a client sends (the Authorization and Cookie headers,
an urlencoded form) is plain functions here, fuzzed in tests/fuzz.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, quote

import msgspec

from ._secrets import csrf_for, is_session_id, same

ROLES = ("viewer", "responder", "admin")
"""Each role may do what the ones before it may: viewers read, responders
approve, deny and run actions, admins manage users, rules, playbooks and policies."""

PEER = "peer"
"""Another hive pulling this one's indicators: it may read ``/taxii2/`` and
nothing else (outside ``ROLES``, so it passes no viewer's check); admins
may read ``/taxii2/`` too."""
ALL_ROLES = (*ROLES, PEER)

SESSION_COOKIE = "__Host-immune-session"
"""``__Host-``: the browser keeps it only if Secure, for this host, path /."""
LOGIN_COOKIE = "__Host-immune-login"
"""The login form's CSRF token (double submit: the cookie and the form field must match)."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_BYTES = 64 << 10
"""The largest form body read (a login, an approval with its reason)."""
_HEADER_CHARS = 8192


class User(msgspec.Struct, frozen=True):
    name: str
    role: str


def role_allows(have: str, need: str) -> bool:
    if need == PEER:
        return have in (PEER, "admin")
    return have in ROLES and need in ROLES and ROLES.index(have) >= ROLES.index(need)


class BadRequest(Exception):
    """What the client sent cannot be read: ``status`` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- parsing what the client sends ----------------------------------------------------

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def bearer_token(header: str) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header (RFC 6750's
    b64token); :class:`BadRequest` (401) for anything else."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or len(header) > _HEADER_CHARS or not _B64TOKEN.fullmatch(token):
        raise BadRequest(401, "the Authorization header must be 'Bearer TOKEN'")
    return token


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header (the first one), or None."""
    if len(header) > _HEADER_CHARS:
        return None
    for part in header.split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key == name:
            return value.strip().strip('"')
    return None


def parse_form(body: bytes, content_type: str) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as {field: first value}."""
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise BadRequest(415, "expected a form (application/x-www-form-urlencoded)")
    if len(body) > FORM_BYTES:
        raise BadRequest(413, f"the form is larger than {FORM_BYTES} bytes")
    try:
        text = body.decode("ascii")  # urlencoded: anything else is percent-escaped
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict",
                          max_num_fields=100)
    except UnicodeDecodeError:
        raise BadRequest(400, "the form is not valid UTF-8") from None
    except ValueError as e:  # too many fields
        raise BadRequest(400, f"the form cannot be read: {e}") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


def safe_next(target: str | None) -> str:
    """Where to go after login: a path on this site, never elsewhere."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or len(target) > 2048 \
            or any(ord(c) < 0x21 or c in "\\\x7f" for c in target):
        return "/"
    return target


# -- on a request ---------------------------------------------------------------------

def is_api(path: str) -> bool:
    return path.startswith(("/api/", "/taxii2/")) or path in ("/api", "/metrics", "/taxii2")


async def read_form(request: Any) -> dict[str, str]:
    """The request's urlencoded form, read once (bounded) and kept on
    ``request.state.form``; :class:`BadRequest` if unreadable.  (Starlette's
    ``request.form()`` needs python-multipart, which the console does not use.)"""
    form = getattr(request.state, "form", None)
    if form is None:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > FORM_BYTES:
                raise BadRequest(413, f"the form is larger than {FORM_BYTES} bytes")
        form = request.state.form = parse_form(bytes(body), request.headers.get("content-type", ""))
    return form


def csrf_token(request: Any) -> str:
    """The CSRF token to put in the page's forms and htmx headers ("" for nobody)."""
    return getattr(request.state, "csrf", "")


def client_address(request: Any) -> str:
    return request.client.host if request.client else ""


def refuse(request: Any, status: int, message: str) -> Any:
    """The 4xx answer: JSON under the API, a short page elsewhere."""
    from starlette.responses import HTMLResponse, JSONResponse

    headers = {"WWW-Authenticate": 'Bearer realm="immune"'} if status == 401 else {}
    if is_api(request.url.path) or "authorization" in request.headers:
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    from html import escape

    return HTMLResponse(f"<!doctype html><title>{status}</title><h1>{status}</h1><p>{escape(message)}</p>",
                        status_code=status, headers=headers)


async def authenticate(request: Any) -> User | None:
    """The user the request proves to be (None: anonymous).  Sets
    ``request.state.user``, and for a session ``.session`` and ``.csrf``."""
    from ._users import Users

    console = request.app.state.console
    header = request.headers.get("authorization")
    if header is not None:
        token = bearer_token(header)
        user = await console.read(lambda store: Users(store).token_user(token))
        if user is None:
            raise BadRequest(401, "the API token is unknown or revoked")
        request.state.user = user
        return user
    sid = cookie_value(request.headers.get("cookie", ""), SESSION_COOKIE)
    if not sid or not is_session_id(sid):
        return None
    user = await console.read(lambda store: Users(store).session_user(sid))
    if user is not None:
        request.state.user = user
        request.state.session = sid
        request.state.csrf = csrf_for(sid)
    return user


async def check_csrf(request: Any) -> None:
    """For an unsafe method on a session: the CSRF token must come with it."""
    if request.method in SAFE_METHODS or getattr(request.state, "session", None) is None:
        return
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        sent = (await read_form(request)).get("csrf")
    if not sent or not same(sent, request.state.csrf):
        request.app.state.console.csrf_refused += 1
        raise BadRequest(403, "missing or wrong CSRF token (reload the page)")


Endpoint = Callable[[Any], Awaitable[Any]]


def allow(role: str) -> Callable[[Endpoint], Endpoint]:
    """Decorate a Starlette endpoint: only users of ``role`` or above get in
    (``request.state.user`` is the :class:`User`)."""
    if role not in ALL_ROLES:
        raise ValueError(f"role {role!r} is not one of {ALL_ROLES}")

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Any) -> Any:
            from starlette.responses import RedirectResponse

            try:
                user = await authenticate(request)
                if user is None:
                    if is_api(request.url.path):
                        return refuse(request, 401, "log in or send an API token (Authorization: Bearer TOKEN)")
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
                if not role_allows(user.role, role):
                    return refuse(request, 403, f"this needs the {role} role; {user.name} is {user.role}")
                await check_csrf(request)
            except BadRequest as e:
                return refuse(request, e.status, str(e))
            return await endpoint(request)

        guarded.role = role  # type: ignore[attr-defined]
        return guarded

    return decorate
