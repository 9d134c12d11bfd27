"""The executor's finished commands survive a restart: a command the hive
sends again is answered with its first result and not run twice."""

import logging

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


def test_binary_and_huge_values_are_not_stored(tmp_path):
    log = ResultLog(tmp_path / "results.jsonl")
    done = log.load()
    done["c0"] = r = result(0, archive=b"\0" * 10, manifest={"a": "x" * (MAX_VALUE + 1)}, bundle="/x")
    log.append(r, done)
    assert ResultLog(tmp_path / "results.jsonl").load()["c0"].data == {"bundle": "/x"}


def test_a_restarted_executor_does_not_run_a_repeated_command_again(tmp_path):
    pid = detached("exec sleep 300")
    wait_started(pid, "sleep")
    cmd = wire.Command(id="kill-1", action="kill_process", params={"pid": pid})
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
        r = Executor(data).execute(wire.Command(id="k1", action="kill_process", params={"pid": "x"}))
    assert (r.ok, r.detail) == (False, "pid must be a positive integer, not 'x'")
    assert any(getattr(x, "event", "") == "response.result_not_kept" for x in caplog.records)
