"""The systemd units the packages install keep the exposure services/README.md states."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "services" / "systemd"
README = UNITS.parent / "README.md"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("unit", ["immune-hive.service", "immune-agent.service"])
def test_exposure_is_what_the_readme_states(unit):
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNITS / unit)],
                         capture_output=True, text=True).stdout
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out).group(1)
    assert f"| `{unit}` | {score} " in README.read_text(), f"{unit}: exposure {score} is not the README's"


def test_hive_runs_unprivileged_and_agent_within_a_bounding_set():
    hive = (UNITS / "immune-hive.service").read_text()
    assert "User=immune" in hive and re.search(r"^CapabilityBoundingSet=$", hive, re.M)
    agent = (UNITS / "immune-agent.service").read_text()
    caps = re.search(r"^CapabilityBoundingSet=(.+)$", agent, re.M).group(1).split()
    assert {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_KILL"} <= set(caps)
    assert "CAP_SYS_MODULE" not in caps and "CAP_SETUID" not in caps
