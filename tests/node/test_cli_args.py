"""Flags that are not config keys are bounded too: one line, never a traceback."""

import time

import pytest

from node.cli import INT64_MAX, CliError, build_parser, parse_since


@pytest.mark.parametrize("argv,says", [
    (["status", "--timeout", "-1"], "argument --timeout: '-1' must be above zero and at most 86400.0"),
    (["status", "--timeout", "nan"], "argument --timeout: 'nan' must be above zero"),
    (["restart", "router", "--timeout", "1e10"], "argument --timeout: '1e10' must be above zero"),
    (["events", "--limit", "0"], "argument --limit: '0' must be above zero"),
    (["events", "--limit", str(2**63)], f"argument --limit: '{2**63}' must be above zero and at most {INT64_MAX}"),
    (["alerts", "--limit", "x"], "argument --limit: 'x' is not a number"),
    (["tap", "--count", "-5"], "argument --count: '-5' must be above zero"),
    (["enroll", "token", "--ttl", "inf"], "argument --ttl: 'inf' must be above zero"),
    (["enroll", "join", "t", "--timeout", "0"], "argument --timeout: '0' must be above zero"),
])
def test_out_of_range_flags_are_refused_by_the_parser(argv, says, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("text", ["99999999999999999999d", "9999-12-31T23:59:59+14:00", "0001-01-01", "1900-01-01"])
def test_a_since_no_event_can_have_is_refused(text):
    with pytest.raises(CliError, match="before 1970 or after 2262"):
        parse_since(text)


def test_since_in_range():
    assert abs(parse_since("10m") / 1e9 - (time.time() - 600)) < 5
    assert parse_since("1970-01-01T00:00:01+00:00") == 10**9


def test_version_names_the_package_the_wire_and_the_store(capsys):
    import importlib.metadata
    import json

    import wire
    from hive._store import SCHEMA_VERSION
    from kmod._build import describe_object
    from node.cli import main

    assert main(["version", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info == {"version": importlib.metadata.version("sentinel-immune"), "wire": wire.WIRE_VERSION,
                    "wire_commands_since": wire.COMMANDS_SINCE, "store_schema": SCHEMA_VERSION,
                    "bpf_object": describe_object()}
    assert main(["version"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"immune-node {info['version']} (wire {wire.WIRE_VERSION}")
    assert out[1] == f"sensor BPF object: {info['bpf_object']}"
def test_hive_given_several_times_is_the_list_of_hive_nodes_in_order(tmp_path):
    from node import load_config
    from node.cli import _overrides

    args = build_parser().parse_args(["agent", "--hive", "tcp://10.0.0.1:7400", "--hive", "tcp://10.0.0.2:7400"])
    cfg = load_config(None, **_overrides(args))
    assert cfg.agent.endpoints == ["tcp://10.0.0.1:7400", "tcp://10.0.0.2:7400"]
    one = build_parser().parse_args(["agent", "--hive", "tcp://10.0.0.1:7400"])
    assert load_config(None, **_overrides(one)).agent.endpoints == ["tcp://10.0.0.1:7400"]
