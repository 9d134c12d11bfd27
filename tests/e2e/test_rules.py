"""Rules by default and repeats counted, against a real hive process and a scripted
agent over CURVE (no kernel needed): a rule firing twice within its suppression
window is one alert with count 2 and both events, acted on once; `rules list`
shows the hits; `rules update` swaps a new set into the running hive, and a
hostile archive leaves it as it was."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

import wire
from hive import Store

from .hosts import wait_until
from .nodes import IMMUNE_NODE
from .test_attacks import Hive

EXEC_FROM_TMP = "f0e573d2-6313-4ebf-acd3-66449483759d"  # builtin/seed, with the exec-from-temp playbook
MARKER = """title: E2E Marker Tool
id: 6a1e0c9e-5b7f-4f0e-9a57-3f8f2a0c1d11
status: test
author: SENTINEL IMMUNE tests
logsource: {product: linux, category: process_creation}
detection:
    selection: {Image|endswith: /e2e-marker-tool}
    condition: selection
level: high
"""


@pytest.fixture
def hive(tmp_path, start_node):
    return Hive(tmp_path, start_node)


def cli(data: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*IMMUNE_NODE, *args, "--data", str(data)], capture_output=True, text=True, timeout=120)


def alerts(data: Path, rule_id: str = "") -> list[wire.Alert]:
    store = Store(data / "hive.db", readonly=True)
    try:
        return [a for a in store.alerts(limit=1000) if a.rule_id == rule_id or not rule_id]
    finally:
        store.close()


def sentinel(hive: Hive) -> dict:
    return hive.actors()["hive.sentinel"].extra


def test_sigmahq_rules_run_by_default(hive):
    listed = [json.loads(line) for line in cli(hive.data, "rules", "list", "--json").stdout.splitlines()]
    loaded = [r for r in listed if r["loaded"]]
    assert {r["source"].split("/")[0] for r in loaded} == {"builtin", "sigmahq"}
    assert sentinel(hive)["rules_loaded"] == len(loaded)
    refused = [r for r in listed if not r["loaded"]]
    # a logsource we do not produce, or an auditd rule needing auditd's own rule keys or units
    assert refused and all(r["kind"] in ("logsource", "field") and r["reason"] for r in refused)


def test_a_rule_firing_twice_in_its_window_is_one_alert_counted_twice_acted_on_once(hive):
    agent = hive.agent("web1")
    # Two steps with the same program and command line, in other folders, by other processes.
    first = wire.Exec(pid=4001, ppid=1, filename="/tmp/stage.sh", cmdline="/tmp/stage.sh", cwd="/root")
    second = wire.Exec(pid=4002, ppid=1, filename="/tmp/stage.sh", cmdline="/tmp/stage.sh", cwd="/srv/www")
    agent.batch(events=[first])
    wait_until(lambda: len(alerts(hive.data, EXEC_FROM_TMP)) == 1, timeout=30, what="the first alert")
    agent.batch(events=[second])
    wait_until(lambda: alerts(hive.data, EXEC_FROM_TMP)[0].count == 2, timeout=30, what="the repeat counted")
    (alert,) = alerts(hive.data, EXEC_FROM_TMP)
    assert [(e.pid, e.cwd) for e in alert.events] == [(4001, "/root"), (4002, "/srv/www")]
    assert alert.last_seen > alert.time
    # SigmaHQ's "Potentially Suspicious Execution From Tmp Folder" fires too: two alerts, each
    # counted twice; the playbook saw each once, not their repeats.
    assert [a.count for a in alerts(hive.data)] == [2, 2]
    playbook = hive.actors()["hive.playbook"].extra
    assert (playbook["alerts"], playbook["suppressed"]) == (2, 0)
    shown = cli(hive.data, "alerts")
    assert shown.returncode == 0 and " 2 (last " in shown.stdout
    def listed() -> dict:
        return {r["id"]: r for r in map(json.loads, cli(hive.data, "rules", "list", "--json").stdout.splitlines())}
    # the sentinel publishes its hits once a second
    wait_until(lambda: listed()[EXEC_FROM_TMP]["hits"] == 2, timeout=10, what="rules list showing 2 hits")
    assert listed()[EXEC_FROM_TMP]["suppressed_by"] == ["Agent", "Image", "CommandLine"]


def make_zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def test_rules_update_swaps_a_new_set_into_the_running_hive_and_a_hostile_one_changes_nothing(hive, tmp_path):
    agent = hive.agent("web1")
    tool = wire.Exec(pid=5001, ppid=1, filename="/usr/local/bin/e2e-marker-tool", cmdline="e2e-marker-tool")
    release = make_zip(tmp_path / "sigma.zip", {"sigma/rules/linux/marker.yml": MARKER})
    done = cli(hive.data, "rules", "update", str(release))
    assert done.returncode == 0, done.stderr
    assert "the running hive loaded them" in done.stdout
    in_use = sentinel(hive)["rule_folders"]
    agent.batch(events=[tool])
    wait_until(lambda: any(a.title == "E2E Marker Tool" for a in alerts(hive.data)), timeout=30,
               what="an alert of the new set")

    hostile = make_zip(tmp_path / "evil.zip", {"../../../etc/cron.d/evil.yml": MARKER})
    refused = cli(hive.data, "rules", "update", str(hostile))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "leads outside" in refused.stderr and "unchanged" in refused.stderr
    assert not Path("/etc/cron.d/evil.yml").exists()
    assert sentinel(hive)["rule_folders"] == in_use and hive.restarts() == {}
