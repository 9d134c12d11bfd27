"""Sigma correlation rules: loaded from YAML next to the rules they correlate,
run inside the rule engine with a fake clock; and the correlator on its own."""

import textwrap

import pytest

from hive.correlate import MAX_COUNT, MAX_DEPTH, CorrelationRule, SigmaCorrelator
from hive.sigma import RuleEngine
from wire import Exec, Open


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


BASE = """\
title: Discovery command {n}
id: 0000000{n}-aaaa-4aaa-8aaa-aaaaaaaaaaaa
name: discovery_{n}
logsource: {{product: linux, category: process_creation}}
detection:
    selection:
        Image|endswith: /tool{n}
    condition: selection
level: low
---
"""


def engine_with(tmp_path, correlation: str, *, bases=(1, 2), **kw):
    text = "".join(BASE.format(n=n) for n in bases) + textwrap.dedent(correlation)
    (tmp_path / "rules.yml").write_text(text)
    clock = Clock()
    engine = RuleEngine(clock=clock, suppress_window=0, **kw)
    report = engine.load(tmp_path)
    assert report.ok, report.format()
    return engine, clock


def run(n, agent="a", ppid=1, image=None):
    return Exec(agent=agent, pid=100, ppid=ppid, filename=image or f"/usr/bin/tool{n}",
                argv=[f"tool{n}"])


def titles(alerts):
    return [a.title for a in alerts]


EVENT_COUNT = """\
title: Burst
id: 10000000-cccc-4ccc-8ccc-cccccccccccc
correlation:
    type: event_count
    rules: [discovery_1]
    group-by: [Agent]
    timespan: 60s
    condition: {gte: 3}
level: high
tags: [attack.discovery]
"""


def test_event_count_fires_at_the_threshold_per_group(tmp_path):
    engine, clock = engine_with(tmp_path, EVENT_COUNT)
    assert engine.process(run(1)) == []  # generate: false, the base rule is silent
    clock.now = 10
    assert engine.process(run(1, agent="b")) == []
    clock.now = 20
    assert engine.process(run(1)) == []
    clock.now = 30
    (alert,) = engine.process(run(1))
    assert alert.title == "Burst" and alert.level == "high" and alert.agent == "a"
    assert alert.tags == ["attack.discovery"]
    assert len(alert.events) == 3 and all(e.agent == "a" for e in alert.events)
    assert "event_count 3 within 60s for Agent=a" in alert.detail
    # the group starts over after firing
    assert engine.process(run(1)) == []


def test_event_count_window_slides(tmp_path):
    engine, clock = engine_with(tmp_path, EVENT_COUNT)
    for t in (0, 40, 80, 120):
        clock.now = t
        assert engine.process(run(1)) == []  # never three within 60 s
    clock.now = 125
    assert titles(engine.process(run(1))) == ["Burst"]  # 80, 120, 125


SHADOW = """\
title: Shadow read
id: 20000000-aaaa-4aaa-8aaa-aaaaaaaaaaaa
name: shadow_read
logsource: {product: linux, category: file_access}
detection:
    selection:
        TargetFilename: /etc/shadow
    condition: selection
level: low
---
title: Shadow read again and again
id: 20000000-cccc-4ccc-8ccc-cccccccccccc
correlation:
    type: event_count
    rules: [shadow_read]
    group-by: [Agent]
    timespan: 60s
    condition: {gte: 100}
level: high
"""


def test_event_count_counts_a_folded_open_as_its_count(tmp_path):
    """The sensor sends a thread's repeated identical opens as one event with
    a count: a correlation counting them must see them all."""
    (tmp_path / "rules.yml").write_text(SHADOW)
    engine = RuleEngine(clock=Clock(), suppress_window=0)
    assert engine.load(tmp_path).ok
    assert engine.process(Open(agent="a", pid=7, path="/etc/shadow")) == []
    (alert,) = engine.process(Open(agent="a", pid=7, path="/etc/shadow", count=99))
    assert alert.title == "Shadow read again and again"
    assert "event_count 100 within 60s" in alert.detail


