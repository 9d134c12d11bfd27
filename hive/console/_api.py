"""The console's JSON API under /api/: the read model's Structs as JSON
(msgspec), the same data the pages show, paged by cursor; approve and deny;
run an action by hand (POST /api/actions); and the OpenAPI 3.1 document that describes it at /api/openapi.json.

Every route is listed once in ``ROUTES`` with what it returns: the router
and the OpenAPI document are both made from that list, so they cannot
drift apart.  A bad query parameter or body is a 400 with ``{"error": reason}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import wire
from hive._store import StoreError
from hive.correlate import Incident

from . import _read as read
from ._actions import MAX_WHY, ManualAction, decide, run
from ._auth import allow

_encode = msgspec.json.Encoder().encode
BODY_BYTES = 4096


class Error(msgspec.Struct):
    error: str


class Decision(msgspec.Struct, forbid_unknown_fields=True):
    why: str = msgspec.field(default="")


class ActionDetail(msgspec.Struct):
    action: read.ActionView
    audit: list[read.AuditView]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(value: Any, status: int = 200) -> Response:
    return Response(_encode(value), status_code=status, media_type="application/json")


def _only(request: Request, allowed: tuple[str, ...] = ()) -> None:
    for key in request.query_params:
        if key not in allowed:
            raise ApiError(400, f"unknown parameter {key[:40]!r}" +
                           (f": expected {', '.join(allowed)}" if allowed else ": this route takes none"))


async def _read(request: Request, fn: Callable[[Any], Any]) -> Any:
    return await request.app.state.console.read(fn)


def _found(value: Any, what: str) -> Any:
    if value is None:
        raise ApiError(404, f"no {what}")
    return value


# -- the routes ---------------------------------------------------------------------------


async def overview(request: Request) -> Any:
    _only(request)
    return await _read(request, read.overview)


async def alerts(request: Request) -> Any:
    q = read.alert_query(request.query_params)
    return await _read(request, lambda store: read.alerts(store, q))


async def alert(request: Request) -> Any:
    _only(request)
    alert_id = request.path_params["id"]
    return _found(await _read(request, lambda store: read.alert(store, alert_id)), f"alert {alert_id!r}")


async def tree(request: Request) -> Any:
    _only(request)
    alert_id = request.path_params["id"]
    return _found(await _read(request, lambda store: read.alert_process(store, alert_id)), f"alert {alert_id!r}")


async def incidents(request: Request) -> Any:
    limit = read._int(request.query_params, "limit", 100, 1, read.MAX_PAGE)
    _only(request, ("limit",))
    return await _read(request, lambda store: read.incidents(store, limit))


async def incident(request: Request) -> Any:
    _only(request)
    incident_id = request.path_params["id"]
    return _found(await _read(request, lambda store: read.incident(store, incident_id)), f"incident {incident_id!r}")


async def incident_triage(request: Request) -> Any:
    _only(request)
    incident_id = request.path_params["id"]
    enabled = bool(request.app.state.console.config.ai.url)
    return _found(await _read(request, lambda store: read.incident_triage(store, incident_id, enabled)),
                  f"incident {incident_id!r}")


async def request_triage(request: Request) -> Any:
    """Ask the hive's ai actor for a triage of the incident, as the logged-in user."""
    _only(request)
    incident_id = request.path_params["id"]
    console = request.app.state.console
    if not console.config.ai.url:
        raise ApiError(409, _AI_OFF)
    if await _read(request, lambda store: read.incident(store, incident_id)) is None:
        raise ApiError(404, f"no incident {incident_id!r}")
    await console.write(lambda store: store.request_triage(incident_id, f"operator:{request.state.user.name}"))
    return await _read(request, lambda store: read.incident_triage(store, incident_id, True))


_AI_OFF = "AI triage is off: the hive's [ai] url is not set"


async def events(request: Request) -> Any:
    q = read.event_query(request.query_params)
    return await _read(request, lambda store: read.events(store, q))


async def agents(request: Request) -> Any:
    _only(request)
    return await _read(request, read.agents)


async def actions(request: Request) -> Any:
    _only(request, ("state", "limit"))
    state = read._one_of(request.query_params, "state", read.ACTION_STATES)
    limit = read._int(request.query_params, "limit", 100, 1, read.MAX_PAGE)
    return await _read(request, lambda store: read.actions(store, state=state, limit=limit))


async def action(request: Request) -> Any:
    _only(request)
    action_id = request.path_params["id"]
    found = _found(await _read(request, lambda store: read.action(store, action_id)), f"action {action_id!r}")
    return ActionDetail(action=found[0], audit=found[1])


