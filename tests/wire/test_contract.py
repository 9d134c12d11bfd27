"""The wire contract's bounds: every value out of range is refused when the
frame is decoded, with a reason naming the field, and nothing a real kernel
or agent produces is (a maximal event still round-trips)."""

import math

import msgspec
import pytest

import wire
from actors import Codec, DecodeError
from hive._messages import Ingest, InternalMessage

AGENT = Codec(wire.AgentMessage)
HIVE = Codec(wire.HiveMessage)
BIG = 2**63


def batch(*events, seq=1):
    return wire.EventBatch(seq=seq, stream="s", events=list(events))


def refused(codec, msg) -> str:
    """The reason decoding ``msg`` (built without checks, as a peer could)
    is refused."""
    with pytest.raises(DecodeError) as e:
        codec.decode(codec.encode(msg))
    return str(e.value)


OUT_OF_RANGE = [
    (batch(wire.Exec(pid=BIG)), "Expected `int` <= 4194304 - at `$[1].events[0].pid`"),
    (batch(wire.Exec(pid=wire.PID_MAX + 1)), "<= 4194304 - at `$[1].events[0].pid`"),
    (batch(wire.Exec(tid=-1)), ">= 0 - at `$[1].events[0].tid`"),
    (batch(wire.Fork(child_pid=-5)), ">= 0 - at `$[1].events[0].child_pid`"),
    (batch(wire.Open(uid=2**32)), "<= 4294967295 - at `$[1].events[0].uid`"),
    (batch(wire.Open(time=2**64 - 1)), "<= 9223372036854775807 - at `$[1].events[0].time`"),
    (batch(wire.Open(time=-1)), ">= 0 - at `$[1].events[0].time`"),
    (batch(wire.Open(cgroup=BIG)), "- at `$[1].events[0].cgroup`"),
    (batch(wire.Open(flags=2**32)), "- at `$[1].events[0].flags`"),
    (batch(wire.Open(count=-1)), "- at `$[1].events[0].count`"),
    (batch(wire.Open(result=2**31)), "- at `$[1].events[0].result`"),
    (batch(wire.Exit(code=256)), "<= 255 - at `$[1].events[0].code`"),
    (batch(wire.SetId(old=-2)), ">= -1 - at `$[1].events[0].old`"),
    (batch(wire.Connect(port=65536)), "<= 65535 - at `$[1].events[0].port`"),
    (batch(wire.Bind(family=-1)), "- at `$[1].events[0].family`"),
    (batch(wire.Notice(count=BIG)), "- at `$[1].events[0].count`"),
    (batch(wire.Open(path="/" + "x" * wire.MAX_PATH)), "length <= 4096 - at `$[1].events[0].path`"),
    (batch(wire.Exec(argv=["a"] * (wire.MAX_ARGV + 1))), "length <= 4096 - at `$[1].events[0].argv`"),
    (batch(wire.Exec(argv=["x" * (wire.MAX_ARG + 1)])), "length <= 4096 - at `$[1].events[0].argv[0]`"),
    (batch(wire.Exec(cmdline="x" * (wire.MAX_CMDLINE + 1))), "- at `$[1].events[0].cmdline`"),
    (batch(wire.Exec(comm="x" * (wire.MAX_NAME + 1))), "length <= 256 - at `$[1].events[0].comm`"),
    (batch(wire.Notice(detail="x" * (wire.MAX_TEXT + 1))), "- at `$[1].events[0].detail`"),
    (batch(wire.Profile(cgroup_path="/" + "x" * wire.MAX_PATH)), "length <= 4096 - at `$[1].events[0].cgroup_path`"),
    (batch(wire.Profile(cgroup_path=17)), "Expected `str`, got `int` - at `$[1].events[0].cgroup_path`"),
    (batch(seq=0), "Expected `int` >= 1 - at `$[1].seq`"),
    (batch(seq=-1), ">= 1 - at `$[1].seq`"),
    (batch(seq=BIG), "- at `$[1].seq`"),
    (batch(*[wire.Fork()] * (wire.MAX_BATCH + 1)), "length <= 4096 - at `$[1].events`"),
    (wire.Hello(agent="a", pid=BIG), "- at `$[1].pid`"),
    (wire.Hello(agent="a", addresses=["10.0.0.1"] * (wire.MAX_ADDRESSES + 1)), "- at `$[1].addresses`"),
    (wire.Hello(agent="a" * 257), "- at `$[1].agent`"),
    (wire.Heartbeat(spooled=2**64 - 1), "- at `$[1].spooled`"),
    (wire.Heartbeat(dropped=-1), "- at `$[1].dropped`"),
    (wire.CommandResult(command="c", data={"n": BIG}), "- at `$[1].data[...]`"),
    (wire.CommandResult(command="c", data={"a": [[[[[1]]]]]}), "got `array` - at `$[1].data[...][0][0][0][0]`"),
    (wire.CommandResult(command="c", data={"a": "x" * (wire.MAX_TEXT + 1)}), "- at `$[1].data[...]`"),
    (wire.CommandResult(command="c", data={"a": b"bytes"}), "got `bytes` - at `$[1].data[...]`"),
    (wire.CommandResult(command="c", data={"a": list(range(wire.MAX_ITEMS + 1))}), "- at `$[1].data[...]`"),
    (wire.CommandResult(command="c", detail="x" * (wire.MAX_TEXT + 1)), "- at `$[1].detail`"),
    (wire.CommandResult(command="c", archive=bytes(wire.MAX_ARCHIVE + 1)), "- at `$[1].archive`"),
]


