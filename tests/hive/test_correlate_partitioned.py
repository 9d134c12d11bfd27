"""Sigma correlation partitioned as a hive cluster runs it, without sockets:
sentinels' engines route each hit a correlation reads (``SigmaHit``, through
the internal codec) to the owner of its (rule, group) partition, whose
engine keeps the window; the alerts are those one engine raises alone."""

import subprocess
import sys
import textwrap

import msgspec
import pytest

from actors import DecodeError
from hive._actors import internal_codec
from hive._messages import SigmaHit
from hive.cluster._correlate import HOST_PARTITION, correlate_id, correlate_partition, sigma_partition
from hive.correlate import CorrelationRule, SigmaCorrelator
from hive.sigma import RuleEngine
from wire import Alert, Exec

from tests.hive.test_correlate_sigma import BASE, EVENT_COUNT, Clock, engine_with, run, titles

CODEC = internal_codec()
OUTER = """\
---
title: Bursts on two hosts
id: 90000000-cccc-4ccc-8ccc-cccccccccccc
correlation:
    type: value_count
    rules: [10000000-cccc-4ccc-8ccc-cccccccccccc]
    timespan: 5m
    condition: {gte: 2, field: Agent}
"""


def test_a_group_has_one_partition_the_same_in_every_process():
    keys = [("rule-a", ["alice"]), ("rule-a", ["bob", 7]), ("rule-b", ["alice"]), ("rule-c", [None, 1.5, True])]
    here = [sigma_partition(rule, group, 8) for rule, group in keys]
    assert here == [sigma_partition(rule, list(group), 8) for rule, group in keys]
    assert all(0 <= p < 8 for p in here)
    code = ("from hive.cluster._correlate import sigma_partition;"
            f"print([sigma_partition(r, g, 8) for r, g in {keys!r}])")
    # Another interpreter, another hash seed: Python's hash() would differ.
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PYTHONPATH": ":".join(sys.path)}).stdout
    assert there.strip() == str(here)


def test_groups_spread_over_the_partitions():
    counts = [0] * 8
    for i in range(4000):
        counts[sigma_partition("rule-a", [f"user{i}"], 8)] += 1
    assert min(counts) > 350 and max(counts) < 650, counts
    assert {sigma_partition("r", [f"u{i}"], 1) for i in range(50)} == {0}


def test_only_sigma_hits_leave_the_host_partition():
    hit = SigmaHit(correlation="rule-a", group=["alice"], key="a/s/1/1/rule-a")
    assert correlate_partition(hit, 8) == sigma_partition("rule-a", ["alice"], 8)
    assert correlate_partition(Alert(id="x", rule_id="r", title="t"), 8) == HOST_PARTITION
    assert correlate_id(hit) == "hit/a/s/1/1/rule-a"
    assert correlate_id(SigmaHit(correlation="r")) == ""  # no key, no id: nothing to drop as a copy


def test_route_touches_no_window_and_apply_is_observe():
    rule = CorrelationRule(id="c", title="c", type="event_count", rules=("r",), timespan=60, group_by=("User",),
                           count=2)
    clock = Clock()
    routed = SigmaCorrelator([rule], clock=clock)
    alone = SigmaCorrelator([rule], clock=clock)
    fields = {"User": "alice", "Image": "/bin/su"}
    [(found, group, value)] = routed.route("r", fields)
    assert (found, group, value) == (rule, ("alice",), "r")
    assert routed.route("other", fields) == []
    assert routed.statistics().groups == 0
    assert routed.apply("c", group, value, now=0.0) == [] and alone.observe("r", fields) == []
    (a,) = routed.apply("c", group, value, now=1.0)
    clock.now = 1.0
    (b,) = alone.observe("r", fields)
    assert (a.rule, a.group, a.value, a.time) == (b.rule, b.group, b.value, b.time) == (rule, {"User": "alice"}, 2, 1.0)
    # apply's time is the hit's, not the clock's: 100 s apart is two windows.
    assert routed.apply("c", group, value, now=200.0) == [] and routed.apply("c", group, value, now=300.0) == []


