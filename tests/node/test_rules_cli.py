"""`immune-node rules list` and `rules update` without a running hive (the e2e tests
run them against one): what they print and how they exit."""

import json
import os

import wire
from hive import Store
from hive.sigma import SIGMAHQ_RULES
from node.cli import main


def test_list_without_a_hive_counts_hits_from_the_stored_alerts(tmp_path, capsys):
    store = Store(tmp_path / "hive.db")
    store.ingest([], [wire.Alert(id="a1", rule_id="f0e573d2-6313-4ebf-acd3-66449483759d", title="t", count=3)])
    store.close()
    assert main(["rules", "list", "--json", "--data", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    hits = {r["id"]: r["hits"] for r in rows if r["loaded"]}
    assert hits["f0e573d2-6313-4ebf-acd3-66449483759d"] == 3 and sum(hits.values()) == 3
    assert main(["rules", "list", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "hits in the stored alerts (no hive runs)" in out and "\nnot loaded (30):\n" in out


def test_update_without_a_hive_installs_for_its_next_start(tmp_path, capsys):
    assert main(["rules", "update", str(SIGMAHQ_RULES), "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "installed 248 rule files" in out and "no hive runs with this data folder" in out
    assert os.readlink(tmp_path / "rules" / "sigmahq").startswith("sigmahq-")


def test_update_from_a_broken_source_is_one_line_and_exit_1(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "x.yml").write_text("logsource: {product: linux\n")
    assert main(["rules", "update", str(tmp_path / "src"), "--data", str(tmp_path / "data")]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("immune-node: rules update: ") and "the rules in use are unchanged" in captured.err
    assert not (tmp_path / "data" / "rules" / "sigmahq").exists()