async def _body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > BODY_BYTES:
            raise ApiError(413, f"the body is larger than {BODY_BYTES} bytes")
    return body


def parse_decision(body: bytes) -> Decision:
    """An approve or deny request's body (none, or ``{"why": "..."}``);
    :class:`ApiError` (400) if it is not that."""
    if not body.strip():
        return Decision()
    try:
        d = msgspec.json.decode(body, type=Decision)
    except msgspec.DecodeError as e:
        raise ApiError(400, f"body: {e}") from None
    if len(d.why) > MAX_WHY:
        raise ApiError(400, f"why: at most {MAX_WHY} characters")
    return d


def parse_manual(body: bytes) -> ManualAction:
    """A manual action's JSON body; :class:`ApiError` (400) if it is not one."""
    try:
        return msgspec.json.decode(body, type=ManualAction)
    except msgspec.DecodeError as e:
        raise ApiError(400, f"body: {e}") from None


async def run_action(request: Request) -> Any:
    from hive.playbook import RecordsError

    _only(request)
    m = parse_manual(await _body(request))
    try:
        return await run(request, m)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    except RecordsError as e:
        raise ApiError(503, str(e)) from None


async def approve(request: Request) -> Any:
    return await _decide(request, "approve")


async def deny(request: Request) -> Any:
    return await _decide(request, "deny")


async def _decide(request: Request, verb: str) -> Any:
    from hive.playbook import RecordsError

    _only(request)
    d = parse_decision(await _body(request))
    try:
        return await decide(request, request.path_params["id"], verb, d.why)
    except RecordsError as e:
        raise ApiError(404 if str(e).startswith("no action") else 409, str(e)) from None


async def rules(request: Request) -> Any:
    from ._pages import rule_folders

    _only(request)
    folders = rule_folders(request)
    return await _read(request, lambda store: read.rules(store, folders))


async def playbooks(request: Request) -> Any:
    from ._pages import playbook_folders

    _only(request)
    folders = playbook_folders(request)
    return await _read(request, lambda store: read.playbooks(store, folders))


# -- the table: router and OpenAPI from one list ----------------------------------------------


@dataclass(frozen=True)
class ApiRoute:
    path: str
    endpoint: Callable[[Request], Awaitable[Any]]
    returns: Any
    summary: str
    method: str = "GET"
    role: str = "viewer"
    query: type | tuple[str, ...] = ()
    """The query parameters: a Struct whose fields they are, or their names."""
    body: type | None = None
    """What a POST takes as its JSON body."""
    conflict: str = ""
    """When it answers 409."""


_NOT_PENDING = "the action is not awaiting approval"
ROUTES = [
    ApiRoute("/api/overview", overview, read.Overview, "Agents online, alerts by level over 24 h, top rules, "
             "actions pending"),
    ApiRoute("/api/alerts", alerts, read.AlertPage, "Alerts, newest first; pass `next` as `before` for the "
             "next page", query=read.AlertQuery),
    ApiRoute("/api/alerts/{id}", alert, read.AlertDetail, "An alert with its events and its actions"),
    ApiRoute("/api/alerts/{id}/tree", tree, read.ProcessTree, "The process tree of the alert's process"),
    ApiRoute("/api/incidents", incidents, list[read.IncidentRow], "Incidents, latest change first",
             query=("limit",)),
    ApiRoute("/api/incidents/{id}", incident, Incident, "An incident: its hosts, links and timeline"),
    ApiRoute("/api/incidents/{id}/triage", incident_triage, read.IncidentTriage, "An incident's AI triages "
             "(verdicts, or why there is none), newest first"),
    ApiRoute("/api/incidents/{id}/triage", request_triage, read.IncidentTriage, "Ask the hive's AI model for a "
             "triage of the incident (a redacted summary is sent to [ai] url); it comes within the model's time",
             method="POST", role="responder", conflict=_AI_OFF),
    ApiRoute("/api/events", events, read.EventPage, "Events, newest first (`before`), or after an id, oldest "
             "first (`after`)", query=read.EventQuery),
    ApiRoute("/api/agents", agents, list[read.AgentView], "Agents: state, versions, spool, drops, last seen"),
    ApiRoute("/api/actions", actions, read.Actions, "Actions awaiting approval, the others newest first, the "
             "audit trail", query=("state", "limit")),
    ApiRoute("/api/actions/{id}", action, ActionDetail, "An action and its audit trail"),
    ApiRoute("/api/actions", run_action, read.ActionView, "Run an action by hand on an agent: kill_process "
             "(pid, tree), block_connect (address, ttl), isolate_host (ttl), collect_evidence (pid); the hive "
             "checks it as a playbook's step (never init, the agent itself or the hive's addresses) and sends it "
             "within a second or two; a refusal is a 400 with the reason", method="POST", role="responder",
             body=ManualAction),
    ApiRoute("/api/actions/{id}/approve", approve, read.ActionView, "Approve an action awaiting approval",
             method="POST", role="responder", body=Decision, conflict=_NOT_PENDING),
    ApiRoute("/api/actions/{id}/deny", deny, read.ActionView, "Deny an action awaiting approval (body "
             '`{"why": "..."}` optional)', method="POST", role="responder", body=Decision, conflict=_NOT_PENDING),
    ApiRoute("/api/rules", rules, read.Rules, "Sigma rules loaded and not loaded (with the reason), hits"),
    ApiRoute("/api/playbooks", playbooks, read.Playbooks, "Playbooks loaded and not loaded, actions made"),
]