class Partitions:
    """Sentinels' engines and partition owners' engines, messages between
    them encoded and decoded as JetStream carries them."""

    def __init__(self, tmp_path, text: str, n: int = 4, sentinels: int = 2):
        (tmp_path / "rules.yml").write_text(text)
        self.clock, self.n = Clock(), n
        self.sentinels = [self._engine(tmp_path) for _ in range(sentinels)]
        self.owners = [self._engine(tmp_path) for _ in range(n)]
        self.path = tmp_path
        self.batches = 0
        self.log: list[list[SigmaHit]] = [[] for _ in range(n)]
        """Each partition's stream."""

    def _engine(self, path):
        e = RuleEngine(clock=self.clock, suppress_window=0, partitioned=True)
        assert e.load(path).ok
        return e

    def evaluate(self, i: int, *events) -> list:
        """A batch evaluated by sentinel ``i``: its own alerts, then the correlations'."""
        self.batches += 1
        s = self.sentinels[i % len(self.sentinels)]
        out = list(s.process_batch(list(events), key=f"agent/s/{self.batches}"))
        return out + self._deliver(s.routed())

    def _deliver(self, hits) -> list:
        out = []
        for hit in hits:
            hit = CODEC.decode(CODEC.encode(hit))
            p = correlate_partition(hit, self.n)
            self.log[p].append(hit)
            owner = self.owners[p]
            out += owner.correlate(hit)
            out += self._deliver(owner.routed())
        return out

    def tick(self) -> list:
        out = []
        for owner in self.owners:
            out += owner.tick()
            out += self._deliver(owner.routed())
        return out

    def rebuild(self, p: int) -> None:
        """A new owner of partition ``p``: replays its stream, outputs dropped."""
        owner = self.owners[p] = self._engine(self.path)
        for hit in self.log[p]:
            owner.correlate(hit)
        owner.routed()


def test_hits_evaluated_by_different_sentinels_meet_in_one_window(tmp_path):
    c = Partitions(tmp_path, "".join(BASE.format(n=n) for n in (1, 2)) + textwrap.dedent(EVENT_COUNT))
    out = []
    for i in range(3):
        c.clock.now = 10 * i
        out += c.evaluate(i, run(1, agent="a"), run(1, agent="b"))
    assert titles(out) == ["Burst", "Burst"]
    assert sorted(a.agent for a in out) == ["a", "b"]
    assert all(len(a.events) == 3 for a in out)
    # Each group's hits went to one partition, and its window is nowhere else.
    for agent in "ab":
        p = sigma_partition("10000000-cccc-4ccc-8ccc-cccccccccccc", [agent], c.n)
        assert sum(h.group == [agent] for h in c.log[p]) == 3
    assert all(s.statistics().correlation.groups == 0 for s in c.sentinels)


def test_a_correlation_of_a_correlation_is_routed_on(tmp_path):
    c = Partitions(tmp_path, BASE.format(n=1) + textwrap.dedent(EVENT_COUNT) + textwrap.dedent(OUTER), n=8)
    out = []
    for i in range(3):
        out += c.evaluate(i, run(1, agent="a"))
    for i in range(3):
        out += c.evaluate(i, run(1, agent="b"))
    # The same as one engine alone (test_correlation_of_a_correlation).
    assert titles(out) == ["Bursts on two hosts"]
    assert "on a, b" in out[0].detail
    outer = [h for log in c.log for h in log if h.correlation.startswith("90000000")]
    assert len(outer) == 2 and all(h.key for h in outer)


