"""The agent's Hello, from a real host whose names are not what the wire
takes: it still reaches the hive."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Run in its own UTS, mount and network namespaces: a host name that is not
# UTF-8, an os-release that is not UTF-8 and longer than a name, and more
# addresses than a Hello may list.
HOST = r"""
import json, socket, subprocess, sys
socket.sethostname(b"host-\xff\xfe")
with open(sys.argv[1], "wb") as f:
    f.write(b'NAME=x\nPRETTY_NAME="Distro \xff ' + b"x" * 1000 + b'"\n')
subprocess.run(["mount", "--bind", sys.argv[1], "/etc/os-release"], check=True)
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
lines = "".join(f"addr add 10.{i >> 8}.{i & 255}.1/32 dev lo\n" for i in range(1100))
subprocess.run(["ip", "-batch", "-"], input=lines.encode(), check=True)

import wire
from actors import Codec
from agent._host import hello

hive = Codec(wire.AgentMessage)  # the router's decoder
h = hive.decode(hive.encode(hello("agent-1", "p.toml:0123456789ab")))
print(json.dumps({"hostname": h.hostname, "os": h.os, "addresses": h.addresses, "kernel": h.kernel}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_a_hello_from_a_host_named_in_bytes_that_are_not_utf8_reaches_the_hive(tmp_path):
    p = subprocess.run(["unshare", "--uts", "--mount", "--net", sys.executable, "-c", HOST,
                        str(tmp_path / "os-release")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    h = json.loads(p.stdout)
    assert h["hostname"] == "host-\ufffd\ufffd"
    assert h["os"].startswith("Distro \ufffd xxx") and h["os"].endswith("\u2026") and len(h["os"]) == 256
    assert len(h["addresses"]) == 1024 and h["addresses"][0] == "10.0.0.1"
    assert h["kernel"] == os.uname().release
