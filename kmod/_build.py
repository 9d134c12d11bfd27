"""Build the BPF programs: vmlinux.h from the running kernel's BTF (bpftool),
then clang -O2 -g -target bpf.  Both are cached and keyed by content (kernel
BTF, sources, clang version), so a build only happens when one changes.

The object is CO-RE: every read of a kernel structure is relocated by libbpf
against the target kernel's BTF at load time.  So one object, compiled once
(``prebuild``), runs on any kernel with BTF, and a host without a compiler
loads it (``choose_object``)."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from ._errors import BuildError, KernelError
from ._system import BTF_PATH

SOURCE_DIR = Path(__file__).parent / "bpf"
OBJECT_NAME = "sensor"
LIBBPF_HEADER = Path("/usr/include/bpf/bpf_helpers.h")
CFLAGS = ("-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3")  # v3: atomic xchg
_ARCH = {"x86_64": "x86", "aarch64": "arm64", "s390x": "s390", "ppc64le": "powerpc",
         "riscv64": "riscv"}
PREBUILT_DIR = Path(__file__).parent / "prebuilt"
# bpftool lives in sbin, which a non-root PATH often lacks.
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")


log = logging.getLogger("kmod")


def arch() -> str:
    """The kernel's name for this machine's architecture (__TARGET_ARCH_*)."""
    return _ARCH.get(platform.machine(), platform.machine())


def cache_dir() -> Path:
    """``$IMMUNE_KMOD_CACHE``, else ``kmod/.build`` next to the sources."""
    env = os.environ.get("IMMUNE_KMOD_CACHE")
    return Path(env) if env else Path(__file__).parent / ".build"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_EXTRA_PATH))
    if path is None:
        raise BuildError(f"{name} not found: install the Debian package {package} "
                         f"(apt-get install {package})")
    return path


def _run(argv: list[str], what: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, check=False)
    except OSError as e:
        raise BuildError(f"{what}: cannot run {argv[0]}: {e}") from e
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-4000:]
        raise BuildError(f"{what} failed ({' '.join(argv[:3])} ...):\n{tail}")
    return proc


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:16]


def _write_atomically(path: Path, data: bytes) -> None:
    # concurrent builds (several test processes) must never see half a file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _sources() -> list[Path]:
    return sorted(p for p in SOURCE_DIR.iterdir() if p.suffix in (".c", ".h"))


def sources_digest() -> str:
    """What the object is compiled from: the sources and the flags.  A
    prebuilt object's manifest carries it, to tell whether it still matches
    the sources beside it."""
    return _digest(" ".join(CFLAGS).encode(), arch().encode(),
                   *(p.name.encode() + b"\0" + p.read_bytes() for p in _sources()))


def _read_btf(btf_path: Path) -> bytes:
    try:
        return btf_path.read_bytes()
    except FileNotFoundError:
        if btf_path != BTF_PATH:
            raise BuildError(f"{btf_path}: no such BTF file") from None
        raise KernelError(f"{btf_path} is missing: this kernel was built without BTF "
                          "(CONFIG_DEBUG_INFO_BTF=y), which the CO-RE programs need") from None
    except OSError as e:
        raise KernelError(f"cannot read {btf_path}: {e}") from e


def _toolchain() -> tuple[str, str]:
    clang = _tool("clang", "clang")
    bpftool = _tool("bpftool", "bpftool")
    if not LIBBPF_HEADER.exists():
        raise BuildError(f"{LIBBPF_HEADER} not found: install the Debian package libbpf-dev "
                         "(apt-get install libbpf-dev)")
    return clang, bpftool


def _vmlinux_h(bpftool: str, btf_path: Path, btf: bytes, cache: Path, force: bool) -> Path:
    """The directory holding vmlinux.h for this BTF (cached by its digest)."""
    include = cache / f"btf-{_digest(btf)}"
    vmlinux_h = include / "vmlinux.h"
    if force or not vmlinux_h.exists():
        include.mkdir(exist_ok=True)
        dump = _run([bpftool, "btf", "dump", "file", str(btf_path), "format", "c"],
                    "generating vmlinux.h")
        _write_atomically(vmlinux_h, dump.stdout)
    return include


def _compile(clang: str, include: Path, obj: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=obj.parent, prefix=obj.name + ".")
    os.close(fd)
    try:
        _run([clang, *CFLAGS, f"-D__TARGET_ARCH_{arch()}", f"-I{include}", f"-I{SOURCE_DIR}",
              "-c", str(SOURCE_DIR / f"{OBJECT_NAME}.bpf.c"), "-o", tmp], "compiling the BPF programs")
        os.replace(tmp, obj)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _mkdir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create {what} {path}: {e}") from e


def build(force: bool = False, cache: Path | None = None) -> Path:
    """Return the path of the compiled object, building it if needed."""
    cache = cache or cache_dir()
    clang, bpftool = _toolchain()
    btf = _read_btf(BTF_PATH)
    _mkdir(cache, "the build cache")
    include = _vmlinux_h(bpftool, BTF_PATH, btf, cache, force)
    version = _run([clang, "--version"], "asking clang its version").stdout
    key = _digest(include.name.encode(), version, sources_digest().encode())
    obj = cache / f"{OBJECT_NAME}-{key}.bpf.o"
    if obj.exists() and not force:
        return obj
    _compile(clang, include, obj)
    _prune(cache, keep={obj.name, include.name})
    return obj


# ---- compile once, run everywhere ------------------------------------------------


def prebuilt_dir() -> Path:
    """``$IMMUNE_KMOD_PREBUILT``, else ``kmod/prebuilt`` (what the wheel carries)."""
    env = os.environ.get("IMMUNE_KMOD_PREBUILT")
    return Path(env) if env else PREBUILT_DIR


def prebuilt_paths(directory: Path | None = None) -> tuple[Path, Path]:
    """(object, manifest) of this architecture's prebuilt object."""
    directory = directory or prebuilt_dir()
    return (directory / f"{OBJECT_NAME}.{arch()}.bpf.o",
            directory / f"{OBJECT_NAME}.{arch()}.json")


