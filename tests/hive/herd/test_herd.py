"""Herd's plain parts: indicators built and signed, peers' objects checked
(signature, schema, pattern, expiry), bundles, envelopes and MISP feeds
read, one entry per pattern with every peer, revocation, the blocks the
herd asks for going through the playbook engine's checks, and matching."""

from __future__ import annotations

import json

import msgspec
import pytest

import fleet
import wire
from hive import Store
from hive.herd import (
    HerdError, Intel, Matcher, build, check, check_all, matchable, objects_of, parse_document, parse_pattern, sign,
)
from hive.herd._stix import Fact, Pulled, Refused
from hive.playbook import Records
from hive.playbook._engine import PlaybookEngine

NOW = 1_800_000_000.0
DAY = 86400.0
KEY = fleet.SigningKey.from_bytes(bytes(range(32)))
SHA = "ab" * 32


def indicator(kind="sha256", value=SHA, **fact) -> dict:
    f = Fact(kind, value, NOW - 100, NOW - 50, confidence=90, what="quarantined", actions=["a-1"], alerts=["al-1"],
             incidents=["inc-1"], **fact)
    return build(f, KEY, now=NOW, share_for=30 * DAY, hive_name="hive-a")[0]


def checked(obj, key=KEY.public, now=NOW, max_age=90 * DAY):
    return check(obj, key=key, now=now, max_age=max_age)


def test_an_indicator_carries_its_pattern_confidence_validity_and_origin():
    ind = indicator()
    assert ind["pattern"] == f"[file:hashes.'SHA-256' = '{SHA}']" and ind["pattern_type"] == "stix"
    assert ind["confidence"] == 90 and ind["valid_until"] > ind["valid_from"]
    assert ind["x_immune_source"]["incidents"] == ["inc-1"] and ind["x_immune_source"]["hive"] == "hive-a"
    assert {r["external_id"] for r in ind["external_references"]} == {"a-1", "al-1", "inc-1"}
    # The same fact on the same hive is the same object: a peer sees an update, not a new indicator.
    assert indicator()["id"] == ind["id"] != indicator(value="cd" * 32)["id"]
    got = checked(ind)
    assert isinstance(got, Pulled) and (got.kind, got.value, got.confidence) == ("sha256", SHA, 90)
    assert got.valid_until == pytest.approx(NOW - 50 + 30 * DAY, abs=1e-3)


def test_a_forged_altered_or_unsigned_object_is_refused_from_a_pinned_peer():
    ind = indicator()
    altered = {**ind, "pattern": "[file:hashes.'SHA-256' = '" + "cd" * 32 + "']"}
    assert "bad signature" in checked(altered).reason
    forger = fleet.SigningKey.generate()
    assert "bad signature" in checked(sign({k: v for k, v in ind.items() if k != "x_immune_signature"},
                                           forger)).reason
    unsigned = {k: v for k, v in ind.items() if k != "x_immune_signature"}
    assert "unsigned" in checked(unsigned).reason
    assert "bad signature" in checked({**ind, "x_immune_signature": "!!not base64!!"}).reason
    assert isinstance(checked(unsigned, key=None), Pulled)  # no key pinned: taken on the schema alone


def test_schema_pattern_and_expiry_are_checked():
    now = NOW
    assert "not a valid STIX 2.1 indicator" in checked(sign({**indicator(), "id": "indicator--nope"}, KEY)).reason
    assert "not an ipv4 address" in checked(sign({**indicator(), "pattern": "[ipv4-addr:value = 'nope']"}, KEY)).reason
    # What an agent cannot block is read, not acted on: neither taken nor refused.
    assert checked(sign({**indicator(), "pattern": "[process:name = 'x']"}, KEY)) is None
    assert checked(sign({**indicator(), "pattern_type": "sigma", "pattern": "title: x"}, KEY)) is None
    assert "expired at" in checked(indicator(), now=now + 31 * DAY).reason
    capped = checked(indicator(), max_age=DAY)
    assert capped.capped and capped.valid_until == now + DAY
    endless = {k: v for k, v in indicator().items() if k not in ("valid_until", "x_immune_signature")}
    got = checked(sign(endless, KEY))
    assert got.valid_until == now + 90 * DAY and not got.capped
    revoked = checked(sign({**indicator(), "revoked": True}, KEY), now=now + 31 * DAY)
    assert isinstance(revoked, Pulled) and revoked.revoked  # a withdrawal is taken even once expired
    assert check("text", key=None, now=now, max_age=DAY) == Refused("", "not a JSON object")
    sighting = build(Fact("sha256", SHA, NOW - 1, NOW), KEY, now=NOW, share_for=DAY)[1]
    assert checked(sighting) is None and "bad signature" in checked({**sighting, "count": 7}).reason


