"""``immune-node rules update SOURCE``: install a SigmaHQ rule set into a node's data folder.

SOURCE is a folder (a checkout of SigmaHQ/sigma, or a set as we ship it) or a
release archive (.zip, .tar, .tar.gz, ...).  What is taken from it: every
``.yml``/``.yaml`` file holding a rule whose logsource has ``product: linux``,
outside folders of deprecated, unsupported and placeholder rules, under its path
in SOURCE, plus the licence files at its top.

Whatever SOURCE holds, nothing is written outside the new set's folder and
reading it is bounded: a member whose name leads outside (absolute, ``..``), a
link or device where a rule file would be, more than ``MAX_ENTRIES`` entries,
sizes above ``MAX_BYTES`` in all or a rule file above ``MAX_FILE_BYTES`` refuse
the update.  The new set is written beside the old one, loaded as the hive would
load it (with the built-in pack and the operator's folders), and refused if a
file of it cannot be read as YAML, holds a duplicate id or goes over a loader
limit, or if none of its rules loads; rules whose logsource our sensor does not
produce are no reason to refuse it (``rules list`` names them).  Only then does
the link ``DATA/rules/sigmahq`` turn to it, in one rename; on any failure it is
left as it was.
"""

from __future__ import annotations

import fcntl
import lzma
import os
import secrets
import shutil
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hive._datafile import MAX_FILE_BYTES, FileRefused, parse_yaml

from ._errors import RuleError
from ._loader import SUFFIXES, LoadReport, load_rules
from ._sets import BUILTIN_RULES, INSTALLED, point, sigmahq_link

MAX_ENTRIES = 100_000
"""Entries (files, folders) of SOURCE looked at; SigmaHQ's whole repository has about 6000."""
MAX_BYTES = 512 << 20
"""Bytes of all the entries of SOURCE together (its rules are about 15 MiB)."""
MAX_DEPTH = 32
"""Folders inside each other in SOURCE (SigmaHQ's rules nest 4 deep)."""
REFUSING = ("file", "yaml", "limit", "duplicate")
"""Kinds of load failure that refuse a new set: it is broken, not merely beyond our sensor."""
_SKIPPED = ("deprecated", "unsupported")
"""Folders (and rule statuses) of rules SigmaHQ no longer stands behind."""


