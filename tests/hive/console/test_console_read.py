"""The console's read model over a real store file: overview, alert pages and
filters, an alert's process tree from stored exec/fork/exit events, incidents,
agents, actions with approvals, rules and playbooks, the event tail, and the
query parameters refused with a reason."""

import time

import msgspec
import pytest

import wire
from hive import AgentSeen, Ingest, Store
from hive.console import _read as read
from hive.correlate import Incident
from hive.playbook import PlaybookEngine, Records, parse_playbook

T0 = 1_700_000_000 * 10**9
S = 10**9


@pytest.fixture
def store(store_location, tmp_path):
    s = Store(store_location)
    yield s
    s.close()


def hive_events(store, *events, agent="web1"):
    store.ingest([Ingest(agent=agent, events=list(events))])


def an_alert(n, *, level="high", rule="r1", agent="web1", events=(), title=None, when=None):
    return wire.Alert(id=f"al-{n}", rule_id=rule, title=title or f"Rule {rule} hit", level=level, agent=agent,
                      time=when or T0 + n * S, events=list(events))


def test_alert_pages_are_newest_first_and_the_cursor_walks_back_without_repeats(store):
    store.ingest([], alerts=[an_alert(i, level=("low", "high")[i % 2]) for i in range(1, 8)])
    first = read.alerts(store, read.AlertQuery(limit=3))
    assert [a.id for a in first.items] == ["al-7", "al-6", "al-5"]
    second = read.alerts(store, read.AlertQuery(limit=3, before=first.next))
    third = read.alerts(store, read.AlertQuery(limit=3, before=second.next))
    assert [a.id for a in second.items + third.items] == ["al-4", "al-3", "al-2", "al-1"]
    assert third.next == 0
    assert [a.id for a in read.alerts(store, read.AlertQuery(level="low")).items] == ["al-6", "al-4", "al-2"]
    assert read.latest_alert(store) == first.items[0].seq


def test_alert_filters_rule_agent_since_and_text_with_like_wildcards_taken_literally(store):
    store.ingest([], alerts=[an_alert(1, rule="sh", title="Reverse shell 100%"),
                             an_alert(2, rule="cred", agent="db1", title="Shadow read"),
                             an_alert(3, rule="sh", title="Reverse shell")])
    assert [a.id for a in read.alerts(store, read.AlertQuery(rule="sh")).items] == ["al-3", "al-1"]
    assert [a.id for a in read.alerts(store, read.AlertQuery(agent="db1")).items] == ["al-2"]
    assert [a.id for a in read.alerts(store, read.AlertQuery(since=T0 + 2 * S)).items] == ["al-3", "al-2"]
    assert [a.id for a in read.alerts(store, read.AlertQuery(text="SHELL")).items] == ["al-3", "al-1"]
    assert [a.id for a in read.alerts(store, read.AlertQuery(text="100%")).items] == ["al-1"]
    assert read.alerts(store, read.AlertQuery(text="_")).items == []


def test_overview_counts_alerts_by_level_per_bucket_top_rules_agents_and_pending(store):
    now = time.time() // 3600 * 3600 + 1800  # mid-hour: a minute ago is in the same bucket
    base = int(now) * S
    store.ingest([], alerts=[an_alert(1, level="high", when=base - 2 * 3600 * S),
                             an_alert(2, level="high", when=base - 60 * S, rule="r2"),
                             an_alert(3, level="low", when=base - 30 * S, rule="r2"),
                             an_alert(4, level="high", when=base - 48 * 3600 * S)])
    store.agents_seen([AgentSeen(agent="web1", time=base), AgentSeen(agent="db1", time=base)])
    store.mark_offline("db1")
    o = read.overview(store, now=now)
    assert (o.agents_online, o.agents_total, o.alerts_total) == (1, 2, 4)
    assert len(o.buckets) == 24 and o.bucket_seconds == 3600
    assert o.buckets[-1].levels == {"high": 1, "low": 1}
    assert o.buckets[-3].levels == {"high": 1}
    assert sum(sum(b.levels.values()) for b in o.buckets) == 3  # the 48 h old one is outside
    assert [(r.rule_id, r.hits) for r in o.top_rules] == [("r1", 2), ("r2", 2)]
    assert o.actions_pending == 0


