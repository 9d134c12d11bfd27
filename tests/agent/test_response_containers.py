"""Responses in a container's own view, with real runc containers
(tests/containers.py): kills across pid namespaces, quarantine of the
container's file (not the host's), isolate_container, and evidence of a
process that has already exited.

Tests that load the kernel sensor are marked ``kernel`` (run them under
``flock /tmp/immune-kernel.lock``); the others need root, runc and
busybox-static only."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from agent.response import Executor
from tests.containers import Container

from .test_response_process import alive, children_of, detached, run, wait_started

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")


def test_a_containers_process_tree_is_killed(tmp_path):
    """The sensor reports host pids; the tree lives in the container's pid
    namespace (busybox sh runs its last command in place: sleep 301 is the
    shell, sleep 300 its child)."""
    executor = Executor(tmp_path / "agent")
    with Container(tmp_path, ["sleep", "300"]) as c:
        runc = detached(f"runc exec {c.id} sh -c 'sleep 300 & sleep 301'")
        [shell] = children_of(runc)
        wait_started(shell, "sleep")
        [child] = children_of(shell)
        r = run(executor, "kill_process", pid=shell, tree=True, exe="/bin/busybox")
        assert r.ok, r.detail
        assert r.data["killed"] == sorted([shell, child])
        assert not alive(shell) and not alive(child)
        assert alive(c.pid)  # the container's init is not in that tree


def chrooted(where: Path, command: str) -> int:
    """``command`` (sh -c) chrooted in a fresh overlayfs in its own mount
    namespace, as tests.containers.overlay_chroot, but left running: the
    pid of its shell."""
    from tests.containers import busybox_rootfs

    lower = busybox_rootfs(where / "lower")
    for d in ("upper", "work", "merged"):
        (where / d).mkdir(exist_ok=True)
    script = (f"mount -t overlay overlay -o lowerdir={lower},upperdir={where}/upper,workdir={where}/work "
              f"{where}/merged && exec chroot {where}/merged /bin/sh -c \\\"{command}\\\"")
    return detached(f"exec unshare --mount --propagation private sh -c \"{script}\"")


def test_a_chrooted_process_tree_is_killed_by_the_exe_it_runs_in_its_root(tmp_path):
    """The playbook's ``exe`` is the sensor's, a path in the process's own
    root (/bin/busybox); readlink of /proc/PID/exe from the host's root
    names the same file by another path (the overlay's mount point)."""
    executor = Executor(tmp_path / "agent")
    shell = chrooted(tmp_path, "sleep 300 & sleep 301")
    wait_started(shell, "sleep")
    try:
        [child] = children_of(shell)
        r = run(executor, "kill_process", pid=shell, tree=True, exe="/bin/other")
        assert not r.ok and r.detail.startswith(f"refused: pid {shell} runs ")  # still checked
        r = run(executor, "kill_process", pid=shell, tree=True, exe="/bin/busybox")
        assert r.ok, r.detail
        assert r.data["killed"] == sorted([shell, child])
    finally:
        kill_namespace(shell)


def kill_namespace(pid: int) -> None:
    """SIGKILL every process in ``pid``'s mount namespace (a test's leftovers)."""
    try:
        ns = os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return
    if ns in (os.readlink("/proc/1/ns/mnt"), os.readlink("/proc/self/ns/mnt")):
        return  # gone, and its pid taken by a host process
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.readlink(f"/proc/{name}/ns/mnt") == ns:
                os.kill(int(name), 9)
        except OSError:
            continue
