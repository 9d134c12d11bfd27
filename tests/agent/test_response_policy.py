"""The response layer over the sensor's policy, as plain objects: what the
kernel will be given (its LPM entries), without a kernel."""

import ipaddress
import json
import struct

import hypothesis
import hypothesis.strategies as st
import pytest

import wire
from actors import Codec
from agent.response import (
    Block,
    Executor,
    Isolation,
    ResponseError,
    ResponsePolicy,
    SensorSlot,
    endpoint_addresses,
)
from agent.response._policy import literal_glob
from hive.playbook import PlaybookEngine, parse_playbook
from kmod import Policy

BASE = Policy.parse("""
[[rule]]
name = "audit-https"
hook = "connect"
action = "audit"
match.port = 443
[[rule]]
name = "block-c2"
hook = "connect"
action = "block"
match.port = 4444
[[rule]]
name = "exec-temp"
hook = "exec"
action = "block"
match.path = "/tmp/**"
""")


def verdict(policy, address, port, proto=6, hook=1):
    """What the kernel's lookup (kmod/bpf/sensor.bpf.c lookup4) finds: the
    most specific (protocol, port) first, longest prefix within it."""
    v4, _ = policy.sock_entries()
    addr = ipaddress.ip_address(address).packed
    for p, pr in ((port, proto), (0, proto), (port, 0), (0, 0)):
        best = None
        for key, value in v4.items():
            bits = struct.unpack("<I", key[:4])[0]
            head = bytes(4) + bytes((hook, pr)) + p.to_bytes(2, "big")  # tag 0: no workload
            if key[4:12] != head:
                continue
            net = ipaddress.ip_network((key[12:16], bits - 64))
            if ipaddress.ip_address(addr) in net and (best is None or bits > best[0]):
                best = (bits, value)
        if best:
            index, action = struct.unpack("<II", best[1])
            return policy.rules[index & 0xFFFF].name, ("audit", "block")[action - 1]
    return None, "allow"


def test_a_block_goes_first_and_keeps_the_base():
    rp = ResponsePolicy(BASE)
    rp.blocks["resp-1"] = Block("resp-1", "exec", {"sha256": "a" * 64})
    p = rp.compose()
    assert [r.name for r in p.rules] == ["resp-1", "audit-https", "block-c2", "exec-temp"]


def test_an_address_block_is_not_bypassed_by_a_port_specific_audit_rule():
    rp = ResponsePolicy(BASE)
    rp.blocks["resp-1"] = Block("resp-1", "connect", {"address": "10.9.9.9"})
    p = rp.compose()
    assert verdict(p, "10.9.9.9", 80) == ("resp-1", "block")
    assert verdict(p, "10.9.9.9", 443) == ("resp-1.1", "block")  # the shadow; without it: audit-https
    assert verdict(p, "10.9.9.8", 443) == ("audit-https", "audit")
    assert verdict(p, "10.9.9.8", 4444) == ("block-c2", "block")


def test_isolation_allows_the_hive_loopback_and_the_allow_list_only():
    rp = ResponsePolicy(BASE)
    rp.isolation = Isolation(allow=["10.0.0.1/32", "127.0.0.0/8", "::1/128", "192.168.5.0/24"])
    p = rp.compose()
    assert verdict(p, "10.0.0.1", 7001) == ("isolation-allow", "audit")
    assert verdict(p, "127.0.0.1", 8080) == ("isolation-allow", "audit")
    assert verdict(p, "192.168.5.77", 22) == ("isolation-allow", "audit")
    assert verdict(p, "10.0.0.2", 7001) == ("isolation-connect", "block")
    assert verdict(p, "8.8.8.8", 443) == ("isolation-connect", "block")  # the base audit rule is out
    assert verdict(p, "127.0.0.1", 4444) == ("block-c2", "block")  # base blocks stay
    assert verdict(p, "0.0.0.0", 8080, hook=2) == ("isolation-bind", "block")
    assert verdict(p, "127.0.0.1", 8080, hook=2) == ("isolation-allow-bind", "audit")
    assert "audit-https" not in [r.name for r in p.rules]


def test_bad_rules_are_refused_with_kmods_reason():
    rp = ResponsePolicy(BASE)
    rp.blocks["resp-1"] = Block("resp-1", "exec", {"sha256": "not-a-digest"})
    with pytest.raises(ResponseError, match="'not-a-digest' is not a SHA-256 hex digest"):
        rp.compose()


def test_the_layer_round_trips_through_its_state_file_form():
    rp = ResponsePolicy(BASE)
    rp.blocks["resp-1"] = Block("resp-1", "connect", {"address": "10.9.9.9", "port": [80, 443]}, expires=5.0,
                                command="a-1")
    rp.isolation = Isolation(allow=["10.0.0.1/32"], expires=9.0, command="a-2")
    again = ResponsePolicy(BASE)
    again.load(rp.dump())
    assert again.blocks == rp.blocks and again.isolation == rp.isolation
    assert [r.name for r in again.compose().rules] == [r.name for r in rp.compose().rules]


