"""The console's pages: server-rendered templates over the read model
(``_read``), kept live by server-sent events (``_live``), and the forms
that change anything: approve and deny an action, run one by hand."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

import wire
from hive._store import StoreError
from hive.present import ago

from . import _read as read
from ._auth import allow, read_form, refuse, role_allows, safe_next
from ._graph import incident_svg
from ._live import live_alerts, live_changes, live_events
from ._templates import templates


def _ns(value: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value / 1e9)) if value else ""


def _ts(value: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) if value else ""


def _errno(result: int) -> str:
    """A call's negative errno by its name (-1: EPERM)."""
    return errno.errorcode.get(-result, str(result)) if result < 0 else str(result)


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items() if k != "alert")


templates.env.filters.update(ns=_ns, ts=_ts, ago=ago, params=_params, errno=_errno, basename=os.path.basename)


def _page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    user = request.state.user
    context.update(can_respond=role_allows(user.role, "responder"), levels=read.LEVELS)
    return templates.TemplateResponse(request, name, context, status_code=status)


def _args(request: Request):
    """``args(before=...)``: this page's query with some parameters replaced
    (None: removed), for the pager's links."""
    def args(**change: Any) -> str:
        params = {k: v for k, v in request.query_params.items() if v}
        for k, v in change.items():
            if v is None:
                params.pop(k, None)
            else:
                params[k] = str(v)
        return urlencode(params)
    return args


def _live_url(request: Request, path: str, mark: int) -> str:
    """The stream of what comes after ``mark`` under this page's filters."""
    params = {k: v for k, v in request.query_params.items() if v and k not in ("before", "after", "limit")}
    return f"{path}?" + urlencode({**params, "after": mark})


def _bad_query(request: Request, e: read.QueryError) -> Response:
    return refuse(request, 400, f"bad query: {e}")


def rule_folders(request: Request) -> list[Path]:
    from hive.sigma import rule_folders as folders

    cfg = request.app.state.console.config
    return folders(cfg.data_dir, cfg.hive.rules)


def playbook_folders(request: Request) -> list[Path]:
    from hive.playbook import DEFAULT_PLAYBOOKS

    return [DEFAULT_PLAYBOOKS, *map(Path, request.app.state.console.config.hive.playbooks)]


# -- the pages ---------------------------------------------------------------------------


@allow("viewer")
async def overview(request: Request) -> Response:
    o = await request.app.state.console.read(read.overview)
    return _page(request, "overview.html", o=o, chart=level_chart(o))


def level_chart(o: read.Overview) -> str:
    """Stacked bars of alerts by level per bucket, as SVG attributes only
    (the page's content security policy allows no inline style)."""
    width, height, gap = 720, 150, 2
    top = max([sum(b.levels.values()) for b in o.buckets] + [1])
    bar = width / max(len(o.buckets), 1)
    out = [f'<svg class="chart" viewBox="0 0 {width} {height + 14}" preserveAspectRatio="none" role="img" '
           f'aria-label="alerts by level per {o.bucket_seconds // 60} minutes">']
    for i, b in enumerate(o.buckets):
        y = float(height)
        for level in read.LEVELS:
            n = b.levels.get(level, 0)
            if not n:
                continue
            h = n / top * (height - 4)
            y -= h
            out.append(f'<rect class="{level}" x="{i * bar + gap:.1f}" y="{y:.1f}" width="{bar - 2 * gap:.1f}" '
                       f'height="{h:.1f}"><title>{_ns(b.start)}: {n} {level}</title></rect>')
        if i % 4 == 0:
            hour = time.strftime("%H:%M", time.gmtime(b.start / 1e9))
            out.append(f'<text x="{i * bar + gap:.1f}" y="{height + 12}">{hour}</text>')
    out.append("</svg>")
    return "".join(out)


@allow("viewer")
async def alerts(request: Request) -> Response:
    try:
        q = read.alert_query(request.query_params)
    except read.QueryError as e:
        return _bad_query(request, e)
    page = await request.app.state.console.read(lambda store: read.alerts(store, q))
    live = None
    if not q.before:
        # The first page grows live: rows newer than its newest come by SSE.
        mark = page.items[0].seq if page.items else await request.app.state.console.read(read.latest_alert)
        live = _live_url(request, "/live/alerts", mark)
    return _page(request, "alerts.html", q=q, page=page, live=live, since=request.query_params.get("since", ""),
                 args=_args(request))


@allow("viewer")
async def alert(request: Request) -> Response:
    alert_id = request.path_params["id"]
    detail = await request.app.state.console.read(lambda store: read.alert(store, alert_id))
    if detail is None:
        return refuse(request, 404, f"no alert {alert_id!r}")
    return _page(request, "alert.html", a=detail.alert, detail=detail,
                 events=[_event_view(e) for e in detail.alert.events])


def _event_view(e: Any) -> dict[str, Any]:
    row = read._row(0, e)
    return {"time": e.time, "kind": row.kind, "verdict": e.verdict, "pid": e.pid, "ppid": e.ppid, "user": e.user,
            "uid": e.uid, "image": row.image, "summary": row.summary}


