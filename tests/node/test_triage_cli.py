"""``immune-node triage ID``: an incident's stored AI verdicts as text or
JSON; asking for a new one without a hive to answer ends after --wait with
the request kept; with [ai] unset it asks for nothing."""

import json

import pytest

from hive import Store
from hive.correlate import Incident
from node.cli import main

VERDICT = {"severity": "medium", "techniques": ["T1003.008"], "explanation": "read /etc/shadow",
           "playbook": "", "confidence": 0.6}


@pytest.fixture
def data(tmp_path):
    store = Store(tmp_path / "hive.db")
    store.ingest([], incidents=[Incident(id="inc-1", title="t", opened=1.0, updated=1.0),
                                Incident(id="inc-2", title="t", opened=1.0, updated=1.0)])
    store.add_triage("inc-1", state="failed", requested_by="auto", reason="over budget: 60 calls in the last hour")
    store.add_triage("inc-1", state="done", requested_by="operator:bob", model="llama3.1:8b", verdict=VERDICT,
                     seconds=4.25, calls=2)
    store.close()
    (tmp_path / "ai.toml").write_text('[ai]\nurl = "http://127.0.0.1:9/v1"\nmodel = "m"\n')
    (tmp_path / "off.toml").write_text("")
    return tmp_path


def run(data, capsys, *args, config="off.toml"):
    code = main(["triage", *args, "--data", str(data), "--config", str(data / config)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_latest_verdict_and_the_history(data, capsys):
    code, out, _ = run(data, capsys, "inc-1")
    assert code == 0
    assert out.splitlines() == [
        out.splitlines()[0],
        "  techniques: T1003.008", "  recommended playbook: -", "  explanation: read /etc/shadow"]
    assert out.startswith("incident inc-1: verdict medium (confidence 0.60) from llama3.1:8b in 4.2 s (operator:bob, ")
    assert out.splitlines()[0].endswith(", 2 calls)")
    code, out, _ = run(data, capsys, "inc-1", "--all", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["state"] for r in rows] == ["done", "failed"] and rows[0]["verdict"] == VERDICT
    assert rows[1]["reason"].startswith("over budget") and rows[1]["calls"] == 0


def test_asking_without_ai_or_without_a_hive(data, capsys):
    code, _, err = run(data, capsys, "inc-2")
    assert code == 1 and "AI triage is off: set [ai] url and model" in err
    code, _, err = run(data, capsys, "nope")
    assert code == 1 and "no incident 'nope'" in err
    code, _, err = run(data, capsys, "inc-2", "--wait", "0.5", config="ai.toml")
    assert code == 1 and "no triage of inc-2 within 0.5 s: is the hive running with [ai] url set?" in err
    store = Store(data / "hive.db")
    try:
        assert store.triage_requests() == [("inc-2", "cli")]  # done when a hive comes
    finally:
        store.close()
