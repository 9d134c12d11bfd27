"""Build the BPF programs: vmlinux.h from the running kernel's BTF (bpftool),
then clang -O2 -g -target bpf.  Both are cached and keyed by content (kernel
BTF, sources, clang version), so a build only happens when one changes."""

from __future__ import annotations

import hashlib
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
# bpftool lives in sbin, which a non-root PATH often lacks.
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")


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


def build(force: bool = False, cache: Path | None = None) -> Path:
    """Return the path of the compiled object, building it if needed."""
    cache = cache or cache_dir()
    clang = _tool("clang", "clang")
    bpftool = _tool("bpftool", "bpftool")
    if not LIBBPF_HEADER.exists():
        raise BuildError(f"{LIBBPF_HEADER} not found: install the Debian package libbpf-dev "
                         "(apt-get install libbpf-dev)")
    try:
        btf = BTF_PATH.read_bytes()
    except FileNotFoundError:
        raise KernelError(f"{BTF_PATH} is missing: this kernel was built without BTF "
                          "(CONFIG_DEBUG_INFO_BTF=y), which the CO-RE programs need") from None
    except OSError as e:
        raise KernelError(f"cannot read {BTF_PATH}: {e}") from e
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create the build cache {cache}: {e}") from e

    btf_key = _digest(btf)
    include = cache / f"btf-{btf_key}"
    vmlinux_h = include / "vmlinux.h"
    if force or not vmlinux_h.exists():
        include.mkdir(exist_ok=True)
        dump = _run([bpftool, "btf", "dump", "file", str(BTF_PATH), "format", "c"],
                    "generating vmlinux.h")
        _write_atomically(vmlinux_h, dump.stdout)

    sources = sorted(p for p in SOURCE_DIR.iterdir() if p.suffix in (".c", ".h"))
    version = _run([clang, "--version"], "asking clang its version").stdout
    arch = _ARCH.get(platform.machine(), platform.machine())
    key = _digest(btf_key.encode(), version, " ".join(CFLAGS).encode(), arch.encode(),
                  *(p.name.encode() + b"\0" + p.read_bytes() for p in sources))
    obj = cache / f"{OBJECT_NAME}-{key}.bpf.o"
    if obj.exists() and not force:
        return obj

    fd, tmp = tempfile.mkstemp(dir=cache, prefix=obj.name + ".")
    os.close(fd)
    try:
        _run([clang, *CFLAGS, f"-D__TARGET_ARCH_{arch}", f"-I{include}", f"-I{SOURCE_DIR}",
              "-c", str(SOURCE_DIR / f"{OBJECT_NAME}.bpf.c"), "-o", tmp], "compiling the BPF programs")
        os.replace(tmp, obj)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _prune(cache, keep={obj.name, include.name})
    return obj


def _prune(cache: Path, keep: set[str]) -> None:
    """Drop objects and headers of older sources or kernels."""
    for p in cache.iterdir():
        if p.name in keep or ".bpf.o." in p.name:  # another build's temporary
            continue
        if p.name.endswith(".bpf.o"):
            p.unlink(missing_ok=True)
        elif p.name.startswith("btf-") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
