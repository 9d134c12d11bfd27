"""The console's pages and JSON API in process (httpx over ASGI, no
sockets): every page renders the store's data, filters and paging work,
approve and deny record the logged-in user, bad query parameters and bodies
are a 400 with the reason, the live streams send new rows, and the OpenAPI
document describes every route."""

from __future__ import annotations

import json
import re

import httpx
import pytest
import trio

import wire
from hive import AgentSeen, Ingest, Store
from hive.console import Console, make_app
from hive.console import _api, _live
from hive.console._auth import SESSION_COOKIE
from hive.console._users import Users
from hive.correlate import Incident
from hive.playbook import PlaybookEngine, Records, parse_playbook
from node import Config
from test_console_read import PB

PASSWORD = "correct horse battery"
T0 = 1_700_000_000 * 10**9


def fill(store: Store) -> None:
    evs = [wire.Exec(time=T0, pid=100, ppid=1, filename="/bin/bash", argv=["bash"], user="alice"),
           wire.Fork(time=T0 + 1, pid=100, child_pid=200),
           wire.Exec(time=T0 + 2, pid=200, ppid=100, filename="/tmp/evil", argv=["/tmp/evil"], verdict="block",
                     result=-1, user="alice")]
    store.ingest([Ingest(agent="web1", events=evs)])
    alerts = [wire.Alert(id=f"al-{i}", rule_id="r1" if i % 2 else "r2", title=f"Exec <from> /tmp #{i}",
                         level="high" if i % 2 else "low", agent="web1", time=T0 + i, events=[evs[2]])
              for i in range(1, 6)]
    store.ingest([], alerts=alerts, incidents=[Incident(
        id="inc-1", title="Lateral", opened=1, updated=2, agents=["web1", "db1"], edges=[("web1", "db1", 22)],
        alerts=["al-1"])])
    store.agents_seen([AgentSeen(agent="web1", time=T0, hello=wire.Hello(agent="web1", hostname="web1.lan"))])
    engine = PlaybookEngine([parse_playbook(PB)], clock=lambda: 1000.0)
    records = Records(store.db)
    for a in alerts[:3:2]:  # al-1 and al-3: two kills awaiting approval
        records.write(engine.on_alert(a))


@pytest.fixture
def console(store_location, tmp_path):
    store = Store(store_location)
    fill(store)
    users = Users(store)
    users.add("vera", "viewer", PASSWORD, actor="t")
    users.add("rick", "responder", PASSWORD, actor="t")
    cfg = Config()
    cfg.node.data = str(tmp_path)
    console = Console(cfg, store_location, run_dir=tmp_path / "run")
    console.tokens = {"vera": users.new_token("vera", actor="t")[1], "rick": users.new_token("rick", actor="t")[1]}
    console.store = store
    yield console
    console.close()
    store.close()


def client(console, user: str | None = None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {console.tokens[user]}"} if user else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app(console), client=("10.0.0.7", 5555)),
                             base_url="https://console.test", headers=headers)


async def login(c: httpx.AsyncClient, name: str) -> str:
    page = await c.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = await c.post("/login", data={"csrf": csrf, "name": name, "password": PASSWORD, "next": "/"})
    assert r.status_code == 303, r.text
    from hive.console._secrets import csrf_for

    return csrf_for(c.cookies[SESSION_COOKIE])