class UpdateError(Exception):
    """The new set was not installed (the old one stays); the message says why, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(" ".join(reason.split()))  # YAML's and pySigma's reasons span lines


@dataclass(frozen=True)
class Installed:
    """What ``update_sigmahq`` installed."""

    folder: Path
    files: int
    """Rule files taken from SOURCE."""
    loaded: int
    """Rules of the new set that load."""
    not_loaded: int
    """Rules of the new set that do not (a logsource our sensor does not produce, ...)."""


def update_sigmahq(data: Path, source: Path, others: Sequence[Path | str] = ()) -> Installed:
    """Install the SigmaHQ Linux rules of ``source`` as the set of the node whose data
    folder is ``data``, validated together with the built-in pack and ``others`` (the
    operator's folders).  Raises UpdateError, leaving the set in use as it was."""
    source = Path(source)
    rules = Path(data) / "rules"
    link = sigmahq_link(data)
    if link.exists() and not link.is_symlink():
        raise UpdateError(f"{link} is a folder of your own, not the link rules update manages: "
                          "move it away first")
    try:
        rules.mkdir(parents=True, exist_ok=True)
        with _locked(rules / ".update.lock"):
            return _install(rules, link, source, others)
    except OSError as e:
        raise UpdateError(f"cannot install the new set in {rules}: {e.strerror or e}") from None


def _install(rules: Path, link: Path, source: Path, others: Sequence[Path | str]) -> Installed:
    chosen = [(path, data) for path, data in _read(source) if _taken(path, data, source)]
    files = sum(path.suffix in SUFFIXES for path, _ in chosen)
    if not files:
        raise UpdateError(f"{source}: no SigmaHQ Linux rule in it (no .yml file whose logsource "
                          "has product: linux)")
    name = f"{INSTALLED}{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
    stage = rules / f".{name}"
    try:
        _write(stage, chosen, source)
        report = _validate(stage, source, others)
        os.rename(stage, rules / name)
        _sync(rules)
        previous = os.readlink(link) if link.is_symlink() else ""
        point(link, name)
        _sync(rules)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _prune(rules, keep={name, previous})
    loaded = sum(_inside(r.path, stage) for r in (*report.rules, *report.correlations))
    return Installed(rules / name, files, loaded, sum(_inside(f.path, stage) for f in report.failures))


def _inside(path: Path | None, folder: Path) -> bool:
    return path is not None and path.is_relative_to(folder)


def _validate(stage: Path, source: Path, others: Sequence[Path | str]) -> LoadReport:
    try:
        report = load_rules([BUILTIN_RULES, stage, *others]).report
    except RuleError as e:
        raise UpdateError(f"cannot load the rule folders with it: {e}") from None
    broken = [f for f in report.failures if _inside(f.path, stage) and f.kind in REFUSING]
    if broken:
        first = broken[0]
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        where = first.path.relative_to(stage) if first.path is not None else "?"
        raise UpdateError(f"{source}: {where}: {first.kind}: {first.reason}{more}")
    if not any(_inside(r.path, stage) for r in (*report.rules, *report.correlations)):
        reasons = [f for f in report.failures if _inside(f.path, stage)]
        why = f" (first: {reasons[0].kind}: {reasons[0].reason})" if reasons else ""
        raise UpdateError(f"{source}: none of its Linux rules can run here{why}")
    return report


# -- choosing ------------------------------------------------------------------


def _wanted(path: PurePosixPath) -> bool:
    """Whether an entry of SOURCE is read at all: rule files and the licence."""
    if not path.parts or any(part.startswith(".") for part in path.parts):
        return False
    return path.suffix in SUFFIXES or (len(path.parts) <= 2 and path.name.upper().startswith("LICENSE"))


def _taken(path: PurePosixPath, data: bytes, source: Path) -> bool:
    """Whether a file read from SOURCE goes into the new set: a licence, or a file
    with a Linux rule that SigmaHQ has not retired."""
    if path.suffix not in SUFFIXES:
        return True  # a licence file
    folders = [part.lower() for part in path.parts[:-1]]
    if any(f in _SKIPPED or f.startswith("rules-placeholder") for f in folders):
        return False
    if b"linux" not in data.lower():
        return False  # cannot name the product: not read as YAML
    try:
        documents = parse_yaml(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UpdateError(f"{source}: {path}: not UTF-8 (byte {e.start})") from None
    except FileRefused as e:
        raise UpdateError(f"{source}: {path}: {e.kind}: {e.reason}") from None
    for document in documents:
        if not isinstance(document, dict):
            continue
        logsource = document.get("logsource")
        product = logsource.get("product") if isinstance(logsource, dict) else None
        if str(product).lower() == "linux" and str(document.get("status", "")).lower() not in _SKIPPED:
            return True
    return False


# -- reading SOURCE within bounds ---------------------------------------------------


class _Budget:
    def __init__(self, source: Path) -> None:
        self.source = source
        self.entries = 0
        self.bytes = 0

    def entry(self, size: int) -> None:
        self.entries += 1
        self.bytes += max(size, 0)
        if self.entries > MAX_ENTRIES:
            raise UpdateError(f"{self.source}: more than {MAX_ENTRIES} entries (MAX_ENTRIES): refused")
        if self.bytes > MAX_BYTES:
            raise UpdateError(f"{self.source}: more than {MAX_BYTES >> 20} MiB in all (MAX_BYTES): refused")


def _read(source: Path) -> list[tuple[PurePosixPath, bytes]]:
    """The rule and licence files of SOURCE: (path inside it, content)."""
    if source.is_dir():
        files = list(_folder(source))
    elif not source.is_file():
        raise UpdateError(f"{source}: no such folder or archive")
    else:
        kind = _kind(source)
        if kind is None:
            raise UpdateError(f"{source}: neither a folder nor a .zip or .tar(.gz) archive")
        files = _zip(source) if kind == "zip" else _tar(source)
    seen: set[PurePosixPath] = set()
    for path, _ in files:
        if path in seen:
            raise UpdateError(f"{source}: {path} appears twice: refused")
        seen.add(path)
    return files


def _member(source: Path, name: str) -> PurePosixPath:
    """An archive member's path inside the new set; refuses one that leads elsewhere."""
    path = PurePosixPath(name)
    if ("\0" in name or "\\" in name or path.is_absolute() or ".." in path.parts
            or (path.parts and ":" in path.parts[0])):
        raise UpdateError(f"{source}: member {name!r} leads outside the archive's folder: refused")
    if len(path.parts) > MAX_DEPTH + 1:
        raise UpdateError(f"{source}: member {name!r} nests more than {MAX_DEPTH} folders deep: refused")
    return path


def _content(source: Path, path: PurePosixPath, f) -> bytes:
    data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise UpdateError(f"{source}: {path} is larger than {MAX_FILE_BYTES >> 20} MiB "
                          "(MAX_FILE_BYTES): refused")
    return data


_ARCHIVE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, NotImplementedError, EOFError,
                   OSError, zlib.error, lzma.LZMAError, ValueError, RuntimeError, struct.error, IndexError,
                   KeyError, OverflowError)
"""What Python's zip and tar readers raise on a damaged archive (RuntimeError: an
encrypted zip member; NotImplementedError: an unknown compression; the rest:
fields that do not hold what they should)."""


def _kind(source: Path) -> str | None:
    """``zip``, ``tar`` or None (neither), by the file's content."""
    try:
        if zipfile.is_zipfile(source):
            return "zip"
        return "tar" if tarfile.is_tarfile(source) else None
    except _ARCHIVE_ERRORS as e:  # damaged before its first member
        raise UpdateError(f"{source}: not a readable archive: {e}") from None


def _zip(source: Path) -> list[tuple[PurePosixPath, bytes]]:
    budget, files = _Budget(source), []
    try:
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                budget.entry(info.file_size)
                path = _member(source, info.filename)
                if info.filename.endswith("/") or not _wanted(path):
                    continue
                if stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG):  # 0: no Unix mode
                    raise UpdateError(f"{source}: {path} is a link or a device, not a file: refused")
                with archive.open(info) as f:
                    files.append((path, _content(source, path, f)))
    except _ARCHIVE_ERRORS as e:
        raise UpdateError(f"{source}: not a readable zip archive: {e}") from None
    return files


