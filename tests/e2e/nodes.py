"""Start and watch real ``immune-node`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import actors
from tests.ports import free_port

IMMUNE_NODE = [sys.executable, "-m", "node.cli"]


class RunningNode:
    def __init__(self, command: str, data: Path, *args: str, stdout=None, env=None, netns: str | None = None):
        self.data = Path(data)
        self.log_path = self.data / f"{command}.log"
        self.data.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        prefix = ["ip", "netns", "exec", netns] if netns else []
        if command in ("hive", "demo") and "--console-listen" not in args:
            # Its own port: nodes of tests running at once must not share the
            # console's default.  Not the next port: a hive's enrollment
            # endpoint is its listen port + 1, often the last one handed out.
            free_port()
            self.console_port = free_port()
            args = (*args, "--console-listen", f"https://127.0.0.1:{self.console_port}")
        self.proc = subprocess.Popen(
            [*prefix, *IMMUNE_NODE, command, "--data", str(data), *args],
            stdout=stdout if stdout is not None else self._log, stderr=self._log,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> actors.Status:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                st = actors.query_status(self.data / "run", timeout=1.0)
                if st.ready:
                    return st
            except actors.ActorError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"node not ready within {timeout}s:\n{self.log()}")

    def status(self) -> actors.Status:
        return actors.query_status(self.data / "run", timeout=3.0)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