def test_windows_expire_and_state_is_freed(tmp_path):
    engine, clock = engine_with(tmp_path, EVENT_COUNT)
    for agent in "abcdef":
        engine.process(run(1, agent=agent))
    assert engine.statistics().correlation.groups == 6
    clock.now = 61
    assert engine.tick() == []
    assert engine.statistics().correlation.groups == 0


def test_value_count_counts_distinct_values(tmp_path):
    engine, clock = engine_with(tmp_path, """\
        title: Many tools from one shell
        id: 20000000-cccc-4ccc-8ccc-cccccccccccc
        correlation:
            type: value_count
            rules: [discovery_1, discovery_2]
            group-by: [Agent, ParentProcessId]
            timespan: 2m
            condition: {gte: 3, field: Image}
        """)
    assert engine.process(run(1, ppid=7)) == []
    assert engine.process(run(1, ppid=7)) == []  # same value again
    assert engine.process(run(2, ppid=7)) == []
    assert engine.process(run(2, ppid=8)) == []  # another group
    (alert,) = engine.process(run(1, ppid=7, image="/opt/tool1"))
    assert "value_count 3" in alert.detail and "ParentProcessId=7" in alert.detail


def test_temporal_any_order_and_ordered(tmp_path):
    engine, clock = engine_with(tmp_path, """\
        title: Both
        id: 30000000-cccc-4ccc-8ccc-cccccccccccc
        correlation:
            type: temporal
            rules: [discovery_1, discovery_2]
            group-by: [Agent]
            timespan: 30s
        ---
        title: In order
        id: 40000000-cccc-4ccc-8ccc-cccccccccccc
        correlation:
            type: temporal_ordered
            rules: [discovery_1, discovery_2]
            group-by: [Agent]
            timespan: 30s
        """)
    assert engine.process(run(2)) == []
    clock.now = 5
    assert titles(engine.process(run(1))) == ["Both"]  # 2 then 1: not in order
    clock.now = 10
    assert titles(engine.process(run(2))) == ["In order"]  # 1 (t=5) then 2
    clock.now = 50
    engine.process(run(1))
    clock.now = 81  # too late
    assert engine.process(run(2)) == []


def test_temporal_ordered_needs_each_step_in_turn(tmp_path):
    engine, clock = engine_with(tmp_path, """\
        title: Three steps
        id: 50000000-cccc-4ccc-8ccc-cccccccccccc
        correlation:
            type: temporal_ordered
            rules: [discovery_1, discovery_2, discovery_3]
            timespan: 1m
        """, bases=(1, 2, 3))
    assert engine.process(run(1)) == []
    assert engine.process(run(3)) == []  # 3 before 2 does not count
    assert engine.process(run(2)) == []
    assert titles(engine.process(run(3))) == ["Three steps"]


def test_settling_conditions_are_judged_when_the_window_closes(tmp_path):
    engine, clock = engine_with(tmp_path, """\
        title: Lonely
        id: 60000000-cccc-4ccc-8ccc-cccccccccccc
        correlation:
            type: event_count
            rules: [discovery_1]
            group-by: [Agent]
            timespan: 10s
            condition: {lt: 2}
        """)
    engine.process(run(1, agent="once"))
    engine.process(run(1, agent="twice"))
    engine.process(run(1, agent="twice"))
    clock.now = 5
    assert engine.tick() == []
    clock.now = 11
    (alert,) = engine.tick()
    assert alert.agent == "once"
    assert engine.statistics().correlation.groups == 0


def test_extended_temporal_condition_with_not(tmp_path):
    engine, clock = engine_with(tmp_path, """\
        title: One without two
        id: 70000000-cccc-4ccc-8ccc-cccccccccccc
        correlation:
            type: temporal
            rules: [discovery_1, discovery_2]
            group-by: [Agent]
            timespan: 10s
            condition: discovery_1 and not discovery_2
        """)
    engine.process(run(1, agent="a"))
    engine.process(run(1, agent="b"))
    engine.process(run(2, agent="b"))
    clock.now = 11
    assert [a.agent for a in engine.tick()] == ["a"]


def test_generate_true_keeps_the_base_alerts(tmp_path):
    engine, clock = engine_with(tmp_path, EVENT_COUNT.replace(
        "    timespan: 60s", "    timespan: 60s\n    generate: true"))
    assert titles(engine.process(run(1))) == ["Discovery command 1"]
    # a rule no correlation names always alerts
    assert titles(engine.process(run(2))) == ["Discovery command 2"]


