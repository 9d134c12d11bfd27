"""collect_evidence: a forensic bundle for one process.

``<data>/evidence/<command id>/`` holds, as read from /proc at that moment:

    process.json   pid, ppid, comm, exe, cwd, ids, start time, when collected
    status stat cmdline environ maps limits cgroup    (raw copies)
    fds.json       every open descriptor and what it points to
    sockets.json   the process's sockets (tcp, udp, unix) with both ends and state
    exe            a copy of its executable (even if deleted from disk), if asked
    manifest.json  SHA-256 and size of every file above, what could not be read
                   (errors) and what was missing (the process had exited)

Of a process that has already exited, the bundle holds what the agent knew
of it instead (process.json: image, command line, SHA-256, parent chain,
cgroup and container, from the relay's process table) and a copy of its
executable if one is still to be found: the file another process still
runs, or the one at its path in its own root, either with the SHA-256 the
agent computed when it ran.  The manifest's ``missing`` names the rest.

and ``<data>/evidence/<command id>.tar.gz`` packs the folder.  The result
carries the manifest and its digest, and the archive itself when it is
small enough for one message (``max_inline``); otherwise the hive is told
where it lies on the agent."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import tarfile
import time
from pathlib import Path
from typing import Any

import wire
from agent import TOO_LARGE

from ._errors import Gone, ResponseError
from ._policy import write_json
from ._process import stat
from ._root import open_in
from ._view import ancestors, find_view, known

_RAW = ("status", "stat", "cmdline", "environ", "maps", "limits", "cgroup")
_TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
    "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}
MAX_EXE = 256 << 20
MAX_INLINE = wire.MAX_ARCHIVE
"""An archive up to this travels in the result; a larger one stays on the
agent, at the path the result gives."""


def _hex_address(text: str) -> str:
    """/proc/net's ``0100007F:1F90`` (host byte order words) to ``127.0.0.1:8080``."""
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    # Each 32-bit word is in the kernel's (little-endian) byte order.
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    host = socket.inet_ntop(family, raw)
    return f"{host}:{int(port, 16)}" if family == socket.AF_INET else f"[{host}]:{int(port, 16)}"


def _inet_sockets(pid: int, inodes: set[str]) -> list[dict[str, Any]]:
    out = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/{pid}/net/{proto}", encoding="ascii") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) > 9 and parts[9] in inodes:
                        out.append({"inode": int(parts[9]), "protocol": proto, "local": _hex_address(parts[1]),
                                    "remote": _hex_address(parts[2]),
                                    "state": _TCP_STATES.get(parts[3], parts[3]) if proto.startswith("tcp") else "",
                                    "uid": int(parts[7])})
        except OSError:
            continue
    return out


def _unix_sockets(pid: int, inodes: set[str]) -> list[dict[str, Any]]:
    out = []
    try:
        with open(f"/proc/{pid}/net/unix", encoding="utf-8", errors="replace") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) > 6 and parts[6] in inodes:
                    out.append({"inode": int(parts[6]), "protocol": "unix",
                                "path": parts[7] if len(parts) > 7 else ""})
    except OSError:
        pass
    return out


def _fds(pid: int) -> list[dict[str, Any]]:
    out = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError as e:
        raise ResponseError(f"cannot list the descriptors of pid {pid}: {e.strerror}") from None
    for name in sorted(names, key=int):
        try:
            out.append({"fd": int(name), "target": os.readlink(f"/proc/{pid}/fd/{name}")})
        except OSError:
            continue  # closed meanwhile
    return out


def _sha256(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _bundle_folder(folder: Path, command: str, pid: int) -> tuple[Path, str]:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in command) or f"pid-{pid}"
    bundle = folder / safe
    try:
        bundle.mkdir(parents=True, exist_ok=False)
        folder.chmod(0o700)
    except FileExistsError:
        raise ResponseError(f"a bundle for command {command} already exists at {bundle}") from None
    except OSError as e:
        raise ResponseError(f"cannot create {bundle}: {e.strerror}") from None
    return bundle, safe


