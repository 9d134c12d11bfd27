"""Compile once, run everywhere: ``python -m kmod prebuild`` writes a CO-RE
object and its manifest; a host with no compiler loads it and refuses an exec;
a prebuilt object older than the sources is never loaded silently; a hook the
kernel lacks is left out and reported while the rest runs."""

import errno
import glob
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kmod._build as kbuild
import kmod._linux as klinux
from kmod import BuildError, KernelError, LinuxSensor
from wire import Exec, Notice

from .conftest import _REASON, collect, dropped_script, free_port, kernel, private_rules, run_child

pytestmark = kernel

ROOT = Path(__file__).resolve().parents[2]
# What a host without a compiler lacks; each is bind-mounted over by /dev/null.
TOOLS = ("/usr/bin/clang*", "/usr/lib/llvm-*/bin/clang*", "/usr/local/bin/clang*",
         "/usr/sbin/bpftool", "/usr/local/sbin/bpftool", "/sbin/bpftool")


def kmod_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    env.pop("IMMUNE_BPF_OBJECT", None)
    return env


def without_compiler(argv: list[str]) -> list[str]:
    """``argv`` in a mount namespace of its own where clang and bpftool are
    /dev/null (the host's stay as they are)."""
    hidden = sorted({os.path.realpath(p) for pattern in TOOLS for p in glob.glob(pattern)})
    mounts = "".join(f"mount --bind /dev/null {shlex.quote(p)} && " for p in hidden)
    script = f"{mounts}exec {shlex.join(argv)}"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory) -> Path:
    """A directory holding what ``python -m kmod prebuild`` made."""
    if _REASON is not None:
        pytest.skip(_REASON)
    out = tmp_path_factory.mktemp("prebuilt")
    done = subprocess.run([sys.executable, "-m", "kmod", "prebuild", "--out", str(out)],
                          env=kmod_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


def test_prebuild_writes_an_object_and_its_manifest(prebuilt):
    obj, manifest = kbuild.prebuilt_paths(prebuilt)
    assert obj.name == f"sensor.{kbuild.arch()}.bpf.o" and manifest.name == f"sensor.{kbuild.arch()}.json"
    data = obj.read_bytes()
    assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == 247  # EM_BPF
    info = json.loads(manifest.read_text())
    assert info["sources"] == kbuild.sources_digest()
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["arch"] == kbuild.arch() and "clang version" in info["clang"]
    assert time.time() - time.mktime(time.strptime(info["built"], "%Y-%m-%dT%H:%M:%SZ")) < 3600 + abs(time.timezone)


def stale_copy(prebuilt: Path, tmp_path: Path) -> Path:
    """The prebuilt object beside a manifest that names other sources."""
    obj, manifest = kbuild.prebuilt_paths(prebuilt)
    out = tmp_path / "stale"
    out.mkdir()
    (out / obj.name).write_bytes(obj.read_bytes())
    info = json.loads(manifest.read_text())
    info["sources"] = "0123456789abcdef"
    (out / manifest.name).write_text(json.dumps(info))
    return out


def test_prebuilt_object_runs_with_no_compiler_and_refuses_an_exec(prebuilt, workdir, tmp_path):
    port = free_port()
    policy = workdir / "policy.toml"
    policy.write_text(private_rules(workdir / "blocked", port))
    script = dropped_script(workdir / "blocked")
    cache, ready = tmp_path / "cache", tmp_path / "ready.json"
    cache.mkdir()
    argv = [sys.executable, "-m", "kmod", "run", "--policy", str(policy), "--ready", str(ready)]
    proc = subprocess.Popen(without_compiler(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=kmod_env(IMMUNE_KMOD_PREBUILT=str(prebuilt),
                                                    IMMUNE_KMOD_CACHE=str(cache)))
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and ready.exists(), proc.stderr.read() if proc.poll() is not None else ""
        blocked = run_child("exec", str(script))
        assert blocked.errno == errno.EPERM
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"IMMUNE: [BLOCKED] exec {script} (pid={blocked.pid})" in out.splitlines()
    obj = kbuild.prebuilt_paths(prebuilt)[0]
    assert f"kmod: BPF object {obj} (prebuilt: " in err
    assert list(cache.iterdir()) == []  # nothing was built


def test_stale_prebuilt_object_is_refused_without_compiler(prebuilt, tmp_path):
    stale = stale_copy(prebuilt, tmp_path)
    done = subprocess.run(without_compiler([sys.executable, "-m", "kmod", "run"]),
                          capture_output=True, text=True, timeout=30,
                          env=kmod_env(IMMUNE_KMOD_PREBUILT=str(stale), IMMUNE_KMOD_CACHE=str(tmp_path / "c")))
    assert done.returncode == 1
    obj = kbuild.prebuilt_paths(stale)[0]
    assert done.stderr.strip().splitlines() == [
        f"kmod: prebuilt BPF object {obj} is older than the sources (built from 0123456789abcdef, "
        f"sources are {kbuild.sources_digest()}): run 'python -m kmod prebuild' or install clang, "
        "bpftool and libbpf-dev to build from source"]


def test_stale_prebuilt_object_is_rebuilt_when_clang_is_here(prebuilt, tmp_path, monkeypatch):
    monkeypatch.setenv("IMMUNE_KMOD_PREBUILT", str(stale_copy(prebuilt, tmp_path)))
    monkeypatch.delenv("IMMUNE_BPF_OBJECT", raising=False)
    obj, origin = kbuild.choose_object()  # the default cache: most likely built already
    assert origin == "built from source (prebuilt object is stale)"
    assert obj.parent == kbuild.cache_dir() and obj.exists()


def test_explicit_object_comes_first(prebuilt, tmp_path, monkeypatch):
    stale = stale_copy(prebuilt, tmp_path)
    monkeypatch.setenv("IMMUNE_KMOD_PREBUILT", str(stale))
    obj = kbuild.prebuilt_paths(stale)[0]
    monkeypatch.setenv("IMMUNE_BPF_OBJECT", str(obj))
    assert kbuild.choose_object() == (obj, "IMMUNE_BPF_OBJECT")
    monkeypatch.setenv("IMMUNE_BPF_OBJECT", str(tmp_path / "none.bpf.o"))
    with pytest.raises(BuildError, match=r"^IMMUNE_BPF_OBJECT=.*none.bpf.o: no such file$"):
        kbuild.choose_object()


def test_no_btf_is_one_line(prebuilt, tmp_path, monkeypatch):
    import kmod._system as ksystem

    monkeypatch.setenv("IMMUNE_KMOD_PREBUILT", str(prebuilt))
    monkeypatch.setattr(ksystem, "BTF_PATH", tmp_path / "vmlinux")
    with pytest.raises(KernelError) as info:
        LinuxSensor().start()
    assert str(info.value) == (f"{tmp_path / 'vmlinux'} is missing: this kernel was built without BTF "
                               "(CONFIG_DEBUG_INFO_BTF=y), which the CO-RE programs need")


def test_missing_hooks_are_reported_and_the_rest_runs(prebuilt, workdir, tmp_path, monkeypatch):
    """One tracepoint this 'kernel' lacks (a tracefs without it, as libbpf
    would read it), one BTF raw tracepoint left out by name."""
    monkeypatch.setenv("IMMUNE_KMOD_PREBUILT", str(prebuilt))
    events = tmp_path / "events"
    real = klinux._tracing_events()
    for category in ("syscalls", "sched"):
        for entry in (real / category).iterdir():
            if entry.name != "sys_exit_ptrace":
                (events / category / entry.name).mkdir(parents=True)
    monkeypatch.setattr(klinux, "_tracing_events", lambda: events)
    policy = workdir / "policy.toml"
    policy.write_text(private_rules(workdir / "blocked", free_port()))
    script = dropped_script(workdir / "blocked")
    with pytest.raises(ValueError, match="no such program nope"):
        LinuxSensor(policy, skip_programs=["nope"]).start()
    sensor = LinuxSensor(policy, skip_programs=["on_signal"])
    sensor.start()
    try:
        att = sensor.attachments()
        assert att["off"] == ["exit_ptrace", "on_signal"]
        assert att["programs"] and len(att["links"]) > 10
        off = sensor.statistics().hooks_off
        assert off["exit_ptrace"] == "tracepoint/syscalls/sys_exit_ptrace: no such tracepoint in this kernel"
        assert off["on_signal"] == "tp_btf/signal_generate: left out (skip_programs)"
        notice = collect(sensor, lambda e: isinstance(e, Notice) and e.what == "hooks_off")[0]
        assert notice.count == 2 and "exit_ptrace: tracepoint/syscalls/sys_exit_ptrace" in notice.detail
        child = run_child("exec", str(script))
        assert child.errno == errno.EPERM
        ev = collect(sensor, lambda e: isinstance(e, Exec) and e.pid == child.pid and e.verdict == "block")[0]
        assert ev.filename == str(script)
    finally:
        sensor.close()


def test_neither_prebuilt_object_nor_compiler_is_one_line(tmp_path):
    done = subprocess.run(without_compiler([sys.executable, "-m", "kmod", "run"]),
                          capture_output=True, text=True, timeout=30,
                          env=kmod_env(IMMUNE_KMOD_PREBUILT=str(tmp_path), IMMUNE_KMOD_CACHE=str(tmp_path / "c")))
    assert done.returncode == 1
    obj = kbuild.prebuilt_paths(tmp_path)[0]
    assert done.stderr.strip().splitlines() == [
        f"kmod: no prebuilt BPF object {obj} for this architecture, and clang not found: install the "
        "Debian package clang (apt-get install clang), to build one from source"]
