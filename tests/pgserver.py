"""A private PostgreSQL server for tests: initdb into a temporary folder as
an unprivileged user (the postgres system user when run as root), listening
on loopback on a free port, stopped at the end.  Debian's postgresql
package puts the server programs under /usr/lib/postgresql/VERSION/bin.

``python -m tests.pgserver`` runs one until interrupted and prints its URL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.ports import free_port

def _bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


BIN = _bin()
PASSWORD = "immune-test"


class PgServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql://immune:{PASSWORD}@127.0.0.1:{self.port}/immune"
        self._schemas = 0

    def _as_owner(self) -> list[str]:
        # initdb refuses root; the server runs as the postgres system user.
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *argv: str) -> None:
        r = subprocess.run([*self._as_owner(), *argv], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL, env={**os.environ, "PGPASSWORD": PASSWORD})
        if r.returncode:
            raise RuntimeError(f"{argv[0]} failed: {r.stderr.strip() or r.stdout.strip()}")

    def start_first(self, durable: bool = False) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-U", "immune", "--pwfile", str(pwfile),
                  "-A", "scram-sha-256", "-E", "UTF8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as f:
            # Loopback only, no unix socket in a shared folder.
            f.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.root}'\n"
                    "max_connections = 200\n")
            if not durable:
                # A test server need not survive a power cut, and its vacuum
                # workers (hundreds of small schemas) would take CPU from
                # the timing tests that run beside it.
                f.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nautovacuum = off\n")
        self.start()
        self._run(str(BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "immune", "immune")

    def start(self) -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-m", "fast", "-w",
                  "restart")

    def fresh_schema(self) -> str:
        """The URL of a new empty schema in the server's database: each test
        gets its own store without the cost of a database."""
        import psycopg

        self._schemas += 1
        name = f"t{os.getpid()}_{self._schemas}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return f"{self.url}?options=-csearch_path%3D{name}"


def missing() -> str:
    """Why no server can be started here ('' if one can)."""
    if not (BIN / "initdb").exists():
        return "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; ./setup.sh test installs it)"
    if os.geteuid() == 0:
        try:
            import pwd
            pwd.getpwnam("postgres")
        except KeyError:
            return "no postgres system user to run the server as"
    return ""


def start(root: Path | None = None, *, durable: bool = False) -> PgServer:
    """``durable``: with fsync and synchronous commits, as a production server runs."""
    root = root or Path(tempfile.mkdtemp(prefix="immune-pg-"))
    os.chmod(root, 0o755)
    server = PgServer(root)
    server.start_first(durable)
    return server


def stop(server: PgServer) -> None:
    try:
        server.stop()
    finally:
        shutil.rmtree(server.root, ignore_errors=True)


if __name__ == "__main__":
    import signal

    # SIGTERM too, and SIGINT even when started in the background (which ignores it).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(0))
    s = start()
    print(s.url, s.root, flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        stop(s)