def tree_events():
    """bash (100, exec'd at T0) forks 200, which is refused /tmp/evil and
    exits 126; 100 also forks 300, which execs ls and exits."""
    return [
        wire.Exec(time=T0, pid=100, ppid=1, filename="/bin/bash", argv=["bash", "-i"], user="alice", uid=1000,
                  sha256="ab" * 32, parent_image="/usr/sbin/sshd", parent_cmdline="sshd: alice"),
        wire.Fork(time=T0 + 1 * S, pid=100, ppid=1, child_pid=200, image="/bin/bash", cmdline="bash -i"),
        wire.Exec(time=T0 + 2 * S, pid=200, ppid=100, filename="/tmp/evil", argv=["/tmp/evil", "-x"],
                  verdict="block", result=-1, user="alice", uid=1000, image="/bin/bash", cmdline="bash -i"),
        wire.Exit(time=T0 + 3 * S, pid=200, ppid=100, code=126),
        wire.Fork(time=T0 + 4 * S, pid=100, ppid=1, child_pid=300),
        wire.Exec(time=T0 + 5 * S, pid=300, ppid=100, filename="/bin/ls", argv=["ls", "/root"], user="alice"),
        wire.Exit(time=T0 + 6 * S, pid=300, ppid=100, code=0),
        # The same pid 200 reused an hour later by someone else: not in the tree.
        wire.Exec(time=T0 + 3000 * S, pid=200, ppid=1, filename="/usr/bin/cron", argv=["cron"]),
    ]


def test_process_tree_of_a_blocked_exec_has_its_ancestors_children_verdicts_and_hashes(store):
    evs = tree_events()
    hive_events(store, *evs)
    store.ingest([], alerts=[an_alert(1, events=[evs[2]])])
    tree = read.alert_process(store, "al-1")
    by_pid = {n.pid: n for n in tree.nodes}
    assert [(n.pid, n.depth) for n in tree.nodes] == [(1, -2), (100, -1), (200, 0)]
    me = by_pid[200]
    assert me.verdicts == ["block"] and me.exit_code == 126
    assert [(x.image, x.cmdline, x.verdict) for x in me.execs] == [("/tmp/evil", "/tmp/evil -x", "block")]
    assert me.image == "/bin/bash"  # the refused exec left it running bash
    bash = by_pid[100]
    assert (bash.cmdline, bash.user, bash.uid, bash.sha256) == ("bash -i", "alice", 1000, "ab" * 32)
    init = by_pid[1]
    assert not init.known and init.image == ""  # no events of pid 1 stored

    # From bash: its children, each with what it ran, the later pid 200 left out.
    whole = read.process_tree(store, "web1", 100, T0 + 1 * S)
    assert [(n.pid, n.depth) for n in whole.nodes] == [(1, -1), (100, 0), (200, 1), (300, 1)]
    kids = {n.pid: n for n in whole.nodes}
    assert kids[300].cmdline == "ls /root" and kids[300].exit_code == 0
    assert kids[200].verdicts == ["block"]
    assert whole.nodes[0].image == "/usr/sbin/sshd"  # what bash's exec said of its parent


def test_process_tree_is_bounded_by_tree_nodes(store, monkeypatch):
    monkeypatch.setattr(read, "TREE_NODES", 5)
    evs = [wire.Exec(time=T0, pid=10, ppid=0, filename="/bin/sh")]
    evs += [wire.Fork(time=T0 + i, pid=10, child_pid=1000 + i) for i in range(1, 20)]
    hive_events(store, *evs)
    tree = read.process_tree(store, "web1", 10, T0)
    assert len(tree.nodes) == 5 and tree.cut == 15