def test_the_hive_addresses_from_its_endpoint():
    assert endpoint_addresses("tcp://127.0.0.1:7001") == ["127.0.0.1"]
    assert endpoint_addresses("tcp://[::1]:7001") == ["::1"]
    assert endpoint_addresses("ipc:///run/immune/hive.sock") == []
    # Every hive node an agent may fail over to stays reachable.
    assert endpoint_addresses(["tcp://127.0.0.2:7400", "tcp://127.0.0.1:7400", "ipc:///x"]) == ["127.0.0.1", "127.0.0.2"]
    with pytest.raises(ResponseError, match="cannot resolve the hive's address 'no-such-host.invalid'"):
        endpoint_addresses("tcp://no-such-host.invalid:7001")


HOSTILE_NAMES = ["\U0001F600.sh", 'say "hi".sh', "back\\slash", "new\nline", "tab\there", "cr\rret",
                 "bell\x07\x1b[31m", "del\x7f", "\u2028sep\u0085", "\\u0041", "'single'", "=.toml]]",
                 "\U0010FFFF", "glob*?[!a-z]**", "[[]", "]"]
"""Any str but NUL; a lone surrogate cannot come over the wire (not UTF-8)."""


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=[repr(n) for n in HOSTILE_NAMES])
def test_an_exec_block_holds_any_file_name_exactly(name):
    path = f"/srv/dir {name}/{name}"
    rp = ResponsePolicy(BASE)
    rp.blocks["resp-1"] = Block("resp-1", "exec", {"path": [literal_glob(path)]})
    p = rp.compose()
    assert p.match_exec(path, with_hash=False).name == "resp-1"
    for other in (path[:-1], path + "x", path.replace(name, "a" * len(name))):
        assert p.match_exec(other, with_hash=False) is None, other


@hypothesis.given(st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1))
@hypothesis.settings(max_examples=300, deadline=None)
def test_every_path_but_nul_is_blocked_exactly(name):
    path = "/" + name
    rp = ResponsePolicy(Policy())
    rp.blocks["resp-1"] = Block("resp-1", "exec", {"path": [literal_glob(path)]})
    p = rp.compose()
    assert p.match_exec(path, with_hash=False) is not None
    assert p.match_exec(path + "x", with_hash=False) is None


class PolicyHolder:
    """In place of the kernel sensor (test_response_kernel.py runs the real
    one): keeps the policy the response layer gives it, to ask what it would
    decide."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def reload(self, policy: Policy) -> None:
        self.policy = policy


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


BLOCK_EXEC = """
id: block-exec
title: Block what ran
trigger: {rules: [r1]}
steps:
  - action: block_exec
    params: {path: "{{ event.exe }}"}
    ttl: 10m
"""


def test_a_playbooks_block_reaches_the_agent_with_its_ttl_and_the_agent_lifts_it_without_the_hive(tmp_path):
    clock = Clock()
    engine = PlaybookEngine([parse_playbook(BLOCK_EXEC)], clock=clock)
    sensor = PolicyHolder(BASE)
    slot = SensorSlot()
    slot.attach(sensor)
    executor = Executor(tmp_path, slot=slot, clock=clock, grace=30)
    exe = "/srv/app/\U0001F600 \"x\"\n\\evil"
    alert = wire.Alert(id="al-1", rule_id="r1", title="t", agent="web1",
                       events=[wire.Exec(pid=5, agent="web1", exe=exe)])
    [(agent, cmd)] = engine.on_alert(alert).send
    wire_codec = Codec(wire.HiveMessage)
    received = wire_codec.decode(wire_codec.encode(cmd))  # as the agent's relay gets it
    assert received == wire.BlockExec(id=cmd.id, path=exe, ttl=600, expires=cmd.expires)
    result = executor.execute(received)
    assert result.ok, result.detail
    assert sensor.policy.match_exec(exe, with_hash=False).name == result.data["rule"]
    assert engine.on_result(agent, result).actions[0].state == "active"
    # the hive is gone: its revert at 600 s never comes; the agent lifts the block 30 s later
    clock.t += 629
    assert executor.expire() == [] and sensor.policy.match_exec(exe, with_hash=False) is not None
    clock.t += 1
    assert executor.expire() == [result.data["rule"]]
    assert sensor.policy.match_exec(exe, with_hash=False) is None
    assert json.loads((tmp_path / "response" / "state.json").read_text())["blocks"] == []


def test_a_glob_blocks_what_matches_and_a_path_only_itself(tmp_path):
    sensor = PolicyHolder(BASE)
    slot = SensorSlot()
    slot.attach(sensor)
    executor = Executor(tmp_path, slot=slot)
    r = executor.execute(wire.BlockExec(id="g", glob="/srv/app/tool-[0-9]*"))
    assert r.ok and r.detail == f"exec of '/srv/app/tool-[0-9]*' blocked (rule {r.data['rule']})"
    assert sensor.policy.match_exec("/srv/app/tool-7.sh", with_hash=False).name == r.data["rule"]
    r = executor.execute(wire.BlockExec(id="p", path="/srv/app/tool-[0-9]*"))
    assert sensor.policy.match_exec("/srv/app/tool-[0-9]*", with_hash=False).name == r.data["rule"]
    assert sensor.policy.match_exec("/srv/app/tool-8", with_hash=False).name != r.data["rule"]
