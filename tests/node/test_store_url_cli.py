"""The CLI reads and writes whichever store ``[store] url`` names: the same
commands on a PostgreSQL store, and one line when it cannot be reached."""

import io
import json
import time
from pathlib import Path

import pytest

import kmod
import wire
from hive import Ingest, Store
from node.cli import main
from tests.ports import free_port


def config(tmp_path, url: str):
    f = tmp_path / "immune.toml"
    f.write_text(f"[node]\ndata = '{tmp_path / 'data'}'\n[store]\nurl = '{url}'\n")
    return str(f)


def test_the_commands_read_and_write_a_postgresql_store(tmp_path, pg_url, capsys, monkeypatch):
    store = Store(pg_url)
    now = time.time_ns()
    store.ingest([Ingest(agent="web-1", stream="s", seq=1, events=[
        wire.Exec(time=now, pid=4242, filename="/usr/bin/curl", argv=["curl", "x"])])],
        alerts=[wire.Alert(id="a1", rule_id="r1", title="curl piped to a shell", level="high", agent="web-1",
                           time=now)])
    store.close()
    cfg = config(tmp_path, pg_url)
    assert main(["alerts", "--json", "--config", cfg]) == 0
    alerts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(a["id"], a["title"]) for a in alerts] == [("a1", "curl piped to a shell")]
    assert main(["events", "--json", "--config", cfg]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["pid"], e["agent"]) for e in events] == [(4242, "web-1")]
    assert main(["enroll", "add", "db-1", "K" * 40, "--config", cfg]) == 0
    capsys.readouterr()
    assert main(["agents", "--json", "--config", cfg]) == 0
    assert "db-1" in [a["id"] for a in json.loads(capsys.readouterr().out)]
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main(["users", "add", "ada", "--role", "admin", "--config", cfg]) == 0
    capsys.readouterr()
    assert main(["users", "list", "--config", cfg]) == 0
    assert "ada" in capsys.readouterr().out
    policy = str(Path(kmod.__file__).with_name("default_policy.toml"))
    assert main(["policy", "push", "web", "--labels", "role=web", "--policy", policy, "--config", cfg]) == 0
    assert main(["agents", "label", "db-1", "role=web", "--config", cfg]) == 0
    capsys.readouterr()
    assert main(["policy", "history", "--json", "--config", cfg]) == 0
    (pushed,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (pushed["name"], pushed["version"], pushed["labels"]) == ("web", 1, {"role": "web"})
    assert main(["actions", "run", "kill_process", "--agent", "db-1", "--pid", "4242", "--config", cfg]) == 0
    capsys.readouterr()
    assert main(["actions", "--json", "--config", cfg]) == 0
    (action,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (action["action"], action["agent"]) == ("kill_process", "db-1")


def test_an_unreachable_postgresql_store_is_one_line(tmp_path, capsys):
    port = free_port()
    cfg = config(tmp_path, f"postgresql://immune:secret@127.0.0.1:{port}/immune")
    assert main(["alerts", "--config", cfg]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "secret" not in err
    assert err.startswith(f"immune-node: cannot open the store postgresql://immune@127.0.0.1:{port}/immune: ")
    assert "Connection refused" in err


def test_a_hive_whose_postgresql_refuses_the_password_stops_with_one_line(tmp_path, pg_server, capsys):
    url = pg_server.url.replace(":immune-test@", ":wrong@")
    assert main(["hive", "--config", config(tmp_path, url), "--listen", f"tcp://127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wrong" not in err
    assert err.startswith(f"immune-node: cannot open the store postgresql://immune@127.0.0.1:{pg_server.port}/immune: ")
    assert 'password authentication failed for user "immune"' in err
