"""Accepting a novelty alert into its workload's profile from the console:
one button on the alert's page, for a responder; the items come from the
stored alert, and the hive sends ``update_profile`` to the agent."""

from __future__ import annotations

import re
import time

import wire
from hive import Ingest
from hive.playbook import Records
from hive.sigma import RuleEngine
from test_console_pages import client, console, login  # noqa: F401  (console is a fixture)

from tests.agent.test_profile import SVC, Clock, learned


def novelty(console) -> wire.Alert:
    p = learned(Clock())
    src = wire.Connect(pid=5000, time=time.time_ns(), family=2, address="203.0.113.9", port=4444, **SVC)
    events = p.observe([src])
    for e in events:
        e.agent = "web1"
    [alert] = RuleEngine().process_batch(events)
    console.store.ingest([Ingest(agent="web1", stream="novel", seq=1, events=events)], [alert])
    return alert


async def test_a_responder_accepts_a_novelty_alert_with_one_button(console):
    alert = novelty(console)
    async with client(console) as c:
        csrf = await login(c, "vera")
        page = (await c.get(f"/alerts/{alert.id}")).text
        assert "Accept into the profile" not in page  # a viewer may not
        assert (await c.post(f"/alerts/{alert.id}/accept", data={"csrf": csrf})).status_code == 403
    async with client(console) as c:
        csrf = await login(c, "rick")
        page = (await c.get(f"/alerts/{alert.id}")).text
        assert "Accept into the profile" in page and "the profile held" in page
        assert 'action="/alerts/al-1/accept"' not in (await c.get("/alerts/al-1")).text  # not a novelty alert
        assert (await c.post(f"/alerts/{alert.id}/accept", data={})).status_code == 403  # no CSRF token
        r = await c.post(f"/alerts/{alert.id}/accept", data={"csrf": csrf, "workload": "x", "accept": "exec\t/bin/sh"})
        assert r.status_code == 303 and re.match(r"/actions#action-a-", r.headers["location"])
        assert (await c.post("/alerts/al-1/accept", data={"csrf": csrf})).status_code == 400
        assert (await c.post("/alerts/nope/accept", data={"csrf": csrf})).status_code == 404
    [row] = [a for a in Records(console.store.db).actions() if a.action == "update_profile"]
    assert (row.agent, row.alert, row.state) == ("web1", alert.id, "requested")
    assert row.params == {"workload": "unit:web.service", "accept": ["connect\ttcp\t203.0.113.9\t4444"]}
    assert row.reason == "run by rick: accepted into the profile"