@pytest.mark.parametrize("msg,reason", OUT_OF_RANGE, ids=[f"{i}" for i in range(len(OUT_OF_RANGE))])
def test_a_value_out_of_range_is_refused_with_the_field_named(msg, reason):
    why = refused(AGENT, msg)
    assert why.startswith("wrong message: ") and reason in why, why


def test_nothing_from_an_agent_can_become_the_hives_own_seq_0():
    """Inside the hive seq 0 marks its own events (never deduplicated); an
    agent's batch cannot have it, the hive's own notices still can."""
    assert "Expected `int` >= 1 - at `$[1].seq`" in refused(AGENT, batch(wire.Open(path="/x"), seq=0))
    internal = Codec(InternalMessage)
    own = Ingest(agent="a", events=[wire.Notice(what="agent_offline")])
    assert internal.decode(internal.encode(own)) == own
    assert "- at `$[1].seq`" in refused(internal, Ingest(agent="a", seq=-1))


def test_the_hives_messages_are_bounded_too():
    assert ">= 0 - at `$[1].seq`" in refused(HIVE, wire.Ack(seq=-1))
    assert HIVE.decode(HIVE.encode(wire.Ack(seq=0, stream="s"))) == wire.Ack(seq=0, stream="s")
    assert "- at `$[1].expires`" in refused(HIVE, wire.KillProcess(id="k", pid=5, expires=-1))
    assert "- at `$[1].id`" in refused(HIVE, wire.Unisolate(id="x" * 257))
    assert "- at `$[1].token`" in refused(Codec(wire.Enroll), wire.Enroll(token="x" * 257, agent="a"))


def maximal_exec() -> wire.Exec:
    big_path = "/" + "p" * (wire.MAX_PATH - 1)
    return wire.Exec(
        time=wire.INT64_MAX, pid=wire.PID_MAX, tid=wire.PID_MAX, ppid=wire.PID_MAX, uid=2**32 - 1,
        euid=2**32 - 1, gid=2**32 - 1, comm="c" * wire.MAX_NAME, cgroup=wire.INT64_MAX, verdict="block",
        rule="r" * wire.MAX_NAME, agent="a" * wire.MAX_NAME, image=big_path, cmdline="x" * wire.MAX_CMDLINE,
        parent_image=big_path, parent_cmdline="y" * wire.MAX_CMDLINE, user="u" * wire.MAX_NAME,
        sha256="f" * 64, unit="u" * wire.MAX_NAME, container="k" * wire.MAX_NAME, cwd=big_path,
        filename=big_path, exe=big_path, argv=["\U0001F600" * wire.MAX_ARG] * 4 + [""] * (wire.MAX_ARGV - 4),
        argv_truncated=True, result=-(2**31))


def test_a_maximal_legal_event_round_trips():
    events = [maximal_exec(), wire.Open(path="/" + "\n" * (wire.MAX_PATH - 1), flags=2**32 - 1, result=2**31 - 1,
                                        count=2**32 - 1),
              wire.SetId(old=-1, new=2**32 - 1), wire.Exit(code=-128), wire.Exit(code=255),
              wire.Connect(family=10, port=65535, src_port=65535, address="ffff:" * 7 + "ffff",
                           hostname="h" * wire.MAX_NAME),
              wire.Notice(count=wire.INT64_MAX, detail="d" * wire.MAX_TEXT)]
    msg = wire.EventBatch(seq=wire.INT64_MAX, stream="s" * wire.MAX_NAME, events=events)
    assert AGENT.decode(AGENT.encode(msg)) == msg


def test_a_full_batch_and_a_maximal_result_round_trip():
    msg = wire.EventBatch(seq=1, events=[wire.Fork(pid=i % wire.PID_MAX) for i in range(wire.MAX_BATCH)])
    assert AGENT.decode(AGENT.encode(msg)) == msg
    deep = {"files": {"exe": {"sizes": [1, -1.5, None, True, "x" * wire.MAX_TEXT, -(2**63)]}}}
    result = wire.CommandResult(command="c" * wire.MAX_NAME, ok=True, detail="d" * wire.MAX_TEXT,
                                data={"manifest": deep, "killed": list(range(wire.MAX_ITEMS))},
                                archive=bytes(wire.MAX_ARCHIVE))
    assert AGENT.decode(AGENT.encode(result)) == result


