"""The response layer over the sensor's policy, as plain objects: what the
kernel will be given (its LPM entries), without a kernel."""

import ipaddress
import struct

import pytest

from agent.response import (
    Block,
    Isolation,
    ResponseError,
    ResponsePolicy,
    endpoint_addresses,
)
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
            head = bytes((hook, pr)) + p.to_bytes(2, "big")
            if key[4:8] != head:
                continue
            net = ipaddress.ip_network((key[8:12], bits - 32))
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
    with pytest.raises(ResponseError, match="cannot resolve the hive's address 'no-such-host.invalid'"):
        endpoint_addresses("tcp://no-such-host.invalid:7001")