def collect_evidence(pid: object, folder: Path, *, command: str, exe: bool = True, table: Any = None,
                     max_exe: int = MAX_EXE, max_inline: int = MAX_INLINE) -> dict[str, Any]:
    """Collect into ``folder/<command>``; returns what the result carries.
    ``table``: the agent's process table, which remembers a process that
    has exited (then the bundle holds what it knew, see ``_gone``)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise ResponseError(f"pid must be a positive integer, not {pid!r}")
    st = stat(pid)
    if st is None or st.dead:
        record = known(table, pid)
        if record is None:
            raise Gone(f"pid {pid} is gone and the agent's process table has no record of it; "
                       "there is no process to collect evidence from")
        bundle, safe = _bundle_folder(folder, command, pid)
        errors, missing = _gone(record, table, bundle, exe, max_exe)
    else:
        bundle, safe = _bundle_folder(folder, command, pid)
        errors, missing = _live(pid, st, table, bundle, exe, max_exe), {}
    files = {}
    for path in sorted(bundle.iterdir()):
        digest, size = _sha256(path)
        files[path.name] = {"sha256": digest, "size": size}
    manifest = {"pid": pid, "command": command, "created": time.time(), "files": files, "errors": errors,
                "missing": missing}
    raw = json.dumps(manifest, indent=1, sort_keys=True).encode()
    (bundle / "manifest.json").write_bytes(raw)
    archive = folder / f"{safe}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=safe)
    digest, size = _sha256(archive)
    out: dict[str, Any] = {
        "bundle": str(bundle), "manifest": manifest, "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "archive_path": str(archive), "archive_sha256": digest, "archive_size": size,
    }
    if size <= max_inline:
        out["archive"] = archive.read_bytes()
    return out


def _live(pid: int, st: Any, table: Any, bundle: Path, exe: bool, max_exe: int) -> dict[str, str]:
    """/proc as it is now; returns what could not be read."""
    errors: dict[str, str] = {}
    for name in _RAW:
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                (bundle / name).write_bytes(f.read())
        except OSError as e:
            errors[name] = e.strerror or str(e)
    try:
        fds = _fds(pid)
    except ResponseError as e:  # it exited meanwhile
        errors["fds.json"] = str(e)
        fds = []
    inodes = {fd["target"][8:-1] for fd in fds if fd["target"].startswith("socket:[")}
    write_json(bundle / "fds.json", fds)
    write_json(bundle / "sockets.json", _inet_sockets(pid, inodes) + _unix_sockets(pid, inodes))
    info: dict[str, Any] = {"pid": pid, "ppid": st.ppid, "comm": st.comm, "start_ticks": st.start,
                            "collected": time.time()}
    for key, link in (("exe", "exe"), ("cwd", "cwd"), ("root", "root")):
        try:
            info[key] = os.readlink(f"/proc/{pid}/{link}")
        except OSError as e:
            errors[key] = e.strerror or str(e)
    record = known(table, pid)
    if record is not None:
        info["known"] = _what_was_known(record, table)
    write_json(bundle / "process.json", info)
    if exe:
        try:
            size = os.stat(f"/proc/{pid}/exe").st_size
            if size > max_exe:
                errors["exe"] = f"{size} bytes, over the {max_exe} copied"
            else:
                with open(f"/proc/{pid}/exe", "rb") as src, open(bundle / "exe", "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
        except OSError as e:
            errors["exe"] = e.strerror or str(e)
    return errors


def _container(record: Any) -> dict[str, str] | None:
    c = record.container
    if not c:
        return None
    return {"id": c.id, "runtime": c.runtime, "name": c.name, "image": c.image}


def _what_was_known(record: Any, table: Any) -> dict[str, Any]:
    """A process as the table knew it, with its parent chain."""
    def one(p: Any) -> dict[str, Any]:
        return {"pid": p.pid, "ppid": p.ppid, "image": p.image, "exe": p.exe, "cmdline": p.cmdline,
                "sha256": p.sha256 or "", "cgroup": p.cgroup, "unit": p.unit, "container": _container(p)}

    return {**one(record), "parents": [{"pid": p.pid, "image": p.image, "cmdline": p.cmdline,
                                        "running": _running(p.pid)} for p in ancestors(table, record.pid)]}


def _running(pid: int) -> bool:
    st = stat(pid)
    return st is not None and not st.dead


def _gone(record: Any, table: Any, bundle: Path, exe: bool, max_exe: int) -> tuple[dict[str, str], dict[str, str]]:
    """The bundle of a process that has exited: what the agent knew of it
    (image, command line, digest, parents, cgroup and container) and a copy
    of its executable if one is still to be found; returns (errors, missing)."""
    gone = "the process had exited before the evidence was taken"
    missing = {name: gone for name in (*_RAW, "fds.json", "sockets.json", "cwd", "root")}
    errors: dict[str, str] = {}
    info = {**_what_was_known(record, table), "collected": time.time(), "exited": True,
            "source": "the agent's process table: the process had exited"}
    if exe:
        found = _copy_exe(record, table, bundle / "exe", max_exe)
        if isinstance(found, str):
            missing["exe"] = found
        else:
            info["exe_copy"] = found
    write_json(bundle / "process.json", info)
    return errors, missing


_CANDIDATES = 4


def _copy_exe(record: Any, table: Any, target: Path, max_exe: int) -> dict[str, Any] | str:
    """Copy the executable of an exited process to ``target``: the file some
    live process still runs (found even if deleted from disk), or the one at
    its path in the root of a process of its view.  The table knew its
    SHA-256, which every candidate must have; without one, only the file at
    its path in its own view is taken, said to be unverified.  Returns where
    it came from, or why there is no copy."""
    want = record.sha256 if record.sha256 and record.sha256 != TOO_LARGE else ""
    tried: list[str] = []
    sources: list[tuple[str, Any]] = []
    if want and record.exe:
        sources += [(f"/proc/{p}/exe, which pid {p} runs", p) for p in _running_it(record.exe)][:_CANDIDATES]
    try:
        container = record.container.id if record.container else ""
        view = find_view(record.pid, container=container, table=table)
        sources.append((f"{record.exe} in the root of {view.how}", view))
    except ResponseError as e:
        tried.append(str(e))
    for where, source in sources:
        try:
            fd = _open_source(source, record.exe)
        except (OSError, ResponseError) as e:
            tried.append(f"{where}: {getattr(e, 'strerror', None) or e}")
            continue
        with open(fd, "rb") as src:
            st = os.fstat(src.fileno())
            if st.st_size > max_exe:
                tried.append(f"{where}: {st.st_size} bytes, over the {max_exe} copied")
                continue
            digest = _copy(src, target)
        if want and digest != want:
            target.unlink()
            tried.append(f"{where}: another file (sha256 {digest[:16]}…, not {want[:16]}…)")
            continue
        return {"from": where, "sha256": digest, "device": st.st_dev, "inode": st.st_ino,
                "verified": bool(want) or "no digest was known: not checked against the process's"}
    return "no copy of its executable was found" + (f" ({'; '.join(tried)})" if tried else "")


def _running_it(exe: str) -> list[int]:
    """Live processes whose executable has that name (in their own view)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/exe").removesuffix(" (deleted)") == exe:
                    out.append(int(name))
            except OSError:
                continue
    return out


