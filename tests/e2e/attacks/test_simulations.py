"""Every attack procedure of simulations.py, run for real, raises an alert tagged with its
technique, from the events of its own processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import pytest

from hive import Store
from kmod._policy import HOOKS
from tests.kmod.conftest import kernel

from .conftest import Cgroup
from .simulations import SIMULATIONS, Simulation

pytestmark = kernel

SHELL = ("bash", "--norc", "--noprofile", "-s")
WAIT = float(os.environ.get("IMMUNE_ATTACK_WAIT", "20"))
"""Seconds an alert may take: the pipeline takes well under one."""


def _need(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


def _environment(sim: Simulation, work, home, port: int, victim: int, root, agent: int) -> dict[str, str]:
    n = uuid.uuid4().int
    return {
        **os.environ,
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(home), "FH": str(home), "W": str(work), "U": f"ia{uuid.uuid4().hex[:8]}",
        "LO": f"127.{1 + n % 250}.{n // 250 % 256}.{1 + n // 64000 % 250}",
        "PORT": str(port), "URL": f"http://127.0.0.1:{port}", "VICTIM": str(victim),
        "ESC": f"/var/lib/immune-attack-{uuid.uuid4().hex[:8]}", "AKB": str(root / "authorized_keys.saved"),
        "HB": str(root / "bash_history.saved"), "AGENT": str(agent),
    }


def _shell(script: str, env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(SHELL, input=f"{{ {script}\n}} </dev/null\n", text=True, env=env, cwd=cwd,
                          capture_output=True, timeout=60)


def tagged(db, tag: str, cgroup: int) -> list:
    """Alerts carrying ``tag`` that stand for an event of the procedure's cgroup."""
    store = Store(db, readonly=True)
    try:
        return [a for a in store.alerts(limit=5000) if tag in a.tags and any(e.cgroup == cgroup for e in a.events)]
    finally:
        store.close()


@pytest.mark.parametrize("sim", SIMULATIONS, ids=[s.id for s in SIMULATIONS])
def test_procedure_raises_its_technique(sim, attack_node, web, victim, attack_root):
    missing = [p for p in sim.needs if shutil.which(p) is None]
    if missing:
        _need(f"needs {', '.join(missing)}")
    absent = [h for h in sim.hooks if h not in HOOKS]
    if absent:  # what this tree's sensor cannot see yet, whatever the machine
        pytest.skip(f"the sensor has no {', '.join(absent)} hook")
    work = attack_root / sim.id
    home = work / "home"
    home.mkdir(parents=True)
    env = _environment(sim, work, home, web, victim, attack_root, attack_node.pid)
    group = Cgroup()
    try:
        # The shell joins the cgroup after its setup, so that neither its own start (by
        # Python) nor the setup's commands count: only the procedure's.
        ran = _shell(f"{sim.setup}\necho $$ > {group.path}/cgroup.procs\n{sim.script}", env, work)
        deadline = time.monotonic() + WAIT
        found = []
        while time.monotonic() < deadline:
            found = tagged(attack_node.db, sim.tag, group.id)
            if found:
                break
            time.sleep(0.25)
        assert found, (f"no alert tagged {sim.tag} for {sim.script!r} within {WAIT:.0f}s "
                       f"(exit {ran.returncode}: {ran.stderr.strip()[-300:]})")
    finally:
        if sim.cleanup:
            _shell(sim.cleanup, env, work)
        group.remove()
