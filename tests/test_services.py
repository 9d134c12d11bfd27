"""The service files start commands the launcher accepts, and the rc.d
scripts are valid shell."""

import shlex
import subprocess
from pathlib import Path

import pytest

from node.cli import build_parser

SERVICES = Path(__file__).resolve().parent.parent / "services"


@pytest.mark.parametrize("unit", sorted((SERVICES / "systemd").glob("*.service")), ids=lambda p: p.name)
def test_systemd_units_start_a_valid_command(unit):
    execs = [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    assert len(execs) == 1
    argv = shlex.split(execs[0])
    assert argv[0].endswith("/immune-node")
    args = build_parser().parse_args(argv[1:])
    assert args.command == unit.stem.removeprefix("immune-")
    assert "KillSignal=SIGTERM" in unit.read_text()


@pytest.mark.parametrize("script", sorted((SERVICES / "rc.d").iterdir()), ids=lambda p: p.name)
def test_rc_scripts_are_valid_shell_and_start_their_role(script):
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    role = script.name.removeprefix("immune_")
    text = script.read_text()
    assert f"immune-node {role} --config" in text and f'rcvar="immune_{role}_enable"' in text
    argv = ["immune-node", role, "--config", "/usr/local/etc/immune/immune.toml"]
    assert build_parser().parse_args(argv[1:]).command == role