def prebuild(out: Path | None = None, btf_path: Path | None = None) -> Path:
    """Compile the object once for every kernel of this architecture, with a
    manifest beside it; return the object's path.  vmlinux.h comes from this
    machine's BTF (or ``btf_path``): only its type names matter, since
    libbpf relocates the field offsets on the target."""
    out = out or PREBUILT_DIR
    btf_path = btf_path or BTF_PATH
    clang, bpftool = _toolchain()
    btf = _read_btf(btf_path)
    _mkdir(out, "the output directory")
    obj, manifest = prebuilt_paths(out)
    with tempfile.TemporaryDirectory(prefix="immune-prebuild-") as scratch:
        include = _vmlinux_h(bpftool, btf_path, btf, Path(scratch), force=True)
        digest = sources_digest()
        _compile(clang, include, obj)
    version = _run([clang, "--version"], "asking clang its version").stdout.decode()
    info = {
        "object": obj.name,
        "arch": arch(),
        "sources": digest,
        "sha256": hashlib.sha256(obj.read_bytes()).hexdigest(),
        "clang": version.splitlines()[0].strip() if version else "",
        "built": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "btf_from": platform.release() if btf_path == BTF_PATH else str(btf_path),
    }
    _write_atomically(manifest, (json.dumps(info, indent=1) + "\n").encode())
    for path in (obj, manifest):  # package data: readable by all, like the sources
        path.chmod(0o644)
    return obj


def read_manifest(manifest: Path) -> dict | None:
    """A prebuilt object's manifest, or None when absent or unreadable."""
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def choose_object(cache: Path | None = None) -> tuple[Path, str]:
    """The object to load and where it came from, in this order:
    ``$IMMUNE_BPF_OBJECT``; this architecture's prebuilt object when its
    manifest matches the sources beside it; a build from source.  A prebuilt
    object older than the sources is never loaded: rebuilt from source when
    clang is here, refused otherwise."""
    explicit = os.environ.get("IMMUNE_BPF_OBJECT")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise BuildError(f"IMMUNE_BPF_OBJECT={explicit}: no such file")
        return path, "IMMUNE_BPF_OBJECT"
    obj, manifest = prebuilt_paths()
    if obj.is_file():
        info = read_manifest(manifest)
        if info is not None and info.get("sources") == sources_digest():
            return obj, f"prebuilt: {info.get('clang', '?')}, built {info.get('built', '?')}"
        why = ("has no readable manifest" if info is None else
               f"is older than the sources (built from {info.get('sources')}, "
               f"sources are {sources_digest()})")
        try:
            _toolchain()
        except BuildError:
            raise BuildError(f"prebuilt BPF object {obj} {why}: run 'python -m kmod prebuild' "
                             "or install clang, bpftool and libbpf-dev to build from source") from None
        log.warning("prebuilt BPF object %s %s: building from source", obj, why)
        return build(cache=cache), "built from source (prebuilt object is stale)"
    try:
        _toolchain()
    except BuildError as e:  # a host with neither: say both ways out
        raise BuildError(f"no prebuilt BPF object {obj} for this architecture, and {e}, "
                         "to build one from source") from None
    return build(cache=cache), "built from source"
def _prune(cache: Path, keep: set[str]) -> None:
    """Drop objects and headers of older sources or kernels."""
    for p in cache.iterdir():
        if p.name in keep or ".bpf.o." in p.name:  # another build's temporary
            continue
        if p.name.endswith(".bpf.o"):
            p.unlink(missing_ok=True)
        elif p.name.startswith("btf-") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def describe_object() -> str:
    """One line: the object the sensor would load, without building it."""
    explicit = os.environ.get("IMMUNE_BPF_OBJECT")
    if explicit:
        return f"{explicit} (IMMUNE_BPF_OBJECT)"
    obj, manifest = prebuilt_paths()
    if obj.is_file():
        info = read_manifest(manifest) or {}
        if info.get("sources") == sources_digest():
            return (f"{obj} (prebuilt: sources {info['sources']}, {info.get('clang', '?')}, "
                    f"built {info.get('built', '?')})")
        return f"{obj} (prebuilt but older than the sources: a build from source replaces it)"
    return f"built from source at start into {cache_dir()} (sources {sources_digest()})"