def _tar(source: Path) -> list[tuple[PurePosixPath, bytes]]:
    budget, files = _Budget(source), []
    try:
        with tarfile.open(source, "r:*") as archive:
            for member in archive:  # headers one at a time: a bound stops before the next
                budget.entry(member.size)
                path = _member(source, member.name)
                if member.isdir() or not _wanted(path):
                    continue
                if not member.isreg():
                    raise UpdateError(f"{source}: {path} is a link or a device, not a file: refused")
                f = archive.extractfile(member)
                assert f is not None  # a regular member
                files.append((path, _content(source, path, f)))
    except _ARCHIVE_ERRORS as e:
        raise UpdateError(f"{source}: not a readable tar archive: {e}") from None
    return files


def _folder(source: Path) -> Iterator[tuple[PurePosixPath, bytes]]:
    root, budget = source.resolve(), _Budget(source)
    for folder, dirs, names in os.walk(root):  # links to folders are not followed
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < MAX_DEPTH else []
        for name in sorted(names):
            full = Path(folder, name)
            path = PurePosixPath(full.relative_to(root).as_posix())
            try:
                st = full.lstat()
                budget.entry(st.st_size)
                if not _wanted(path):
                    continue
                if not stat.S_ISREG(st.st_mode):
                    raise UpdateError(f"{source}: {path} is a link or a device, not a file: refused")
                with open(full, "rb") as f:
                    yield path, _content(source, path, f)
            except OSError as e:
                raise UpdateError(f"{source}: {path}: cannot read: {e.strerror or e}") from None


# -- writing the new set ---------------------------------------------------------------


def _write(stage: Path, files: list[tuple[PurePosixPath, bytes]], source: Path) -> None:
    stage.mkdir()
    rules = 0
    for path, data in files:
        if path.suffix not in SUFFIXES:
            if not (stage / path.name).exists():  # the top folder's licence wins
                _write_file(stage / path.name, data)
            continue
        rules += 1
        target = stage / path
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_file(target, data)
    notice = (f"# SigmaHQ Linux rules\n\nInstalled by `immune-node rules update` on "
              f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} from `{source.resolve()}`: the {rules} rule "
              "files in it whose logsource has `product: linux`, unchanged.\n\n"
              "The rules are released by their authors under the Detection Rule License (DRL) 1.1, "
              "which requires attribution: keep each rule's `author` and `id` fields when a rule is "
              "shown, shipped or converted.\n")
    _write_file(stage / "NOTICE.md", notice.encode())
    for folder in {stage, *(p.parent for p in stage.rglob("*") if p.is_file())}:
        _sync(folder)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(rules: Path, keep: set[str]) -> None:
    """Remove installed sets but the current and the previous one (a hive may be
    reading the previous one still), and the leftovers of interrupted updates."""
    for entry in rules.iterdir():
        if entry.name.lstrip(".").startswith(INSTALLED) and entry.name not in keep and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


class _locked:
    """One update at a time per data folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise UpdateError("another rules update is running for this data folder") from None

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