def test_aliases_group_different_fields(tmp_path):
    engine, clock = engine_with(tmp_path, """\
        title: Parent and child
        id: 80000000-cccc-4ccc-8ccc-cccccccccccc
        correlation:
            type: temporal
            rules: [discovery_1, discovery_2]
            group-by: [proc]
            timespan: 10s
            aliases:
                proc:
                    discovery_1: ProcessId
                    discovery_2: ParentProcessId
        """)
    engine.process(Exec(agent="a", pid=42, ppid=1, filename="/bin/tool1"))
    assert engine.process(Exec(agent="a", pid=43, ppid=41, filename="/bin/tool2")) == []
    (alert,) = engine.process(Exec(agent="a", pid=44, ppid=42, filename="/bin/tool2"))
    assert "proc=42" in alert.detail


def test_correlation_of_a_correlation(tmp_path):
    engine, clock = engine_with(tmp_path, EVENT_COUNT + textwrap.dedent("""\
        ---
        title: Bursts on two hosts
        id: 90000000-cccc-4ccc-8ccc-cccccccccccc
        correlation:
            type: value_count
            rules: [10000000-cccc-4ccc-8ccc-cccccccccccc]
            timespan: 5m
            condition: {gte: 2, field: Agent}
        """))
    for _ in range(3):
        engine.process(run(1, agent="a"))
    alerts = []
    for _ in range(3):
        alerts += engine.process(run(1, agent="b"))
    # the inner correlation only feeds the outer one (generate: false)
    assert titles(alerts) == ["Bursts on two hosts"]
    assert "on a, b" in alerts[0].detail and alerts[0].agent == ""


def test_unsupported_and_broken_correlations_are_reported(tmp_path):
    text = BASE.format(n=1) + textwrap.dedent("""\
        title: Sum
        id: a0000000-cccc-4ccc-8ccc-cccccccccccc
        correlation:
            type: value_sum
            rules: [discovery_1]
            timespan: 1m
            condition: {gte: 100, field: ProcessId}
        ---
        title: Unknown
        id: b0000000-cccc-4ccc-8ccc-cccccccccccc
        correlation:
            type: event_count
            rules: [nope]
            timespan: 1m
            condition: {gte: 2}
        ---
        title: Bad group
        id: c0000000-cccc-4ccc-8ccc-cccccccccccc
        correlation:
            type: event_count
            rules: [discovery_1]
            group-by: [DestinationIp]
            timespan: 1m
            condition: {gte: 2}
        """)
    (tmp_path / "r.yml").write_text(text)
    report = RuleEngine(clock=Clock()).load(tmp_path)
    reasons = {f.title: (f.kind, f.reason) for f in report.failures}
    assert reasons["Sum"][0] == "correlation" and "value_sum" in reasons["Sum"][1]
    assert reasons["Unknown"] == ("reference", "correlates unknown rule 'nope'")
    assert reasons["Bad group"][0] == "field" and "DestinationIp" in reasons["Bad group"][1]
    assert report.loaded == 1


# -- the correlator alone --------------------------------------------------------


def test_groups_are_bounded_under_a_flood():
    clock = Clock()
    rule = CorrelationRule(id="c", title="c", type="event_count", rules=("r",), timespan=60,
                           group_by=("Agent",), op="gte", count=5)
    correlator = SigmaCorrelator([rule], clock=clock, max_groups=1000, max_events=3)
    for n in range(100_000):
        assert correlator.observe("r", {"Agent": f"host{n}"}, ("e",)) == []
    stats = correlator.statistics()
    assert stats.groups == 1000 and stats.evicted == 99_000
    # a hot group is the most recently used and survives the flood
    for _ in range(4):
        correlator.observe("r", {"Agent": "hot"})
    for n in range(500):
        correlator.observe("r", {"Agent": f"other{n}"})
    (hit,) = correlator.observe("r", {"Agent": "hot"}, ("last",))
    assert hit.value == 5 and hit.events == ("last",)