@pytest.mark.parametrize("text, want", [
    (f"[file:hashes.'SHA-256' = '{SHA.upper()}']", ("sha256", SHA)),
    ("[ipv4-addr:value = '198.51.100.7']", ("ipv4", "198.51.100.7")),
    ("[ipv4-addr:value = '198.51.100.0/24']", ("ipv4", "198.51.100.0/24")),
    ("[ipv6-addr:value = '2001:db8::1']", ("ipv6", "2001:db8::1")),
])
def test_patterns_acted_on(text, want):
    assert parse_pattern(text) == want


@pytest.mark.parametrize("text", [
    "[file:hashes.'SHA-256' = 'abc']", "[ipv4-addr:value = '2001:db8::1']", "[ipv4-addr:value = '0.0.0.0/0']",
    "[ipv4-addr:value = '1.2.3.4'] OR [ipv4-addr:value = '5.6.7.8']", "[ipv4-addr:value = 'x\\' OR 1=1']",
    "[file:name = 'evil']", "",
])
def test_patterns_refused(text):
    with pytest.raises(HerdError):
        parse_pattern(text)


def test_bundles_envelopes_and_misp_feeds_are_read():
    ind = indicator()
    assert objects_of({"type": "bundle", "id": "bundle--x", "objects": [ind]}) == [ind]
    assert objects_of({"more": False, "objects": [ind]}) == [ind]
    misp = {"response": [{"Event": {"info": "x", "Attribute": [
        {"type": "sha256", "value": SHA, "uuid": "5f2a1c34-7c1e-4b9a-9f27-0a4e0b1b2c3d", "timestamp": str(int(NOW))},
        {"type": "ip-dst", "value": "203.0.113.9"},
        {"type": "domain", "value": "evil.example"}]}}]}
    got, refused, ignored = check_all(objects_of(misp), key=None, now=NOW, max_age=DAY)
    assert [(p.kind, p.value) for p in got] == [("sha256", SHA), ("ipv4", "203.0.113.9")] and not refused
    assert got[0].indicator == "indicator--5f2a1c34-7c1e-4b9a-9f27-0a4e0b1b2c3d"
    for bad in (b"{", b"[1, 2", b'"text"', b'{"objects": 5}', b'{"response": [{"nope": 1}]}', b"[" * 100000):
        with pytest.raises(HerdError):
            objects_of(parse_document(bad)) if bad.startswith(b"{") else parse_document(bad)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "hive.db")
    for agent in ("web-1", "web-2"):
        s.enroll(agent, f"key-{agent}")
    yield s
    s.close()


def pulled(value=SHA, until=NOW + DAY, indicator="indicator--1", revoked=False, kind="sha256"):
    return Pulled(indicator, kind, value, until, 80, revoked)