async def test_every_page_renders_the_store_for_a_viewer(console):
    async with client(console) as c:
        await login(c, "vera")
        pages = {
            "/": ["agents online", "Top rules"],
            "/alerts": ["Exec &lt;from&gt; /tmp #5", 'sse-connect="/live/alerts?after='],
            "/alerts?level=low": ["#4", "#2"],
            "/alerts/al-1": ["/tmp/evil", "kill_process", "Process tree"],
            "/alerts/al-1/tree": ["bash", "/tmp/evil", "verdict-block"],
            "/incidents": ["Lateral"],
            "/incidents/inc-1": ["<svg", "db1", "22"],
            "/agents": ["web1.lan", "online"],
            "/actions": ["Awaiting approval (2)", "kill_process"],
            "/rules": ["Loaded"],
            "/playbooks": ["Loaded"],
            "/events": ["/tmp/evil", 'sse-connect="/live/events?after='],
            "/events?verdict=block&text=EVIL": ["/tmp/evil"],
        }
        for path, wanted in pages.items():
            r = await c.get(path)
            assert r.status_code == 200, (path, r.text[:300])
            for w in wanted:
                assert w in r.text, (path, w)
        # A viewer sees no approve button.
        assert "button class=\"approve\"" not in (await c.get("/actions")).text
        low = (await c.get("/alerts?level=low")).text
        assert "#5" not in low and "#3" not in low
        assert (await c.get("/alerts/nope")).status_code == 404
        r = await c.get("/alerts?level=severe")
        assert r.status_code == 400 and "level: &#x27;severe&#x27; is not one of" in r.text


async def test_paging_alerts_by_cursor(console):
    async with client(console, "vera") as c:
        first = (await c.get("/api/alerts", params={"limit": 2})).json()
        assert [a["id"] for a in first["items"]] == ["al-5", "al-4"]
        second = (await c.get("/api/alerts", params={"limit": 2, "before": first["next"]})).json()
        assert [a["id"] for a in second["items"]] == ["al-3", "al-2"]
    async with client(console) as c:
        await login(c, "vera")
        page = (await c.get("/alerts", params={"limit": 2})).text
        older = re.search(r'href="\?([^"]+)" rel="next"', page).group(1).replace("&amp;", "&")
        assert "before=" in older and "#3" in (await c.get(f"/alerts?{older}")).text


async def test_a_responder_approves_by_form_with_csrf_and_the_trail_names_them(console):
    pending = read_pending(console)
    async with client(console) as c:
        csrf = await login(c, "rick")
        page = (await c.get("/actions")).text
        assert f'action="/actions/{pending[0]}/approve"' in page and "hx-confirm" in page
        refused = await c.post(f"/actions/{pending[0]}/approve", data={"back": "/actions"})
        assert refused.status_code == 403  # no CSRF token
        r = await c.post(f"/actions/{pending[0]}/approve", data={"csrf": csrf, "back": "/alerts/al-1"})
        assert r.status_code == 303 and r.headers["location"] == "/alerts/al-1"
        again = await c.post(f"/actions/{pending[0]}/approve", data={"csrf": csrf})
        assert again.status_code == 409 and "not awaiting approval" in again.text
        r = await c.post(f"/actions/{pending[1]}/deny", headers={"x-csrf-token": csrf},
                         data={"why": "false positive", "back": "/\\evil.example/"})
        assert r.status_code == 303 and r.headers["location"] == "/"  # never to another site
    rows = {a.id: a for a in Records(console.store.db).actions()}
    assert rows[pending[0]].state == "approved" and rows[pending[1]].state == "denied"
    trail = Records(console.store.db).audit(limit=2)
    assert {t.actor for t in trail} == {"operator:rick"} and "false positive" in {t.why for t in trail}


async def test_a_viewer_cannot_approve(console):
    pending = read_pending(console)
    async with client(console) as c:
        csrf = await login(c, "vera")
        r = await c.post(f"/actions/{pending[0]}/approve", data={"csrf": csrf})
        assert r.status_code == 403
    async with client(console, "vera") as c:
        assert (await c.post(f"/api/actions/{pending[0]}/approve")).status_code == 403


def read_pending(console) -> list[str]:
    return [a.id for a in reversed(Records(console.store.db).actions(states=["pending_approval"]))]