def test_one_group_never_holds_more_than_its_threshold():
    clock = Clock()
    rule = CorrelationRule(id="c", title="c", type="event_count", rules=("r",), timespan=1e9,
                           op="gt", count=1000)
    correlator = SigmaCorrelator([rule], clock=clock, max_events=10)
    for n in range(999):
        clock.now = n
        correlator.observe("r", {}, (n,))
    group = correlator._groups["c"][()]
    assert len(group.times) == 999 and len(group.events) == 10
    settling = CorrelationRule(id="s", title="s", type="value_count", rules=("r",),
                               timespan=1e9, op="lt", count=3, field="v")
    correlator = SigmaCorrelator([settling], clock=clock)
    for n in range(10_000):
        correlator.observe("r", {"v": n})
    assert len(correlator._groups["s"][()].seen) == 4


def test_bad_correlation_rules_are_refused():
    with pytest.raises(ValueError, match="type"):
        CorrelationRule(id="x", title="x", type="value_sum", rules=("r",), timespan=1)
    with pytest.raises(ValueError, match="field"):
        CorrelationRule(id="x", title="x", type="value_count", rules=("r",), timespan=1)
    with pytest.raises(ValueError, match="timespan"):
        CorrelationRule(id="x", title="x", type="event_count", rules=("r",), timespan=0)
    with pytest.raises(ValueError, match="in order"):
        CorrelationRule(id="x", title="x", type="temporal_ordered", rules=("a", "b"),
                        timespan=1, op="gte", count=1)


# -- bounds: no correlation rule can crash the sentinel ---------------------------


def _chained(n: int) -> str:
    return "".join(textwrap.dedent(f"""\
        ---
        title: Chain {i}
        id: 20000000-cccc-4ccc-8ccc-{i:012d}
        name: chain_{i}
        correlation:
            type: event_count
            rules: [{'discovery_1' if i == 1 else f'chain_{i - 1}'}]
            timespan: 60s
            condition: {{gte: 1}}
        """) for i in range(1, n + 1))


def test_correlations_of_correlations_nest_at_most_max_depth(tmp_path):
    # 600 deep, a hit ran up the chain in 1200 nested calls: RecursionError in the sentinel.
    (tmp_path / "rules.yml").write_text(BASE.format(n=1).rstrip("-\n") + "\n" + _chained(600))
    engine = RuleEngine(clock=Clock(), suppress_window=0)
    report = engine.load(tmp_path)
    assert len(report.correlations) == MAX_DEPTH
    depth = report.failures[0]
    assert depth.rule_id.endswith(f"{MAX_DEPTH + 1:012d}") and depth.kind == "limit"
    assert f"nest {MAX_DEPTH + 1} deep, more than {MAX_DEPTH} (MAX_DEPTH)" in depth.reason
    assert all("which did not load" in f.reason for f in report.failures[1:])
    # Each correlation feeds the next (generate: false keeps the inner ones silent).
    assert titles(engine.process(run(1))) == [f"Chain {MAX_DEPTH}"]


@pytest.mark.parametrize("count", [MAX_COUNT + 1, 10**23, -5])
def test_a_count_beyond_max_count_is_refused(tmp_path, count):
    # 10**23 raised OverflowError and -5 ValueError at the first hit, in the sentinel.
    (tmp_path / "rules.yml").write_text(
        BASE.format(n=1) + EVENT_COUNT.replace("{gte: 3}", f"{{gte: {count}}}"))
    engine = RuleEngine(clock=Clock(), suppress_window=0)
    [failure] = engine.load(tmp_path).failures
    assert f"a correlation counts from 0 to {MAX_COUNT} (MAX_COUNT)" in failure.reason
    assert engine.process(run(1)) != []  # the base rule alone: no correlation silences it


def test_a_correlation_whose_rules_are_not_names_is_refused(tmp_path):
    # Found by tests/fuzz: the mapping was looked up as a rule id, TypeError in load_rules.
    (tmp_path / "rules.yml").write_text(BASE.format(n=1) + EVENT_COUNT.replace(
        "rules: [discovery_1]", "rules: [discovery_1, shadow_type: reads]"))
    [failure] = RuleEngine(clock=Clock()).load(tmp_path).failures
    assert failure.kind == "correlation"
    assert failure.reason == "rules must name rules (an id or a name), not {'shadow_type': 'reads'}"