def test_one_entry_per_pattern_with_every_peer_and_revocation(store):
    intel = Intel(store.db)
    r = intel.take("hive-a", "enforce", [pulled(), pulled("198.51.100.7", kind="ipv4", indicator="indicator--2")],
                   now=NOW)
    assert (r.accepted, r.new) == (2, 2)
    r = intel.take("hive-c", "observe", [pulled(indicator="indicator--9", until=NOW + 5 * DAY)], now=NOW)
    assert (r.accepted, r.new) == (1, 0)
    entry = intel.entries(key=f"sha256:{SHA}")[0]
    assert [(s.peer, s.trust, s.indicator) for s in entry.sources] == [
        ("hive-a", "enforce", "indicator--1"), ("hive-c", "observe", "indicator--9")]
    assert entry.enforced(NOW).peer == "hive-a" and entry.enforced(NOW + 2 * DAY) is None
    assert [s.peer for s in entry.live(NOW + 2 * DAY)] == ["hive-c"]
    # A peer's STIX revoked withdraws its source only.
    intel.take("hive-a", "enforce", [pulled(revoked=True)], now=NOW)
    entry = intel.entries(key=f"sha256:{SHA}")[0]
    assert entry.enforced(NOW) is None and [s.peer for s in entry.live(NOW)] == ["hive-c"]
    # Revoked here, by a peer's indicator id: the entry is out of force whoever sent it.
    assert intel.revoke("indicator--9", by="cli:root", now=NOW).revoked == NOW
    assert intel.entries(key=f"sha256:{SHA}")[0].live(NOW) == []
    with pytest.raises(HerdError, match="revoked already"):
        intel.revoke(f"sha256:{SHA}", by="cli:root", now=NOW)
    with pytest.raises(HerdError, match="no indicator"):
        intel.revoke("indicator--unknown", by="cli:root", now=NOW)
    assert set(matchable(intel.entries(), NOW)) == {"ipv4:198.51.100.7"}


def test_the_herd_blocks_go_through_the_engines_checks(store):
    intel = Intel(store.db)
    intel.take("hive-a", "enforce", [pulled(until=NOW + 3 * DAY), pulled("127.0.0.1", kind="ipv4",
                                                                          indicator="indicator--lo")], now=NOW)
    entries = {e.key: e for e in intel.entries()}
    ids = [intel.push(e, e.enforced(NOW), "web-1", now=NOW, max_ttl=365 * DAY) for e in entries.values()]
    records = Records(store.db)
    requested = records.requested()
    assert [(v, by) for _, v, by, _ in requested] == [("run", "herd:hive-a")] * 2
    engine = PlaybookEngine([], clock=lambda: NOW, protected=["127.0.0.1"])
    engine.agent_online("web-1")
    sent = {}
    for action_id in ids:
        a = records.actions(action_id=action_id)[0]
        assert a.mode == "herd" and "indicator--" in a.reason and "peer hive-a" in a.reason
        d = engine.run(a, "herd:hive-a")
        records.write(d)
        sent[a.params.get("sha256") or a.params.get("address")] = d
    block = sent[SHA].send[0][1]
    assert isinstance(block, wire.BlockExec) and block.sha256 == SHA and block.ttl == pytest.approx(3 * DAY)
    assert sent[SHA].audit[0].actor == "herd:hive-a"
    # The hive's own address is refused as an operator's block of it would be.
    assert not sent["127.0.0.1"].send and "hive's address" in sent["127.0.0.1"].actions[0].result
    assert set(intel.pushed()) == {(f"sha256:{SHA}", "web-1"), ("ipv4:127.0.0.1", "web-1")}


def test_publish_folds_what_the_hive_learned(store):
    intel = Intel(store.db)
    rows = [("c1", "quarantine_file", "done", {"path": "/tmp/x"}, {"data": {"sha256": SHA}}, NOW - 60),
            ("c2", "block_exec", "active", {"sha256": SHA}, {}, NOW - 30),
            ("c3", "block_connect", "reverted", {"address": "198.51.100.0/24"}, {}, NOW - 20),
            ("c4", "block_connect", "refused", {"address": "127.0.0.1"}, {}, NOW - 10),
            ("c5", "kill_process", "done", {"pid": 5}, {}, NOW - 10)]
    for cid, action, state, params, result, t in rows:
        store.db.execute("INSERT INTO commands(id, agent, action, params, state, created, updated, result) "
                         "VALUES(?,?,?,?,?,?,?,?)", (cid, "web-1", action, json.dumps(params), state, t, t,
                                                     json.dumps(result)))
    assert intel.publish(KEY, now=NOW, share_for=DAY) == 2
    objs = [o for _, _, o in intel.served(limit=100)[0]]
    good, refused, _ = check_all(objs, key=KEY.public, now=NOW, max_age=90 * DAY)
    assert not refused and {(p.kind, p.value) for p in good} == {("sha256", SHA), ("ipv4", "198.51.100.0/24")}
    sighting = next(o for o in objs if o["type"] == "sighting" and o["x_immune_source"]["actions"] == ["c1", "c2"])
    assert sighting["count"] == 2 and sighting["x_immune_source"]["what"] == "quarantined, blocked exec"
    assert intel.publish(KEY, now=NOW + 1, share_for=DAY) == 0  # nothing new: nothing re-signed