@allow("viewer")
async def tree(request: Request) -> Response:
    alert_id = request.path_params["id"]

    def both(store: Any) -> tuple[Any, Any]:
        return read.alert(store, alert_id), read.alert_process(store, alert_id)

    detail, t = await request.app.state.console.read(both)
    if detail is None:
        return refuse(request, 404, f"no alert {alert_id!r}")
    base = min([n.depth for n in t.nodes] + [0])
    return _page(request, "tree.html", tree=t, base=base, alert_id=alert_id, title=detail.alert.title)


@allow("viewer")
async def incidents(request: Request) -> Response:
    rows = await request.app.state.console.read(read.incidents)
    return _page(request, "incidents.html", rows=rows)


@allow("viewer")
async def incident(request: Request) -> Response:
    incident_id = request.path_params["id"]
    console = request.app.state.console
    enabled = bool(console.config.ai.url)

    def both(store: Any) -> tuple[Any, Any]:
        return read.incident(store, incident_id), read.incident_triage(store, incident_id, enabled)

    i, triage = await console.read(both)
    if i is None:
        return refuse(request, 404, f"no incident {incident_id!r}")
    return _page(request, "incident.html", i=i, svg=incident_svg(i), triage=triage)


@allow("responder")
async def triage(request: Request) -> Response:
    """POST /incidents/{id}/triage: ask the hive's AI model for a verdict,
    under the logged-in user's name; the ai actor sends the summary."""
    incident_id = request.path_params["id"]
    console = request.app.state.console
    await read_form(request)
    if not console.config.ai.url:
        return refuse(request, 409, "AI triage is off: the hive's [ai] url is not set")
    try:
        await console.write(lambda store: store.request_triage(incident_id, f"operator:{request.state.user.name}"))
    except StoreError as e:
        return refuse(request, 404 if "no incident" in str(e) else 503, str(e))
    return RedirectResponse(f"/incidents/{quote(incident_id, safe='')}#triage", status_code=303)


@allow("viewer")
async def agents(request: Request) -> Response:
    return _page(request, "agents.html", rows=await request.app.state.console.read(read.agents))


@allow("viewer")
async def agent(request: Request) -> Response:
    agent_id = request.path_params["id"]

    def both(store: Any) -> tuple[Any, Any]:
        found = [a for a in read.agents(store) if a.id == agent_id]
        return found, read.actions(store, limit=500, audit=0).recent if found else []

    found, acts = await request.app.state.console.read(both)
    if not found:
        return refuse(request, 404, f"no agent {agent_id!r}")
    return _page(request, "agent.html", a=found[0], acts=[x for x in acts if x.agent == agent_id][:50])


@allow("viewer")
async def actions(request: Request) -> Response:
    return await _actions(request)


async def _actions(request: Request, *, flash: str = "", flash_kind: str = "", status: int = 200) -> Response:
    state = request.query_params.get("state", "")
    if state and state not in read.ACTION_STATES:
        return _bad_query(request, read.QueryError(f"state: {state[:40]!r} is not one of "
                                                   f"{', '.join(read.ACTION_STATES)}"))
    acts = await request.app.state.console.read(lambda store: read.actions(store, state=state))
    return _page(request, "actions.html", status=status, acts=acts, states=read.ACTION_STATES, state=state,
                 flash=flash, flash_kind=flash_kind)


@allow("viewer")
async def action(request: Request) -> Response:
    action_id = request.path_params["id"]
    found = await request.app.state.console.read(lambda store: read.action(store, action_id))
    if found is None:
        return refuse(request, 404, f"no action {action_id!r}")
    return _page(request, "action.html", x=found[0], trail=found[1])


@allow("responder")
async def decide(request: Request) -> Response:
    """POST /actions/{id}/approve|deny: the decision in the response records
    under the logged-in user's name; the playbook actor carries it out."""
    from hive.playbook import RecordsError

    from ._actions import decide as record

    action_id, verb = request.path_params["id"], request.path_params["verb"]
    form = await read_form(request)
    back = safe_next(form.get("back")) if form.get("back") else "/actions"  # never another site
    if verb not in ("approve", "deny"):
        return refuse(request, 404, f"no such decision {verb[:20]!r}: approve or deny")
    try:
        await record(request, action_id, verb, form.get("why", ""))
    except RecordsError as e:
        return await _actions(request, flash=str(e), flash_kind="error", status=409)
    # Post/redirect/get: a reload does not send the decision again.
    return RedirectResponse(back, status_code=303)


_RUN_FIELDS = ("action", "agent", "alert", "pid", "tree", "address", "ttl")


