"""The Debian packages: `packaging/build-debs.sh` (what `make packages` runs) builds
them once for this module; their control data and contents are read with dpkg-deb;
then they are installed into a throwaway overlay of this machine (in_root.sh), run
there without a compiler, removed and purged."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IN_ROOT = Path(__file__).with_name("in_root.sh")
PACKAGES = ("immune-common", "immune-hive", "immune-agent")
COMPILERS = ("clang", "llvm", "bpftool", "libbpf-dev", "gcc")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (apt-get install dpkg-dev)"),
]


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, IMMUNE_DEB_WORK=str(tmp_path_factory.mktemp("work")))
    proc = subprocess.run([str(ROOT / "packaging" / "build-debs.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = {p.name.split("_")[0]: p for p in out.glob("*.deb")}
    assert sorted(found) == sorted(PACKAGES)
    return found


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def contents(deb: Path) -> list[str]:
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    # "mode owner size date time ./path[ -> target]"
    return [line.split(None, 5)[5].split(" -> ")[0].removeprefix(".") for line in out.splitlines()]


def test_control_fields_and_dependencies(debs):
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    for name, deb in debs.items():
        assert field(deb, "Package") == name
        assert field(deb, "Architecture") == arch
        depends = [d.strip().split()[0] for d in field(deb, "Depends").split(",")]
        assert not set(depends) & set(COMPILERS), (name, depends)
    common = field(debs["immune-common"], "Depends")
    assert "python3 (>= 3.11)" in common
    agent = field(debs["immune-agent"], "Depends")
    assert "libbpf1" in agent and "immune-common (= " in agent


def test_conffile_and_layout(debs):
    info = subprocess.run(["dpkg-deb", "-I", str(debs["immune-common"]), "conffiles"],
                          capture_output=True, text=True, check=True).stdout
    assert info.split() == ["/etc/immune/immune.toml"]
    common = contents(debs["immune-common"])
    assert "/usr/bin/immune-node" in common and "/etc/immune/immune.toml" in common
    assert any(p.endswith("/site-packages/node/cli.py") for p in common)
    assert any(p.startswith("/usr/lib/immune/lib/python3.") and "/site-packages/zmq/" in p for p in common)
    # Nothing of the build machine travels: no BPF object in the shared code, no pip, no build path.
    assert not any("/kmod/prebuilt/" in p or "/site-packages/pip/" in p for p in common)
    assert "/lib/systemd/system/immune-hive.service" in contents(debs["immune-hive"])


def test_agent_ships_the_prebuilt_object(debs, tmp_path):
    agent = contents(debs["immune-agent"])
    assert "/lib/systemd/system/immune-agent.service" in agent
    objs = [p for p in agent if p.endswith(".bpf.o")]
    assert len(objs) == 1 and "/site-packages/kmod/prebuilt/sensor." in objs[0]
    assert any(p.endswith(".json") and "/kmod/prebuilt/" in p for p in agent)
    subprocess.run(["dpkg-deb", "-x", str(debs["immune-agent"]), str(tmp_path)], check=True)
    head = (tmp_path / objs[0].lstrip("/")).read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 247  # EM_BPF


def test_launcher_carries_no_build_path(debs, tmp_path):
    subprocess.run(["dpkg-deb", "-x", str(debs["immune-common"]), str(tmp_path)], check=True)
    text = (tmp_path / "usr/bin/immune-node").read_text()
    assert "/usr/lib/immune/bin/python" in text and str(ROOT) not in text
    cfg = (tmp_path / "usr/lib/immune/pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg and "command" not in cfg  # no build path


@pytest.fixture(scope="module")
def next_debs(debs, tmp_path_factory) -> dict[str, Path]:
    """The same packages as the next version (``VERSION+next1``): what an
    upgrade in place installs over the first."""
    out = tmp_path_factory.mktemp("next")
    version = field(debs["immune-common"], "Version")
    found = {}
    for name, deb in debs.items():
        tree = tmp_path_factory.mktemp(name)
        subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
        control = tree / "DEBIAN" / "control"
        control.write_text(control.read_text().replace(version, f"{version}+next1"))
        found[name] = out / f"{name}_{version}+next1.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(found[name])], check=True,
                       capture_output=True)
    return found


@pytest.mark.kernel
def test_an_upgrade_in_place_keeps_keys_spool_and_configuration_and_loses_no_event(debs, next_debs):
    """Events flow before, during (the hive down first, the agent spooling) and after an
    upgrade to the next version: each of the 150 marker execs is stored exactly once."""
    out = _in_root(debs, "install,upgrade,purge", upgrade=next(iter(next_debs.values())).parent)
    assert "ok: upgraded " in out and "keys and configuration kept" in out
    assert "ok: 150 events stored once across the upgrade" in out


def _in_root(debs, steps: str, upgrade: Path | None = None) -> str:
    if os.geteuid() != 0:
        pytest.skip("installs into an overlay of /: needs root")
    dist = next(iter(debs.values())).parent
    env = dict(os.environ, UPGRADE_DIST=str(upgrade or ""))
    proc = subprocess.run(["unshare", "-m", "-n", "--propagation", "private", "bash", str(IN_ROOT), str(dist), steps],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stdout[-6000:] + proc.stderr[-2000:]
    return proc.stdout


def test_install_remove_keeps_data_purge_removes_all(debs):
    out = _in_root(debs, "install,remove,purge")
    assert "ok: removed; /var/lib/immune and /etc/immune/immune.toml kept" in out
    assert "ok: purged; nothing left" in out


@pytest.mark.kernel
def test_installed_agent_refuses_an_exec_without_a_compiler(debs):
    """The hive as the user immune, the agent enrolled and run within the unit's bounding set,
    clang and bpftool removed: an exec from /tmp is refused and its alert is at the hive."""
    out = _in_root(debs, "install,run,purge")
    assert "ok: exec refused" in out and "ok: alert stored" in out