def test_settling_windows_close_on_their_owner(tmp_path):
    c = Partitions(tmp_path, BASE.format(n=1) + textwrap.dedent("""\
        title: Lonely
        id: 60000000-cccc-4ccc-8ccc-cccccccccccc
        correlation:
            type: event_count
            rules: [discovery_1]
            group-by: [Agent]
            timespan: 10s
            condition: {lt: 2}
        """))
    c.evaluate(0, run(1, agent="once"))
    c.evaluate(1, run(1, agent="twice"))
    c.evaluate(0, run(1, agent="twice"))
    c.clock.now = 11
    (alert,) = c.tick()
    assert alert.agent == "once"


def test_a_new_owner_rebuilt_from_the_stream_fires_once_with_the_same_id(tmp_path):
    text = "".join(BASE.format(n=n) for n in (1, 2)) + textwrap.dedent(EVENT_COUNT)
    events = [run(1, agent="a") for _ in range(3)]
    whole = Partitions(tmp_path, text)
    (expected,) = [a for i, e in enumerate(events) for a in whole.evaluate(i, e)]

    c = Partitions(tmp_path, text)
    assert c.evaluate(0, events[0]) == [] and c.evaluate(1, events[1]) == []
    p = sigma_partition("10000000-cccc-4ccc-8ccc-cccccccccccc", ["a"], c.n)
    c.rebuild(p)  # the owner died in the middle of the window
    (alert,) = c.evaluate(0, events[2])
    assert alert.id == expected.id and alert.title == "Burst" and len(alert.events) == 3
    # The owner died after publishing the alert, before acknowledging the hit:
    # its successor takes the hit again and raises the same alert (a copy).
    c.log[p].pop()
    c.rebuild(p)
    (again,) = c.owners[p].correlate(CODEC.decode(CODEC.encode(
        [h for h in whole.log[p] if h.group == ["a"]][-1])))
    assert again.id == expected.id


def test_a_hit_of_a_rule_the_owner_does_not_have_is_refused(tmp_path):
    engine, _ = engine_with(tmp_path, EVENT_COUNT)
    assert engine.correlate(SigmaHit(correlation="nope", group=["a"])) is None


def test_a_single_node_engine_routes_nothing(tmp_path):
    engine, clock = engine_with(tmp_path, EVENT_COUNT)
    for t in range(3):
        engine.process(Exec(agent="a", pid=100, ppid=1, filename="/usr/bin/tool1", argv=["tool1"]))
    assert engine.routed() == [] and engine.statistics().correlation.hits == 1


def test_a_malformed_hit_is_refused_at_the_decoder():
    """The owner counts what its decoder refuses and goes on (tests/e2e/test_cluster_correlate.py)."""
    for bad in ({"type": "sigma_hit", "correlation": "c", "group": [{"a": 1}]},
                {"type": "sigma_hit", "correlation": "c", "weight": 0},
                {"type": "sigma_hit", "group": ["a"]},
                {"type": "sigma_hit", "correlation": "c", "time": float("nan")},
                {"type": "sigma_hit", "correlation": "c", "time": float("inf")},
                {"type": "sigma_hit", "correlation": "c", "time": -1.0}):
        with pytest.raises(DecodeError):
            CODEC.decode(msgspec.msgpack.encode(bad))


def test_a_hit_that_does_not_fit_its_correlation_is_refused(tmp_path):
    engine, _ = engine_with(tmp_path, EVENT_COUNT)
    [rule] = engine.rules.correlations
    fits = SigmaHit(correlation=rule.id, group=["a"] * len(rule.group_by), value="r", time=1.0, key="k1")
    assert engine.correlate(fits) == []
    for group in ([], ["a"] * (len(rule.group_by) + 3)):
        assert engine.correlate(SigmaHit(correlation=rule.id, group=group, value="r", time=1.0, key="k2")) is None
    assert engine.correlate(SigmaHit(correlation="not-loaded", group=["a"], time=1.0)) is None
    assert engine.statistics().correlation.groups == 1  # only the hit that fits made a group
