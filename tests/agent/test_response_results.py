"""The executor's finished commands survive a restart: a command the hive
sends again is answered with its first result and not run twice."""

import logging

import msgspec

import wire
from agent.response import Executor
from agent.response._results import MAX_VALUE, ResultLog

from .test_response_process import detached, wait_started


def result(i: int, **data) -> wire.CommandResult:
    return wire.CommandResult(command=f"c{i}", ok=True, detail=f"done {i}", data=data)


def test_results_round_trip_newest_last(tmp_path):
    log = ResultLog(tmp_path / "results.jsonl", keep=10)
    done = log.load()
    for i in range(3):
        done[f"c{i}"] = r = result(i, pid=100 + i, killed=[100 + i])
        log.append(r, done)
    back = ResultLog(tmp_path / "results.jsonl", keep=10).load()
    assert list(back) == ["c0", "c1", "c2"] and back["c1"] == result(1, pid=101, killed=[101])


def test_a_torn_last_line_is_skipped_and_said(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    log = ResultLog(path)
    done = log.load()
    done["c0"] = result(0)
    log.append(done["c0"], done)
    with open(path, "ab") as f:
        f.write(b'{"type":"result","command":"c1","ok":tr')  # the crash came mid-append
    with caplog.at_level(logging.WARNING):
        back = ResultLog(path).load()
    assert list(back) == ["c0"]
    assert any(getattr(r, "event", "") == "response.results_skipped" for r in caplog.records)


def test_a_line_nested_too_deep_or_out_of_bounds_is_skipped(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    log = ResultLog(path)
    done = log.load()
    done["c0"] = result(0)
    log.append(done["c0"], done)
    with open(path, "ab") as f:
        f.write(b'{"type":"result","command":"c1","data":{"k":' + b"[" * 100_000 + b"]" * 100_000 + b"}}\n")
        f.write(b'{"type":"result","command":"c2","data":{"k":' + str(2**64).encode() + b"}}\n")
    with caplog.at_level(logging.WARNING):
        assert list(ResultLog(path).load()) == ["c0"]
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "response.results_skipped"]
    assert "lines=2" in record.getMessage()


def test_the_file_is_compacted_to_the_newest(tmp_path):
    path = tmp_path / "results.jsonl"
    log = ResultLog(path, keep=5)
    done = log.load()
    for i in range(23):
        done[f"c{i}"] = result(i)
        while len(done) > 5:
            done.popitem(last=False)
        log.append(done[f"c{i}"], done)
    assert len(path.read_bytes().splitlines()) <= 10
    assert list(ResultLog(path, keep=5).load()) == [f"c{i}" for i in range(18, 23)]


def test_the_archive_and_huge_values_are_not_stored(tmp_path):
    log = ResultLog(tmp_path / "results.jsonl")
    done = log.load()
    r = result(0, manifest={"a": "x" * (MAX_VALUE + 1)}, bundle="/x")
    done["c0"] = r = msgspec.structs.replace(r, archive=b"\0" * 10)
    log.append(r, done)
    back = ResultLog(tmp_path / "results.jsonl").load()["c0"]
    assert (back.data, back.archive) == ({"bundle": "/x"}, b"")


def test_a_restarted_executor_does_not_run_a_repeated_command_again(tmp_path):
    pid = detached("exec sleep 300")
    wait_started(pid, "sleep")
    cmd = wire.KillProcess(id="kill-1", pid=pid)
    first = Executor(tmp_path / "agent").execute(cmd)
    assert first.ok and pid in first.data["killed"]
    again = Executor(tmp_path / "agent").execute(cmd)
    assert again.ok and again.data == first.data
    assert again.detail == f"already done (command repeated): {first.detail}"


def test_results_that_cannot_be_kept_are_said_and_the_command_still_answered(tmp_path, caplog):
    data = tmp_path / "agent"
    (data / "response").mkdir(parents=True)
    (data / "response" / "results.jsonl").mkdir()  # not a file: every append fails
    with caplog.at_level(logging.ERROR):
        r = Executor(data).execute(wire.KillProcess(id="k1", pid=wire.PID_MAX))  # no such process
    assert (r.ok, r.detail) == (True, f"pid {wire.PID_MAX} was already gone")
    assert any(getattr(x, "event", "") == "response.result_not_kept" for x in caplog.records)