async def test_the_api_returns_the_read_models_structs_and_approves_with_a_token(console):
    pending = read_pending(console)
    async with client(console, "rick") as c:
        o = (await c.get("/api/overview")).json()
        assert o["alerts_total"] == 5 and o["actions_pending"] == 2 and o["agents_online"] == 1
        detail = (await c.get("/api/alerts/al-1")).json()
        assert detail["alert"]["events"][0]["filename"] == "/tmp/evil"
        tree = (await c.get("/api/alerts/al-1/tree")).json()
        assert [n["pid"] for n in tree["nodes"]] == [1, 100, 200]
        assert (await c.get("/api/incidents/inc-1")).json()["edges"] == [["web1", "db1", 22]]
        assert [i["id"] for i in (await c.get("/api/incidents")).json()] == ["inc-1"]
        ev = (await c.get("/api/events", params={"kind": "exec", "limit": 1})).json()
        assert [e["summary"] for e in ev["items"]] == ["/tmp/evil"] and ev["next"]
        assert (await c.get("/api/agents")).json()[0]["hostname"] == "web1.lan"
        assert len((await c.get("/api/actions")).json()["pending"]) == 2
        assert (await c.get("/api/rules")).json()["loaded"]
        assert any(p["id"] == "exec-from-temp" or p["path"] for p in (await c.get("/api/playbooks")).json()["loaded"])
        r = await c.post(f"/api/actions/{pending[0]}/approve")
        assert r.status_code == 200 and r.json()["state"] == "approved"
        r = await c.post(f"/api/actions/{pending[1]}/deny", content=b'{"why": "benign"}')
        assert r.json()["state"] == "denied"
        trail = (await c.get(f"/api/actions/{pending[1]}")).json()["audit"]
        assert trail[0]["actor"] == "operator:rick" and trail[0]["why"] == "benign"
        r = await c.post(f"/api/actions/{pending[1]}/deny")
        assert r.status_code == 409 and "not awaiting approval" in r.json()["error"]
        assert (await c.post("/api/actions/nope/approve")).status_code == 404
        assert (await c.get("/api/alerts/nope")).status_code == 404


@pytest.mark.parametrize("path, reason", [
    ("/api/alerts?level=severe", "level: 'severe' is not one of"),
    ("/api/alerts?limit=100000", "limit: 100000 is not between 1 and 500"),
    ("/api/alerts?before=-1", "before: '-1' is not a whole number"),
    ("/api/alerts?since=tomorrow", "since 'tomorrow'"),
    ("/api/alerts?colour=red", "unknown parameter 'colour'"),
    ("/api/events?kind=sing", "kind: 'sing' is not one of"),
    ("/api/events?pid=x", "pid: 'x' is not a whole number"),
    ("/api/events?text=%00", "control characters"),
    ("/api/agents?x=1", "this route takes none"),
    ("/api/actions?state=gone", "state: 'gone' is not one of"),
    ("/api/incidents?limit=0", "limit: 0 is not between"),
])
async def test_bad_query_parameters_are_a_400_with_the_reason(console, path, reason):
    async with client(console, "vera") as c:
        r = await c.get(path)
        assert r.status_code == 400 and reason in r.json()["error"], r.text


@pytest.mark.parametrize("body, status, reason", [
    (b"{", 400, "body:"),
    (b'{"why": 3}', 400, "Expected `str`"),
    (b'{"who": "me"}', 400, "unknown field"),
    (b'{"why": "' + b"x" * 600 + b'"}', 400, "why: at most 500"),
    (b"x" * 5000, 413, "larger than 4096"),
])
async def test_bad_decision_bodies_are_refused(console, body, status, reason):
    pending = read_pending(console)
    async with client(console, "rick") as c:
        r = await c.post(f"/api/actions/{pending[0]}/deny", content=body)
        assert r.status_code == status and reason in r.json()["error"], r.text
    assert read_pending(console) == pending


async def test_a_store_that_cannot_be_read_is_a_503_with_the_reason(console, monkeypatch):
    from hive import StoreError
    from hive.console import _read

    def locked(*args, **kw):
        raise StoreError("database is locked")

    monkeypatch.setattr(_read, "alerts", locked)
    async with client(console, "vera") as c:
        r = await c.get("/api/alerts")
        assert r.status_code == 503 and r.json()["error"] == "the store cannot be read now: database is locked"
    async with client(console) as c:
        await login(c, "vera")
        r = await c.get("/alerts")
        assert r.status_code == 503 and "database is locked" in r.text


async def test_anonymous_api_is_401_and_pages_redirect(console):
    async with client(console) as c:
        assert (await c.get("/api/alerts")).status_code == 401
        assert (await c.get("/api/openapi.json")).status_code == 401
        r = await c.get("/alerts")
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")


