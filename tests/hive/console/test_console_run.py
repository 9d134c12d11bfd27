"""Running an action by hand from the console, in process (httpx over
ASGI): a responder's request is checked and recorded under their name for
the playbook actor; a viewer gets 403; a form needs its CSRF token and a
confirmation; bad input is a 400 with the reason and writes nothing."""

from __future__ import annotations

import re

from hive.playbook import Records
from test_console_pages import client, console, login  # noqa: F401  (console is a fixture)


def manual_rows(console):
    return [a for a in Records(console.store.db).actions() if a.mode == "manual"]


async def test_a_viewer_cannot_run_an_action(console):
    async with client(console, "vera") as c:
        r = await c.post("/api/actions", json={"action": "kill_process", "agent": "web1", "pid": 200})
        assert r.status_code == 403 and "responder" in r.json()["error"]
    async with client(console) as c:
        csrf = await login(c, "vera")
        r = await c.post("/actions", data={"csrf": csrf, "action": "kill_process", "agent": "web1", "pid": "200",
                                           "confirm": "yes"})
        assert r.status_code == 403
        for page in ("/alerts/al-1", "/alerts/al-1/tree", "/agents/web1"):
            assert 'name="action" value="kill_process"' not in (await c.get(page)).text, page
    assert manual_rows(console) == []


async def test_a_responder_runs_a_kill_over_the_api_and_the_trail_names_them(console):
    async with client(console, "rick") as c:
        r = await c.post("/api/actions", json={"action": "kill_process", "agent": "web1", "pid": 200, "tree": True,
                                               "why": "reverse shell", "alert": "al-1"})
        assert r.status_code == 200, r.text
        view = r.json()
        assert (view["state"], view["mode"], view["params"], view["alert"]) == (
            "requested", "manual", {"pid": 200, "tree": True}, "al-1")
        listed = (await c.get("/api/actions", params={"state": "requested"})).json()["recent"]
        assert [a["id"] for a in listed] == [view["id"]]
    [row] = manual_rows(console)
    assert Records(console.store.db).requested() == [(row.id, "run", "rick", "reverse shell")]
    assert Records(console.store.db).audit(action_id=row.id)[0].actor == "operator:rick"


async def test_bad_api_requests_are_a_400_with_the_reason_and_reach_nobody(console):
    console.protected = ("10.0.0.1",)
    bad = [
        ({"action": "kill_process", "agent": "web1", "pid": 0}, "pid must be a positive integer"),
        ({"action": "kill_process", "agent": "web1", "pid": 1}, "pid 1 is init"),
        ({"action": "kill_process", "agent": "db9", "pid": 5}, "agent 'db9' is unknown or revoked"),
        ({"action": "block_connect", "agent": "web1", "address": "10.0.0.0/8", "ttl": 60}, "covers the hive's address"),
        ({"action": "block_connect", "agent": "web1", "address": "nope"}, "does not appear to be"),
        ({"action": "isolate_host", "agent": "web1", "ttl": -3}, "ttl must be"),
        ({"action": "isolate_host", "agent": "web1", "pid": 5}, "isolate_host takes no parameters"),
        ({"action": "notify", "agent": "web1"}, "cannot be run by hand"),
        ({"action": "kill_process", "agent": "web1", "pid": "5"}, "Expected `int | null`, got `str`"),
        ({"action": "kill_process", "agent": "web1", "pid": 5, "signal": "TERM"}, "unknown field `signal`"),
        ({"agent": "web1", "pid": 5}, "missing required field `action`"),
    ]
    async with client(console, "rick") as c:
        for body, why in bad:
            r = await c.post("/api/actions", json=body)
            assert r.status_code == 400 and why in r.json()["error"], (body, r.text)
            assert "\n" not in r.json()["error"]
        for raw in (b"", b"{", b"[]", b"\xff"):
            r = await c.post("/api/actions", content=raw)
            assert r.status_code == 400 and r.json()["error"].startswith("body: "), raw
        assert (await c.post("/api/actions", content=b" " * 5000)).status_code == 413
        assert (await c.post("/api/actions?x=1", json=bad[0][0])).status_code == 400
    assert manual_rows(console) == []


async def test_a_responder_runs_an_action_by_form_after_a_confirmation(console):
    async with client(console) as c:
        csrf = await login(c, "rick")
        page = (await c.get("/alerts/al-1")).text
        assert 'name="action" value="kill_process"' in page
        assert 'name="pid" inputmode="numeric" size="8" value="200"' in page
        tree = (await c.get("/alerts/al-1/tree")).text
        assert tree.count('value="kill_process"') >= 3  # the panel, and one per process
        assert 'value="isolate_host"' in (await c.get("/agents/web1")).text
        form = {"action": "kill_process", "agent": "web1", "pid": "200", "tree": "on", "alert": "al-1"}
        assert (await c.post("/actions", data=form)).status_code == 403  # no CSRF token
        r = await c.post("/actions", data={**form, "csrf": csrf})
        assert r.status_code == 200 and 'id="confirm"' in r.text and "pid=200 tree=True" in r.text
        assert manual_rows(console) == []  # nothing until confirmed
        hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', r.text))
        r = await c.post("/actions", data={**hidden, "csrf": csrf, "why": "by hand"})
        assert r.status_code == 303 and r.headers["location"].startswith("/actions#action-a-")
        [row] = manual_rows(console)
        assert (row.action, row.agent, row.params, row.alert, row.reason) == (
            "kill_process", "web1", {"pid": 200, "tree": True}, "al-1", "run by rick: by hand")
        assert row.id in (await c.get("/actions")).text
        for change, why in (({"pid": "0"}, "pid must be a positive integer"), ({"pid": "12x"}, "is not a number"),
                            ({"agent": "nobody"}, "unknown or revoked"),
                            ({"action": "unblock"}, "cannot be run by hand")):
            for confirm in ("", "yes"):
                r = await c.post("/actions", data={**form, **change, "csrf": csrf, "confirm": confirm})
                assert r.status_code == 400 and 'id="refused"' in r.text and why in r.text, (change, r.text[-600:])
    assert len(manual_rows(console)) == 1


async def test_the_openapi_document_describes_the_manual_action(console):
    async with client(console, "vera") as c:
        doc = (await c.get("/api/openapi.json")).json()
    op = doc["paths"]["/api/actions"]["post"]
    assert op["x-role"] == "responder" and op["requestBody"]["required"] is True
    assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ManualAction"}
    assert set(doc["components"]["schemas"]["ManualAction"]["properties"]) >= {"action", "agent", "pid", "ttl"}
    assert "409" in doc["paths"]["/api/actions/{id}/approve"]["post"]["responses"]
    assert doc["paths"]["/api/actions"]["get"]["x-role"] == "viewer"