def test_a_busy_hosts_lookup_reads_at_most_tree_scan_events(store, monkeypatch):
    evs = tree_events()[:3]
    noise = [wire.Open(time=T0 + S + i, pid=999, path="/etc/hosts") for i in range(1, 50)]
    hive_events(store, *evs[:2], *noise, evs[2])
    assert [n.pid for n in read.process_tree(store, "web1", 200, T0 + 2 * S).nodes if n.known] == [100, 200]
    monkeypatch.setattr(read, "TREE_SCAN", 20)
    tree = read.process_tree(store, "web1", 200, T0 + 2 * S)
    # bash's exec is more than 20 events back: cut off, known only by what its child's event says.
    assert [(n.pid, n.known) for n in tree.nodes] == [(100, False), (200, True)]
    assert tree.nodes[0].image == ""  # the child's exec names no parent image


def test_incidents_agents_and_the_event_tail(store):
    inc = Incident(id="inc-1", title="Lateral movement", opened=1.0, updated=2.0, level="high",
                   agents=["web1", "db1"], edges=[("web1", "db1", 22)], alerts=["al-1"])
    store.ingest([], incidents=[inc])
    assert [(i.id, i.agents, i.links) for i in read.incidents(store)] == [("inc-1", ["web1", "db1"], 1)]
    assert read.incident(store, "inc-1") == inc and read.incident(store, "nope") is None

    store.agents_seen([AgentSeen(agent="web1", time=T0, heartbeat=wire.Heartbeat(spooled=7, dropped=2),
                                 hello=wire.Hello(agent="web1", hostname="web1.lan", agent_version="1.2",
                                                  policy_version="p9", bundle_version=4))])
    [a] = read.agents(store)
    assert (a.state, a.hostname, a.spooled, a.dropped, a.policy_version, a.bundle_version) == (
        "online", "web1.lan", 7, 2, "p9", 4)

    hive_events(store, *tree_events())
    newest = read.events(store, read.EventQuery(limit=3))
    assert [e.kind for e in newest.items] == ["exec", "exit", "exec"] and newest.next
    assert newest.items[0].summary == "cron"
    tail = read.events(store, read.EventQuery(after=newest.items[1].id))
    assert [e.summary for e in tail.items] == ["cron"] and tail.next == newest.items[0].id
    assert read.events(store, read.EventQuery(after=tail.next)).items == []
    blocked = read.events(store, read.EventQuery(verdict="block"))
    assert [e.summary for e in blocked.items] == ["/tmp/evil -x"]
    assert [e.summary for e in read.events(store, read.EventQuery(text="ROOT")).items] == ["ls /root"]
    assert read.latest_event(store) == newest.items[0].id


def test_a_text_filter_reads_at_most_text_scan_events_a_page_and_gives_a_cursor(store, monkeypatch):
    monkeypatch.setattr(read, "TEXT_SCAN", 4000)
    hive_events(store, wire.Exec(time=T0, pid=1, argv=["needle"]))
    hive_events(store, *[wire.Exec(time=T0 + i, pid=2, argv=["hay"]) for i in range(1, 5001)])
    page = read.events(store, read.EventQuery(text="needle"))
    assert page.items == [] and page.scanned == 4000 and page.next
    rest = read.events(store, read.EventQuery(text="needle", before=page.next))
    assert [e.summary for e in rest.items] == ["needle"] and rest.next == 0


PB = """
id: approve-kill
title: Kill, approved
mode: approval
trigger: {rules: [r1]}
steps:
  - action: kill_process
    params: {pid: "{{ event.pid }}"}
"""


