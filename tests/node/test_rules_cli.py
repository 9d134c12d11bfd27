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


def test_list_in_a_cluster_counts_every_nodes_hits_from_the_shared_store(tmp_path, capsys):
    """A node's sentinel saw only the batches it took from the shared queue;
    the store all nodes write to has every alert (a running local sentinel
    is not asked)."""
    store = Store(tmp_path / "hive.db")
    store.ingest([], [wire.Alert(id="a1", rule_id="f0e573d2-6313-4ebf-acd3-66449483759d", title="t", count=2),
                      wire.Alert(id="a2", rule_id="f0e573d2-6313-4ebf-acd3-66449483759d", title="t", count=1)])
    store.close()
    config = tmp_path / "immune.toml"
    config.write_text('[cluster]\nnats = ["nats://127.0.0.1:4222"]\nnode = "n1"\n')
    assert main(["rules", "list", "--config", str(config), "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "hits in the cluster's stored alerts (every node)" in out
    row = next(line for line in out.splitlines() if line.startswith("f0e573d2-6313-4ebf-acd3-66449483759d"))
    assert row.split()[2] == "3"
    (tmp_path / "hive.db").unlink()
    assert main(["rules", "list", "--config", str(config), "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("immune-node: rules list: the cluster's store cannot be read: no hive store at ")


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