def test_matching_names_the_peers_and_their_indicators(store):
    intel = Intel(store.db)
    intel.take("hive-a", "enforce", [pulled(), pulled("198.51.100.0/24", kind="ipv4", indicator="indicator--n")],
               now=NOW)
    intel.take("hive-c", "observe", [pulled(indicator="indicator--c")], now=NOW)
    m = Matcher(matchable(intel.entries(), NOW), {"resp-a-1": f"sha256:{SHA}"})
    ex = wire.Exec(agent="web-1", pid=10, time=int(NOW * 1e9), sha256=SHA.upper(), filename="/x")
    entry, sources = m.match(ex)
    alert = Matcher.alert(ex, entry, sources)
    assert "hive-a's indicator--1" in alert.title and "hive-c's indicator--c" in alert.title
    assert alert.level == "high" and "herd.peer.hive-c" in alert.tags and alert.events == [ex]
    blocked = wire.Exec(agent="web-1", pid=11, verdict="block", rule="resp-a-1", filename="/y")
    assert "(blocked)" in Matcher.alert(blocked, *m.match(blocked)).title
    conn = wire.Connect(agent="web-1", pid=12, address="198.51.100.77", port=443)
    assert m.match(conn)[0].key == "ipv4:198.51.100.0/24"
    assert m.match(wire.Connect(agent="web-1", pid=12, address="198.51.101.1")) is None
    assert m.match(wire.Exec(agent="web-1", pid=13, sha256="cd" * 32)) is None
    observe_only = Matcher(matchable(Intel(store.db).entries(), NOW + 2 * DAY))
    assert len(observe_only) == 0  # both expired


