"""The console's ASGI application: door's routes (login, logout, health),
the pages', the API's and the metrics' routes, static files, and a
middleware that sets the security headers and counts every request."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from actors import log_event

from . import _admin, _api, _metrics, _pages, _taxii
from ._auth import (
    LOGIN_COOKIE, SESSION_COOKIE, BadRequest, User, allow, client_address, cookie_value, read_form, refuse,
    safe_next,
)
from ._console import Console
from .._store import StoreError
from ._secrets import MAX_PASSWORD, same, verify_password
from ._templates import templates
from ._throttle import retry_after

STATIC = Path(__file__).parent / "static"

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"strict-transport-security", b"max-age=31536000"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def make_app(console: Console) -> Starlette:
    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        *_pages.routes(),
        *_admin.routes(),
        *_api.routes(),
        *_metrics.routes(),
        *_taxii.routes(),
        Mount("/static", app=StaticFiles(directory=STATIC, check_dir=False), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={BadRequest: _bad_request, StoreError: _store_error},
                    middleware=[Middleware(Guard, console=console)])
    app.state.console = console
    return app


class Guard:
    """Outermost ASGI layer: security headers on every answer, no caching
    of anything but static files, and the request counter by route."""

    def __init__(self, app: Any, console: Console) -> None:
        self.app = app
        self.console = console

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        static = scope.get("path", "").startswith("/static/")

        async def send_guarded(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_guarded)
        finally:
            route = scope.get("route")
            # Paths a client makes up are not counted one by one.
            self.console.requests[(getattr(route, "path", "other"), status)] += 1


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return refuse(request, exc.status, str(exc))


async def _store_error(request: Any, exc: Exception) -> Any:
    # e.g. while checking a token or a session: the reason, not a traceback
    return refuse(request, 503, f"the hive's store cannot be read: {exc}")


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


def _login_form(request: Request, *, error: str = "", name: str = "", status: int = 200,
                headers: dict[str, str] | None = None) -> Response:
    token = cookie_value(request.headers.get("cookie", ""), LOGIN_COOKIE)
    fresh = not token or len(token) != 43
    if fresh:
        token = secrets.token_urlsafe(32)
    response = templates.TemplateResponse(request, "login.html", {
        "login_csrf": token, "error": error, "name": name,
        "next": safe_next(request.query_params.get("next") or request.state.__dict__.get("next"))},
        status_code=status, headers=headers)
    if fresh:
        response.set_cookie(LOGIN_COOKIE, token, max_age=3600, path="/", secure=True, httponly=True,
                            samesite="strict")
    return response


async def login_page(request: Request) -> Response:
    return _login_form(request)


async def login(request: Request) -> Response:
    console: Console = request.app.state.console
    log = console.log
    form = await read_form(request)
    request.state.next = form.get("next", "")
    cookie = cookie_value(request.headers.get("cookie", ""), LOGIN_COOKIE)
    if not cookie or not same(form.get("csrf", ""), cookie):
        console.csrf_refused += 1
        return refuse(request, 403, "missing or wrong CSRF token: reload the login page")
    name, password = form.get("name", ""), form.get("password", "")
    if not name or not password:
        return _login_form(request, error="Give a user name and a password.", name=name[:64], status=400)
    address = client_address(request)
    keys = (f"user:{name[:64].lower()}", f"addr:{address}")
    wait = console.throttle.wait(keys)
    if wait:
        log_event(log, "console.login_throttled", logging.WARNING, user=name[:64], address=address,
                  retry_after=retry_after(wait))
        return _login_form(request, error=f"Too many failed logins: try again in {retry_after(wait)} s.",
                           name=name[:64], status=429, headers={"Retry-After": retry_after(wait)})
    from ._users import Users

    def check(store: Any) -> User | None:
        found = Users(store).password_of(name) if len(name) <= 64 else None
        ok = verify_password(password[:MAX_PASSWORD + 1], found[1] if found else None)
        return found[0] if ok and found else None

    user = await console.read(check)
    if user is None:
        wait = console.throttle.failed(keys)
        log_event(log, "console.login_failed", logging.WARNING, user=name[:64], address=address,
                  failures=console.throttle.failures)
        if wait:
            return _login_form(request, error=f"Too many failed logins: try again in {retry_after(wait)} s.",
                               name=name[:64], status=429, headers={"Retry-After": retry_after(wait)})
        return _login_form(request, error="Wrong user name or password.", name=name[:64], status=401)
    console.throttle.succeeded(keys[0])
    sid = await console.write(lambda store: Users(store).start_session(user, console.session_hours, address))
    log_event(log, "console.login", user=user.name, role=user.role, address=address)
    response = RedirectResponse(safe_next(form.get("next")), status_code=303)
    response.set_cookie(SESSION_COOKIE, sid, max_age=int(console.session_hours * 3600), path="/", secure=True,
                        httponly=True, samesite="strict")
    response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@allow("viewer")
async def logout(request: Request) -> Response:
    from ._users import Users

    console: Console = request.app.state.console
    user: User = request.state.user
    sid = getattr(request.state, "session", None)
    if sid is not None:
        await console.write(lambda store: Users(store).end_session(sid, user.name))
    log_event(console.log, "console.logout", user=user.name)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response