@allow("responder")
async def run_action(request: Request) -> Response:
    """POST /actions: an operator's own action.  Without ``confirm=yes`` it
    is checked (as the hive will check it) and shown for confirmation, or
    refused with the reason; with it, it is recorded under the logged-in
    user's name and the playbook actor sends it."""
    from hive.playbook import Records, RecordsError, check_manual

    from ._actions import manual_from_form, run

    console = request.app.state.console
    form = await read_form(request)
    what, on, alert_id = form.get("action", "")[:40], form.get("agent", "")[:64], form.get("alert", "")[:64]
    back = f"/alerts/{quote(alert_id, safe='')}" if alert_id else f"/agents/{quote(on, safe='')}"
    try:
        m = manual_from_form(form)
        if form.get("confirm") != "yes":
            params = await console.read(lambda store: check_manual(
                m.action, m.agent, m.params(), m.ttl, agents=Records(store.db).agent_pids(),
                protected=console.protected))
            fields = {k: form[k] for k in _RUN_FIELDS if form.get(k)}
            return _page(request, "run.html", what=what, on=on, m=m, params=params, fields=fields, back=back)
        done = await run(request, m)
    except ValueError as e:
        return _page(request, "run.html", status=400, what=what, on=on, error=str(e), back=back)
    except RecordsError as e:
        return refuse(request, 503, str(e))
    # Post/redirect/get to the live list, where its result comes.
    return RedirectResponse(f"/actions#action-{done.id}", status_code=303)


@allow("responder")
async def accept_novelty(request: Request) -> Response:
    """POST /alerts/{id}/accept: what a novelty alert found goes into its
    workload's profile on the agent (issue 17): the items come from the
    alert as stored, never from the form."""
    from hive.playbook import Records, RecordsError

    console = request.app.state.console
    alert_id = request.path_params["id"]
    user = request.state.user.name

    def write(store: Any) -> str:
        detail = read.alert(store, alert_id)
        if detail is None:
            raise LookupError(f"no alert {alert_id!r}")
        a = detail.alert
        edge = next((e for e in a.events if type(e) is wire.Edge and e.novel), None)
        if edge is None:
            raise ValueError(f"alert {alert_id} is not a novelty alert: nothing to accept")
        return Records(store.db).run("update_profile", a.agent, {"workload": edge.workload, "accept": list(edge.novel)},
                                     by=user, why="accepted into the profile", alert=a.id,
                                     protected=console.protected).id

    try:
        done = await console.write(write)
    except LookupError as e:
        return refuse(request, 404, str(e))
    except ValueError as e:
        return refuse(request, 400, str(e))
    except RecordsError as e:
        return refuse(request, 503, str(e))
    return RedirectResponse(f"/actions#action-{done}", status_code=303)


@allow("viewer")
async def rules(request: Request) -> Response:
    folders = rule_folders(request)
    r = await request.app.state.console.read(lambda store: read.rules(store, folders))
    return _page(request, "rules.html", r=r)


@allow("viewer")
async def playbooks(request: Request) -> Response:
    folders = playbook_folders(request)
    p = await request.app.state.console.read(lambda store: read.playbooks(store, folders))
    return _page(request, "playbooks.html", p=p)


@allow("viewer")
async def events(request: Request) -> Response:
    try:
        q = read.event_query(request.query_params)
    except read.QueryError as e:
        return _bad_query(request, e)
    page = await request.app.state.console.read(lambda store: read.events(store, q))
    live = None
    if not q.before and not q.after:
        mark = page.items[0].id if page.items else await request.app.state.console.read(read.latest_event)
        live = _live_url(request, "/live/events", mark)
    return _page(request, "events.html", q=q, page=page, live=live, kinds=wire.EVENT_KINDS,
                 verdicts=read._VERDICTS, scan_limit=read.TEXT_SCAN, args=_args(request))


def _store_errors(endpoint: Any) -> Any:
    """A store that cannot be read now (locked too long, a full disk) is a
    503 with the reason, never a traceback."""
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except StoreError as e:
            return refuse(request, 503, f"the store cannot be read now: {e}")

    guarded.__name__ = endpoint.__name__
    return guarded


def routes() -> list:
    return [Route(r.path, _store_errors(r.endpoint), methods=r.methods) for r in _routes()]


def _routes() -> list[Route]:
    return [
        Route("/", overview),
        Route("/alerts", alerts),
        Route("/alerts/{id}", alert),
        Route("/alerts/{id}/tree", tree),
        Route("/alerts/{id}/accept", accept_novelty, methods=["POST"]),
        Route("/incidents", incidents),
        Route("/incidents/{id}", incident),
        Route("/incidents/{id}/triage", triage, methods=["POST"]),
        Route("/agents", agents),
        Route("/agents/{id}", agent),
        Route("/actions", actions),
        Route("/actions", run_action, methods=["POST"]),
        Route("/actions/{id}", action),
        Route("/actions/{id}/{verb:str}", decide, methods=["POST"]),
        Route("/rules", rules),
        Route("/playbooks", playbooks),
        Route("/events", events),
        Route("/live/alerts", live_alerts),
        Route("/live/events", live_events),
        Route("/live/changes", live_changes),
    ]