def test_actions_pending_then_approved_by_a_named_user_with_the_audit_trail(store):
    records = Records(store.db)
    engine = PlaybookEngine([parse_playbook(PB)], clock=lambda: 1000.0)
    a = an_alert(1, events=[wire.Exec(pid=4242, filename="/tmp/x")])
    store.ingest([], alerts=[a])
    records.write(engine.on_alert(a))
    acts = read.actions(store)
    [pending] = acts.pending
    assert (pending.action, pending.params, pending.alert, pending.playbook) == (
        "kill_process", {"pid": 4242}, "al-1", "approve-kill")
    assert acts.recent == []
    assert read.overview(store).actions_pending == 1
    records.approve(pending.id, "carol")
    acts = read.actions(store)
    assert acts.pending == [] and acts.recent[0].state == "approved"
    assert acts.audit[0].actor == "operator:carol"
    view, trail = read.action(store, pending.id)
    assert view.state == "approved" and trail[0].actor == "operator:carol"
    assert read.action(store, "nope") is None
    assert [x.id for x in read.alert(store, "al-1").actions] == [pending.id]
    assert read.alert(store, "nope") is None
    assert read.alert(store, "al-1").alert.events[0].pid == 4242


def test_rules_and_playbooks_loaded_failed_and_counted(store, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "bad.yml").write_text("title: broken\nlogsource: {product: linux}\n")
    report = read.rules(store, [rules, tmp_path / "missing"])
    assert report.loaded == [] and len(report.failed) == 1 and report.failed[0].reason
    from hive.sigma._sets import BUILTIN_RULES

    store.ingest([], alerts=[an_alert(1, rule="r1")])
    builtin = read.rules(store, [BUILTIN_RULES])
    assert len(builtin.loaded) > 5 and all(r.source.startswith("builtin") for r in builtin.loaded)
    from hive.playbook import DEFAULT_PLAYBOOKS

    books = tmp_path / "books"
    books.mkdir()
    (books / "k.yml").write_text(PB)
    (books / "bad.yml").write_text("id: [\n")
    pbs = read.playbooks(store, [DEFAULT_PLAYBOOKS, books])
    ids = {p.id for p in pbs.loaded}
    assert "approve-kill" in ids and len(ids) > 2
    assert [f.path for f in pbs.failed] == [str(books / "bad.yml")]
    assert next(p for p in pbs.loaded if p.id == "approve-kill").steps == ["kill_process [approval]"]


@pytest.mark.parametrize("params, reason", [
    ({"level": "severe"}, "level: 'severe' is not one of"),
    ({"limit": "0"}, "limit: 0 is not between 1 and 500"),
    ({"limit": "-3"}, "limit: '-3' is not a whole number"),
    ({"before": "9" * 30}, "before: '9999"),
    ({"since": "yesterday"}, "since 'yesterday': expected"),
    ({"since": "\u00b21m"}, "since .\u00b21m.: expected"),
    ({"text": "a\x00b"}, "text: control characters"),
    ({"agent": "x" * 201}, "agent: at most 200 characters"),
    ({"colour": "red"}, "unknown parameter 'colour'"),
])
def test_bad_alert_query_parameters_are_refused_with_the_reason(params, reason):
    with pytest.raises(read.QueryError, match=reason.replace("(", r"\(")):
        read.alert_query(params)


def test_query_parameters_parse_to_the_filters():
    q = read.alert_query({"level": "high", "rule": " r1 ", "since": "10m", "before": "42", "limit": "7", "text": ""})
    assert (q.level, q.rule, q.before, q.limit, q.text) == ("high", "r1", 42, 7, "")
    assert abs(q.since - (time.time() - 600) * 1e9) < 5e9
    e = read.event_query({"kind": "exec", "verdict": "block", "pid": "12", "after": "5"})
    assert (e.kind, e.verdict, e.pid, e.after) == ("exec", "block", 12, 5)
    with pytest.raises(read.QueryError, match="give one of them"):
        read.event_query({"before": "1", "after": "2"})
    with pytest.raises(read.QueryError, match="kind: 'sing' is not one of"):
        read.event_query({"kind": "sing"})


def test_every_view_encodes_as_json():
    # The API sends these Structs as they are: each must have a JSON schema.
    msgspec.json.schema_components([read.Overview, read.AlertPage, read.AlertDetail, read.ProcessTree,
                                    read.IncidentRow, Incident, read.AgentView, read.Actions, read.Rules,
                                    read.Playbooks, read.EventPage])
