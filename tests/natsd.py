"""Real nats-server processes for tests and benchmarks: a JetStream cluster
on loopback, each server with its own free ports and store folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.ports import free_port

NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"


class NatsServer:
    def __init__(self, name: str, folder: Path, cluster_port: int, routes: list[int]) -> None:
        self.name = name
        self.folder = folder
        self.port, self.http_port, self.cluster_port = free_port(), free_port(), cluster_port
        self.routes = routes
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "nats.conf"
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
        conf.write_text(
            f'server_name: "{self.name}"\nlisten: "127.0.0.1:{self.port}"\nhttp: "127.0.0.1:{self.http_port}"\n'
            f'jetstream {{ store_dir: "{self.folder / "js"}", max_memory_store: 64MB, max_file_store: 8GB }}\n'
            f'cluster {{ name: "immune-test", listen: "127.0.0.1:{self.cluster_port}", routes: [{routes}] }}\n')
        self.log = open(self.folder / "nats.log", "ab")
        self.proc = subprocess.Popen([NATS_SERVER, "-c", str(conf)], stdout=self.log, stderr=self.log)

    def jsz(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/jsz", timeout=1.0) as r:
            return json.load(r)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


class NatsCluster:
    """``size`` servers routed to each other; :meth:`start` returns once
    JetStream has a meta leader that every live server agrees on."""

    def __init__(self, folder: Path, size: int = 3) -> None:
        cluster_ports = [free_port() for _ in range(size)]
        self.servers = [NatsServer(f"n{i + 1}", Path(folder) / f"n{i + 1}", p,
                                   [q for q in cluster_ports if q != p]) for i, p in enumerate(cluster_ports)]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self, timeout: float = 30.0) -> NatsCluster:
        if not Path(NATS_SERVER).exists():
            raise FileNotFoundError(f"no nats-server at {NATS_SERVER} (Debian: apt-get install nats-server)")
        for s in self.servers:
            s.start()
        self.wait_leader(timeout)
        return self

    def leader(self) -> str:
        """The meta leader every live server names, or ''."""
        names = set()
        for s in self.servers:
            if not s.alive():
                continue
            try:
                names.add((s.jsz().get("meta_cluster") or {}).get("leader") or "")
            except (OSError, urllib.error.URLError, ValueError):
                return ""
        return names.pop() if len(names) == 1 else ""

    def wait_leader(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for s in self.servers:
                if s.proc is not None and s.proc.poll() is not None and s.proc.returncode not in (-9, None):
                    raise RuntimeError(f"nats-server {s.name} exited {s.proc.returncode}: "
                                       f"{(s.folder / 'nats.log').read_text()[-2000:]}")
            if leader := self.leader():
                return leader
            time.sleep(0.1)
        raise TimeoutError(f"no JetStream meta leader within {timeout}s")

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
