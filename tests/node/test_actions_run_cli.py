"""``immune-node actions run``: an operator's own action from the command
line, checked as the console checks it; a refusal is one line and writes
nothing."""

import getpass
import time

import pytest

import wire
from hive import Store
from hive.playbook import Records
from node.cli import main


@pytest.fixture
def data(tmp_path):
    store = Store(tmp_path / "hive.db")
    store.agent_seen("web1", time.time(), hello=wire.Hello(agent="web1", hostname="web1", pid=999))
    store.close()
    return tmp_path


def rows(data):
    store = Store(data / "hive.db")
    try:
        return Records(store.db).actions()
    finally:
        store.close()


@pytest.mark.parametrize("argv, says", [
    (["kill_process", "--agent", "web1", "--pid", "0"], "pid must be a positive integer"),
    (["kill_process", "--agent", "web1", "--pid", "999"], "pid 999 is the agent itself"),
    (["kill_process", "--agent", "db9", "--pid", "5"], "agent 'db9' is unknown or revoked"),
    (["kill_process", "--agent", "web1"], "kill_process needs the pid"),
    (["block_connect", "--agent", "web1", "--address", "127.0.0.0/8"], "covers the hive's address 127.0.0.1/32"),
    (["isolate_host", "--agent", "web1", "--ttl", "-1"], "ttl must be"),
    (["frob", "--agent", "web1"], "cannot be run by hand"),
    ([], "name the ACTION"),
])
def test_bad_manual_actions_are_one_line_and_write_nothing(data, argv, says, capsys):
    assert main(["actions", "run", *argv, "--data", str(data)]) != 0
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err
    assert rows(data) == []


def test_a_manual_kill_is_recorded_for_the_hive_under_the_operators_name(data, capsys):
    assert main(["actions", "run", "kill_process", "--agent", "web1", "--pid", "4321", "--tree", "--why", "test",
                 "--data", str(data)]) == 0
    assert "kill_process pid=4321 tree=True on web1" in capsys.readouterr().out
    [row] = rows(data)
    assert (row.state, row.mode, row.params, row.reason) == (
        "requested", "manual", {"pid": 4321, "tree": True}, f"run by {getpass.getuser()}: test")


def test_run_flags_without_run_are_refused(data, capsys):
    assert main(["actions", "--pid", "5", "--data", str(data)]) != 0
    assert "go with `actions run`" in capsys.readouterr().err