def _open_source(source: Any, path: str) -> int:
    if isinstance(source, int):
        return os.open(f"/proc/{source}/exe", os.O_RDONLY | os.O_CLOEXEC)
    root = source.open_root()
    try:
        return open_in(root, path, os.O_RDONLY | os.O_NOFOLLOW)
    finally:
        if root is not None:
            os.close(root)


def _copy(src: Any, target: Path) -> str:
    h = hashlib.sha256()
    with open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            dst.write(chunk)
    return h.hexdigest()


def verify_bundle(bundle: Path) -> list[str]:
    """Files whose content no longer matches the manifest (empty: intact)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    bad = []
    for name, entry in manifest["files"].items():
        path = bundle / name
        if not path.exists() or _sha256(path) != (entry["sha256"], entry["size"]):
            bad.append(name)
    return bad


def unpack(archive: bytes, into: Path) -> Path:
    """Unpack an archive from a result (hive side, or a test); returns the bundle folder."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = tar.getmembers()
        names = {m.name.split("/")[0] for m in members}
        if len(names) != 1:
            raise ResponseError(f"an evidence archive holds one folder, not {sorted(names)}")
        # Checked here, not only by tarfile's "data" filter, which Python
        # before 3.11.4 (Debian 12 has 3.11.2) does not have.
        for m in members:
            if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in m.name.split("/"):
                raise ResponseError(f"an evidence archive holds plain files and folders only, not {m.name!r}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, members=members, filter="data")
        else:
            tar.extractall(into, members=members)
    return into / names.pop()