def _wrap(r: ApiRoute) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return _json(await r.endpoint(request))
        except read.QueryError as e:
            return _json(Error(error=f"bad query: {e}"), 400)
        except ApiError as e:
            return _json(Error(error=str(e)), e.status)
        except StoreError as e:
            return _json(Error(error=f"the store cannot be read now: {e}"), 503)

    endpoint.__name__ = r.endpoint.__name__
    return allow(r.role)(endpoint)


def _param(name: str) -> dict[str, Any]:
    """A query parameter as it is sent (``_read`` parses it): empty means any."""
    enums = {"level": read.LEVELS, "kind": wire.EVENT_KINDS, "verdict": read._VERDICTS, "state": read.ACTION_STATES}
    if name in enums:
        return {"type": "string", "enum": ["", *enums[name]]}
    if name == "limit":
        return {"type": "integer", "minimum": 1, "maximum": read.MAX_PAGE}
    if name in ("before", "after", "pid"):
        return {"type": "integer", "minimum": 0}
    if name == "since":
        return {"type": "string", "description": "how long ago (30s, 10m, 2h, 1d) or an ISO 8601 time"}
    return {"type": "string", "maxLength": read._TEXT}


def _error(why: str) -> dict[str, Any]:
    return {"description": why, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``ROUTES``."""
    returns = [r.returns for r in ROUTES] + [Error, Decision, ManualAction]
    schemas, components = msgspec.json.schema_components(returns, ref_template="#/components/schemas/{name}")
    by_type = dict(zip(returns, schemas))
    paths: dict[str, Any] = {}
    for r in ROUTES:
        params: list[dict[str, Any]] = []
        if "{id}" in r.path:
            params.append({"name": "id", "in": "path", "required": True, "schema": {"type": "string"}})
        if isinstance(r.query, tuple):
            params += [{"name": q, "in": "query", "schema": _param(q)} for q in r.query]
        else:
            params += [{"name": name, "in": "query", "schema": _param(name)} for name in r.query.__struct_fields__]
        errors = {str(code): _error(why) for code, why in (
            (400, "a bad parameter or body"), (401, "no or unknown token"), (403, f"needs the {r.role} role"),
            (404, "not found"))}
        op: dict[str, Any] = {
            "summary": r.summary, "operationId": r.endpoint.__name__, "parameters": params,
            "security": [{"bearer": []}], "x-role": r.role,
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": by_type[r.returns]}}},
                          **errors},
        }
        if r.body is not None:
            op["requestBody"] = {"required": r.body is not Decision, "content": {"application/json": {
                "schema": by_type[r.body]}}}
        if r.conflict:
            op["responses"]["409"] = _error(r.conflict)
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "SENTINEL IMMUNE console API", "version": "1",
                 "description": "The hive's alerts, incidents, events, agents, actions, rules and playbooks. "
                                "Authenticate with `Authorization: Bearer TOKEN` (immune-node users token NAME)."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


_OPENAPI: bytes | None = None


@allow("viewer")
async def openapi_json(request: Request) -> Response:
    global _OPENAPI
    if _OPENAPI is None:
        _OPENAPI = _encode(openapi())
    return Response(_OPENAPI, media_type="application/json")


def routes() -> list:
    return [Route("/api/openapi.json", openapi_json)] + [
        Route(r.path, _wrap(r), methods=[r.method]) for r in ROUTES]