@pytest.mark.parametrize("args", [b"\0" * 1280, b"\xff" * 1280], ids=["most-arguments", "longest-argument"])
def test_the_largest_exec_the_kernel_decoder_makes_is_within_the_bounds(args):
    """An exec record (kmod/bpf/sensor.h) with every field at its largest
    and names that are not UTF-8, through the real decoder."""
    from kmod import Decoder, Policy
    from kmod import _decode as k

    head = (k.K_EXEC, k.F_ARGS_TRUNC | k.F_PATH_TRUNC, 0, wire.PID_MAX, wire.PID_MAX, wire.PID_MAX, 2**32 - 1,
            2**32 - 1, 2**32 - 1, wire.PID_MAX, 2**61, 2**62, b"\xff" * 16, 2**32 - 1, 2**32 - 1)
    record = k._EXEC.pack(*head, 0, len(args), 0, b"\xff" * 256, args)
    pathbuf = k._PATHBUF.pack(k.COMP_MAX, b"\xff" * (k.COMP_MAX * k.COMP_LEN))
    event = Decoder(Policy(), clock_offset_ns=2**61).decode(record + pathbuf + pathbuf)  # exe, then cwd
    assert len(event.exe) == len(event.cwd) > 1000 and len(event.filename) == 256
    assert max(len(event.argv), len(event.argv[0])) == 1280
    msg = batch(event)
    assert AGENT.decode(AGENT.encode(msg)) == msg


@pytest.mark.parametrize("cls,params,reason", [
    (wire.KillProcess, {"pid": 0}, "Expected `int` >= 1 - at `$.pid`"),
    (wire.KillProcess, {"pid": 5, "signal": "HUP"}, "Invalid enum value 'HUP' - at `$.signal`"),
    (wire.KillProcess, {"pid": 5, "exe": "bash"}, "- at `$.exe`"),
    (wire.BlockConnect, {}, "block_connect needs one of address, port"),
    (wire.BlockConnect, {"address": "10.0.0.300"}, "address: '10.0.0.300' does not appear to be"),
    (wire.BlockConnect, {"port": [22, 0]}, "Expected `int` >= 1 - at `$.port[1]`"),
    (wire.BlockConnect, {"port": list(range(1, 1026))}, "- at `$.port`"),
    (wire.BlockConnect, {"port": 22, "ttl": -1}, "Expected `float` >= 0.0 - at `$.ttl`"),
    (wire.BlockConnect, {"port": 22, "ttl": wire.MAX_TTL + 1}, "- at `$.ttl`"),
    (wire.BlockConnect, {"port": 22, "ttl": math.nan}, "- at `$.ttl`"),
    (wire.BlockExec, {}, "block_exec needs one of path, glob, sha256"),
    (wire.BlockExec, {"glob": "*.sh"}, "- at `$.glob`"),
    (wire.BlockExec, {"path": "relative/x"}, "- at `$.path`"),
    (wire.BlockExec, {"path": "/a\0b"}, "- at `$.path`"),
    (wire.BlockExec, {"sha256": "ab"}, "- at `$.sha256`"),
    (wire.IsolateHost, {"allow": ["10.0.0.1", "nope"]}, "allow: 'nope' does not appear to be"),
    (wire.Unblock, {"rule": ""}, "length >= 1 - at `$.rule`"),
    (wire.QuarantineFile, {}, "Object missing required field `path`"),
    (wire.CollectEvidence, {"pid": wire.PID_MAX + 1}, "- at `$.pid`"),
])
def test_commands_are_typed_and_checked_at_decoding(cls, params, reason):
    with pytest.raises(msgspec.ValidationError) as e:
        msgspec.convert({"id": "c", **params}, cls)
    assert reason in str(e.value), str(e.value)
    frame = msgspec.msgpack.encode([1, {"type": cls.__struct_config__.tag, "id": "c", **params}])
    with pytest.raises(DecodeError):
        HIVE.decode(frame)


def test_a_command_is_one_struct_per_action_with_its_tag_on_the_wire():
    cmd = wire.BlockExec(id="c1", path="/tmp/\U0001F600", sha256="AB" * 32, ttl=600, expires=5)
    assert cmd.sha256 == "ab" * 32  # one spelling of a digest
    assert msgspec.msgpack.decode(HIVE.encode(cmd))[1] == {
        "type": "block_exec", "id": "c1", "expires": 5, "path": "/tmp/\U0001F600", "sha256": "ab" * 32, "ttl": 600.0}
    back = HIVE.decode(HIVE.encode(cmd))
    assert back == cmd and back.action == "block_exec" and isinstance(back, wire.Command)
    assert set(wire.COMMANDS) == {"kill_process", "block_connect", "block_exec", "isolate_host", "unisolate",
                                  "unblock", "quarantine_file", "collect_evidence", "isolate_container",
                                  "unisolate_container", "update_profile"}


def test_a_profile_from_an_agent_before_cgroup_path_still_decodes():
    class OldProfile(wire.Event, tag="profile"):  # wire.Profile as it was before the field
        workload: str = ""
        state: str = ""
        revision: int = 0
        items: int = 0
        profile_version: int = 0
        body: bytes = b""

    got = AGENT.decode(AGENT.encode(batch(OldProfile(workload="cgroup:7", state="stable", body=b"\x80"))))
    [ev] = got.events
    assert type(ev) is wire.Profile and ev.workload == "cgroup:7" and ev.cgroup_path == ""