def test_incidents_share_their_command_lines_and_the_sigma_rules_that_fired(store, tmp_path):
    from hive.correlate import Incident
    from hive.herd._stix import RuleTexts

    rule_id = "0f0e0d0c-0b0a-4909-8807-060504030201"
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yml").write_text(f"title: Curl to a shell\nid: {rule_id}\nlogsource: {{category: process_creation, "
                                 "product: linux}\ndetection: {sel: {Image|endswith: /sh}, condition: sel}\n")
    ex = wire.Exec(agent="web-1", pid=9, time=int(NOW * 1e9), filename="/bin/sh", cmdline="sh -c 'curl x | sh'")
    alert = wire.Alert(id="al-9", rule_id=rule_id, title="Curl to a shell", agent="web-1", time=int(NOW * 1e9),
                       events=[ex], incident="inc-9")
    with Intel(store.db)._tx() as db:
        Store._write_records(db, [alert], [Incident(id="inc-9", title="t", opened=NOW, updated=NOW, alerts=["al-9"])])
    intel = Intel(store.db)
    assert intel.publish(KEY, now=NOW, share_for=DAY, rules=RuleTexts([rules])) == 2
    objs = {o.get("pattern_type", o["type"]): o for _, _, o in intel.served(limit=100)[0] if o["type"] == "indicator"}
    assert objs["sigma"]["pattern"].startswith("title: Curl to a shell") and objs["sigma"]["confidence"] == 60
    assert objs["stix"]["pattern"] == "[process:command_line = 'sh -c \\'curl x | sh\\'']"
    assert {r["external_id"] for r in objs["sigma"]["external_references"]} == {"al-9", "inc-9"}
    # Signed like the rest; a peer reads them and acts on neither.
    good, refused, ignored = check_all(list(objs.values()), key=KEY.public, now=NOW, max_age=DAY)
    assert (good, refused, ignored) == ([], [], 2)


def test_an_isolation_shares_the_public_addresses_of_its_alert(store):
    events = [wire.Connect(agent="web-1", pid=5, address=a, port=443) for a in ("8.8.4.4", "10.1.2.3", "::1")]
    alert = wire.Alert(id="al-5", rule_id="r", title="Beacon", agent="web-1", time=int(NOW * 1e9), events=events)
    with Intel(store.db)._tx() as db:
        Store._write_records(db, [alert], [])
    store.db.execute("INSERT INTO commands(id, agent, action, params, state, created, updated, alert, result) "
                     "VALUES('c9', 'web-1', 'isolate_host', '{}', 'active', ?, ?, 'al-5', '{}')", (NOW, NOW))
    intel = Intel(store.db)
    assert intel.publish(KEY, now=NOW, share_for=DAY) == 1
    good, _, _ = check_all([o for _, _, o in intel.served(limit=100)[0]], key=KEY.public, now=NOW, max_age=DAY)
    assert [(p.kind, p.value, p.confidence) for p in good] == [("ipv4", "8.8.4.4", 70)]


def test_what_expired_a_week_ago_is_forgotten(store):
    intel = Intel(store.db)
    store.db.execute("INSERT INTO commands(id, agent, action, params, state, created, updated, result) "
                     "VALUES('c1', 'web-1', 'block_exec', ?, 'done', ?, ?, '{}')", (json.dumps({"sha256": SHA}), NOW, NOW))
    intel.publish(KEY, now=NOW, share_for=DAY)
    intel.take("hive-a", "enforce", [pulled(until=NOW + DAY), pulled("cd" * 32, until=NOW + 30 * DAY)], now=NOW)
    assert intel.prune(now=NOW + 2 * DAY, keep_expired=7 * DAY) == 0
    assert intel.prune(now=NOW + 9 * DAY, keep_expired=7 * DAY) > 0
    assert [o["type"] for _, _, o in intel.served(limit=100)[0]] == ["identity"]
    assert [e.key for e in intel.entries()] == [f"sha256:{'cd' * 32}"]


def test_a_cycle_pushes_to_every_agent_matches_and_lifts_on_revocation(store):
    from hive.herd._cycle import Cycle

    intel = Intel(store.db)
    cycle = Cycle(intel, KEY, share_for=DAY)
    assert cycle.step(NOW).sent == []  # nothing pulled: nothing to do
    intel.take("hive-a", "enforce", [pulled(until=NOW + 2 * DAY)], now=NOW)
    step = cycle.step(NOW + 1)
    assert len(step.sent) == 2 and step.in_force == 1  # web-1 and web-2
    assert cycle.step(NOW + 2).sent == []  # sent once
    rows = {a.agent: a for a in Records(store.db).actions() if a.mode == "herd"}
    assert set(rows) == {"web-1", "web-2"} and rows["web-1"].ttl == pytest.approx(2 * DAY - 1)
    # The agent took it: the block is active under its rule.
    store.db.execute("UPDATE commands SET state='active', result=? WHERE id=?",
                     (json.dumps({"text": "ok", "data": {"rule": "resp-x"}}), rows["web-1"].id))
    ex = wire.Exec(agent="web-1", pid=3, time=int(NOW * 1e9), sha256=SHA, filename="/x")
    # As the store actor writes events.
    store.db.execute("INSERT INTO events(agent, time, kind, pid, verdict, body) VALUES(?,?,?,?,?,?)",
                     ("web-1", ex.time, "exec", 3, "allow", msgspec.msgpack.encode(ex)))
    step = cycle.step(NOW + 3)
    assert [a.rule_id for a in step.alerts] == ["herd-indicator"]
    assert [a.title for a in store.alerts() if a.rule_id == "herd-indicator"] == [step.alerts[0].title]
    intel.revoke(f"sha256:{SHA}", by="cli:root", now=NOW + 4)
    step = cycle.step(NOW + 4)
    assert len(step.lifted) == 1 and step.in_force == 0  # web-2's block was never active: nothing to lift
    unblock = Records(store.db).actions(action_id=step.lifted[0])[0]
    assert (unblock.action, unblock.params, unblock.agent) == ("unblock", {"rule": "resp-x"}, "web-1")
    assert "revoked by cli:root" in unblock.reason