async def test_openapi_describes_every_route_and_every_reference_resolves(console):
    async with client(console, "vera") as c:
        doc = (await c.get("/api/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    served = {(r.path, r.method.lower()) for r in _api.ROUTES}
    assert {(p, m) for p, ops in doc["paths"].items() for m in ops} == served
    names = set(doc["components"]["schemas"])
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(doc)))
    assert refs <= names and {"AlertPage", "ProcessTree", "Error"} <= names
    params = {p["name"]: p["schema"] for p in doc["paths"]["/api/alerts"]["get"]["parameters"]}
    assert {"level", "rule", "agent", "since", "text", "before", "limit"} <= set(params)
    assert params["since"]["type"] == "string" and params["limit"]["maximum"] == 500


async def stream(console, path: str, query: str, until: bytes, act, headers=()) -> str:
    """What ``path?query`` streams while ``act()`` writes to the store, until
    ``until`` is in it; then the client goes away, and the app must return."""
    app = make_app(console)
    got = bytearray()
    gone = trio.Event()

    async def receive():
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        got.extend(message.get("body", b""))
        if until in got:
            gone.set()

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
             "query_string": query.encode(),
             "headers": [(b"authorization", f"Bearer {console.tokens['vera']}".encode()), *headers],
             "scheme": "https", "server": ("console.test", 443), "client": ("10.0.0.7", 5555),
             "root_path": "", "http_version": "1.1", "asgi": {"version": "3.0", "spec_version": "2.4"}}
    # The app returns on the disconnect, not at its next poll or keepalive.
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app, scope, receive, send)
            await trio.sleep(0.2)
            act()
    text = got.decode()
    assert all(line.startswith(("event:", "id:", "data:", ":")) or not line for line in text.split("\n"))
    return text


async def test_live_alerts_stream_sends_new_rows_matching_the_filter(console, monkeypatch):
    monkeypatch.setattr(_live, "POLL", 0.05)
    latest = console.store.db.execute("SELECT max(rowid) FROM alerts").fetchone()[0]

    def act():
        console.store.ingest([], alerts=[wire.Alert(id="al-low", rule_id="r2", title="quiet", level="low", time=T0)])
        console.store.ingest([], alerts=[wire.Alert(id="al-new", rule_id="r1", title="Fresh <one>", level="high",
                                                    time=T0)])

    text = await stream(console, "/live/alerts", f"level=high&after={latest}", b"al-new", act)
    assert "event: alert\n" in text and "Fresh &lt;one&gt;" in text and "al-low" not in text
    assert text.count("al-new") == 2  # the row's link and its data-href: sent once


async def test_a_reconnecting_stream_starts_after_the_last_event_id(console, monkeypatch):
    monkeypatch.setattr(_live, "POLL", 0.05)
    first = console.store.db.execute("SELECT min(rowid) FROM alerts").fetchone()[0]
    latest = console.store.db.execute("SELECT max(rowid) FROM alerts").fetchone()[0]

    def act():
        console.store.ingest([], alerts=[wire.Alert(id="al-after", rule_id="r1", title="after", time=T0)])

    text = await stream(console, "/live/alerts", f"after={first}", b"al-after", act,
                        headers=[(b"last-event-id", str(latest).encode())])
    assert "al-5" not in text and f"id: {latest + 1}\n" in text  # the page's rows are not sent again
    async with client(console, "vera") as c:
        r = await c.get("/live/alerts", headers={"last-event-id": "x"})
        assert r.status_code == 400 and "Last-Event-ID" in r.text


async def test_live_events_stream_sends_the_tail_newest_first(console, monkeypatch):
    monkeypatch.setattr(_live, "POLL", 0.05)
    latest = console.store.db.execute("SELECT max(id) FROM events").fetchone()[0]

    def act():
        console.store.ingest([Ingest(agent="web1", events=[
            wire.Exec(time=T0, pid=7, argv=["first-one"]), wire.Exec(time=T0, pid=8, argv=["second-one"]),
            wire.Open(time=T0, pid=9, path="/etc/other")])])

    text = await stream(console, "/live/events", f"kind=exec&after={latest}", b"first-one", act)
    assert "event: event\n" in text and text.index("second-one") < text.index("first-one")
    assert "/etc/other" not in text


