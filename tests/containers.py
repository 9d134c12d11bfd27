"""Real containers for tests: an OCI bundle of Debian's busybox-static run by
runc (crun refuses this machine's hybrid cgroup layout), and a chroot on a
fresh overlayfs in a new mount namespace.  Both start whenever the test
wants, so after any agent or sensor.

    with Container(tmp_path, ["sleep", "300"]) as c:
        c.pid            # the host's pid of its first process
        c.run("sh", "-c", "cp /bin/busybox /tmp/sh && /tmp/sh -c 'echo hi'")

Each skips the test when root, runc or busybox is missing, saying which;
under CI (``CI=true``) a missing one fails instead (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "ls", "sleep", "cp", "chmod", "echo", "id", "nc", "wget", "true", "head", "rm", "mv")


def require() -> None:
    missing = [what for what, ok in (("root", os.geteuid() == 0), ("runc", shutil.which("runc")),
                                     ("busybox-static", BUSYBOX.exists())) if not ok]
    if missing:
        why = f"needs {', '.join(missing)} (apt-get install runc busybox-static)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def busybox_rootfs(root: Path) -> Path:
    """A root filesystem: busybox and its applets in /bin, empty /tmp, /etc."""
    for d in ("bin", "tmp", "etc", "proc", "dev", "sys", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (root / "tmp").chmod(0o1777)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return root


class Container:
    """A runc container running ``args``, detached, until the block ends
    (killed and deleted then).  ``netns``: a network namespace to join (a
    path such as /run/netns/NAME) instead of a new one with only loopback.
    ``annotations``: the bundle's OCI annotations (an image name, say)."""

    def __init__(self, where: Path, args: list[str], *, name: str | None = None,
                 netns: str | None = None, tmpfs_tmp: bool = False,
                 annotations: dict[str, str] | None = None) -> None:
        require()
        self.id = name or f"immune-test-{uuid.uuid4().hex[:12]}"
        self.bundle = Path(where) / self.id
        self.rootfs = busybox_rootfs(self.bundle / "rootfs")
        self.args = args
        self.netns = netns
        self.tmpfs_tmp = tmpfs_tmp
        self.annotations = annotations or {}
        self.pid = 0

    def _config(self) -> dict:
        subprocess.run(["runc", "spec"], cwd=self.bundle, check=True)
        config = json.loads((self.bundle / "config.json").read_text())
        process = config["process"]
        process["terminal"] = False
        process["args"] = self.args
        process["cwd"] = "/"
        config["root"] = {"path": "rootfs", "readonly": False}
        config["hostname"] = self.id[:63]
        if self.annotations:
            config["annotations"] = dict(self.annotations)
        if self.tmpfs_tmp:  # what some images do: /tmp its own filesystem
            config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                                     "options": ["nosuid", "nodev", "mode=1777"]})
        if self.netns:
            for ns in config["linux"]["namespaces"]:
                if ns["type"] == "network":
                    ns["path"] = self.netns
        return config

    def __enter__(self) -> "Container":
        (self.bundle / "config.json").write_text(json.dumps(self._config()))
        subprocess.run(["runc", "run", "--detach", "--bundle", str(self.bundle), self.id],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True, timeout=30)
        self.pid = self.state()["pid"]
        return self

    def state(self) -> dict:
        out = subprocess.run(["runc", "state", self.id], capture_output=True, check=True, text=True)
        return json.loads(out.stdout)

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """``runc exec`` in the container; output captured, never raises on status."""
        return subprocess.run(["runc", "exec", self.id, *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def __exit__(self, *exc) -> None:
        subprocess.run(["runc", "kill", self.id, "KILL"], capture_output=True)
        subprocess.run(["runc", "delete", "--force", self.id], capture_output=True)


def overlay_chroot(where: Path, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``command`` (sh -c) chrooted in a fresh overlayfs (lower: a
    busybox root filesystem) mounted in a new mount namespace, the way a
    container runtime prepares a root; output captured."""
    require()
    lower = busybox_rootfs(Path(where) / "lower")
    for d in ("upper", "work", "merged"):
        (Path(where) / d).mkdir(exist_ok=True)
    script = (f"mount -t overlay overlay -o lowerdir={lower},upperdir={where}/upper,"
              f"workdir={where}/work {where}/merged && exec chroot {where}/merged /bin/sh -c \"$0\"")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, command],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
