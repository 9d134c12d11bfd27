"""The BPF build: cached by content, rebuilt when a source changes, and
clear errors when a tool, a header, BTF or root is missing."""

import os
import shutil
import time

import pytest

import kmod._build as kbuild
from kmod import BuildError, KernelError, LinuxSensor, PrivilegeError, Scope, ScopeError, build


@pytest.fixture
def sources(tmp_path, monkeypatch):
    src = tmp_path / "bpf"
    shutil.copytree(kbuild.SOURCE_DIR, src)
    monkeypatch.setattr(kbuild, "SOURCE_DIR", src)
    return src


def test_cached_until_a_source_changes(tmp_path, sources):
    cache = tmp_path / "cache"
    first = build(cache=cache)
    assert first.exists() and first.suffix == ".o" and first.name.endswith(".bpf.o")
    assert (next(cache.glob("btf-*")) / "vmlinux.h").stat().st_size > 1_000_000
    stamp = first.stat().st_mtime_ns
    began = time.monotonic()
    assert build(cache=cache) == first
    assert first.stat().st_mtime_ns == stamp and time.monotonic() - began < 1.0

    with open(sources / "sensor.h", "a") as f:
        f.write("/* changed */\n")
    second = build(cache=cache)
    assert second != first and second.exists()
    assert not first.exists()  # the stale object is pruned


def test_compile_errors_are_reported(tmp_path, sources):
    with open(sources / "sensor.bpf.c", "a") as f:
        f.write("this is not C;\n")
    with pytest.raises(BuildError, match="compiling the BPF programs failed") as info:
        build(cache=tmp_path / "cache")
    assert "sensor.bpf.c" in str(info.value)


@pytest.fixture
def bare_path(tmp_path, monkeypatch):
    """A PATH holding only what the test links into it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(kbuild, "_EXTRA_PATH", ())
    return bin_dir


def test_missing_clang_names_the_package(bare_path):
    with pytest.raises(BuildError, match=r"clang not found: install the Debian package clang"):
        build()


def test_missing_bpftool_names_the_package(bare_path):
    (bare_path / "clang").symlink_to(shutil.which("clang", path="/usr/bin:/usr/local/bin"))
    with pytest.raises(BuildError, match="bpftool not found: install the Debian package bpftool"):
        build()


def test_missing_libbpf_headers_name_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(kbuild, "LIBBPF_HEADER", tmp_path / "bpf_helpers.h")
    with pytest.raises(BuildError, match="install the Debian package libbpf-dev"):
        build()


def test_kernel_without_btf(monkeypatch, tmp_path):
    monkeypatch.setattr(kbuild, "BTF_PATH", tmp_path / "vmlinux")
    with pytest.raises(KernelError, match="without BTF"):
        build(cache=tmp_path / "cache")


def test_not_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PrivilegeError, match="needs root"):
        LinuxSensor().start()


def test_bad_arguments():
    with pytest.raises(ValueError, match="ring_size"):
        LinuxSensor(ring_size=1000)
    with pytest.raises(ValueError, match="watchdog_bound"):
        LinuxSensor(watchdog_bound=0)
    with pytest.raises(ScopeError, match="expected machine, cgroup:PATH, netns:PATH or container:SELECTOR"):
        Scope.parse("jail:x")
    assert Scope.parse("netns:blue") == Scope.netns("/run/netns/blue")
    with pytest.raises(ScopeError, match="network namespace '/run/netns/no-such-ns'"):
        Scope.netns("/run/netns/no-such-ns").resolve()
    with pytest.raises(ScopeError, match="does not exist under the cgroup2 mount"):
        Scope.cgroup("no/such/group").resolve()