async def test_live_changes_says_changed_when_an_action_moves(console, monkeypatch):
    monkeypatch.setattr(_live, "POLL", 0.05)
    pending = read_pending(console)
    text = await stream(console, "/live/changes", "", b"event: changed",
                        lambda: Records(console.store.db).approve(pending[0], "rick"))
    assert "event: changed\n" in text


async def test_a_stream_whose_store_fails_ends_cleanly():
    from hive import StoreError

    async def source():
        yield ": live\n\n"
        raise StoreError("database is locked")

    sent = []

    async def receive():
        await trio.sleep_forever()

    async def send(message):
        sent.append(message)

    with trio.fail_after(5):
        await _live.EventStream(source())({"type": "http"}, receive, send)
    assert [m.get("more_body") for m in sent[1:]] == [True, False]  # ended, not broken off


async def test_a_bad_live_query_is_a_400(console):
    async with client(console, "vera") as c:
        assert (await c.get("/live/alerts?after=x")).status_code == 400
        assert (await c.get("/live/events?kind=nope")).status_code == 400


async def test_the_incident_page_and_api_show_its_ai_triage_and_ask_for_one(console):
    verdict = {"severity": "critical", "techniques": ["T1021.004"], "explanation": "SSH from <web1> to db1",
               "playbook": "lateral-movement", "confidence": 0.85}
    console.store.add_triage("inc-1", state="failed", requested_by="auto", reason="the verdict is not JSON")
    console.store.add_triage("inc-1", state="done", requested_by="auto", model="qwen2.5", verdict=verdict,
                             seconds=2.3, calls=1)
    async with client(console) as c:
        csrf = await login(c, "rick")
        page = (await c.get("/incidents/inc-1")).text
        for wanted in ("critical", "confidence 0.85", "T1021.004", "from qwen2.5 in 2.3 s",
                       "SSH from &lt;web1&gt; to db1", "lateral-movement", "failed: the verdict is not JSON",
                       "AI triage is off"):
            assert wanted in page, wanted
        assert 'id="ask-triage"' not in page  # [ai] unset: nothing to ask
        r = await c.post("/incidents/inc-1/triage", data={"csrf": csrf})
        assert r.status_code == 409 and "AI triage is off" in r.text
        r = await c.post("/api/incidents/inc-1/triage", headers={"x-csrf-token": csrf})
        assert r.status_code == 409 and r.json() == {"error": "AI triage is off: the hive's [ai] url is not set"}
        assert console.store.triage_requests() == []
        console.config.ai.url, console.config.ai.model = "http://127.0.0.1:9/v1", "m"
        page = (await c.get("/incidents/inc-1")).text
        assert 'action="/incidents/inc-1/triage"' in page and "Ask the AI again" in page
        assert (await c.post("/incidents/inc-1/triage", data={})).status_code == 403  # no CSRF token
        r = await c.post("/incidents/inc-1/triage", data={"csrf": csrf})
        assert r.status_code == 303 and r.headers["location"] == "/incidents/inc-1#triage"
        assert "is on its way" in (await c.get("/incidents/inc-1")).text
    assert console.store.triage_requests() == [("inc-1", "operator:rick")]
    async with client(console, "vera") as c:
        t = (await c.get("/api/incidents/inc-1/triage")).json()
        assert t["enabled"] and t["pending"] and [x["state"] for x in t["triages"]] == ["done", "failed"]
        assert t["triages"][0]["techniques"] == ["T1021.004"] and t["triages"][0]["confidence"] == 0.85
        assert (await c.post("/api/incidents/inc-1/triage")).status_code == 403  # a viewer may not send data out
        assert (await c.get("/api/incidents/nope/triage")).status_code == 404
    async with client(console, "rick") as c:
        r = await c.post("/api/incidents/nope/triage")
        assert r.status_code == 404
        assert (await c.post("/api/incidents/inc-1/triage")).json()["pending"]
