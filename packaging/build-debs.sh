#!/usr/bin/env bash
# Builds the Debian packages into dist/ with dpkg-deb (no debhelper needed):
#   immune-common  the code (a venv under /usr/lib/immune), /usr/bin/immune-node, /etc/immune/immune.toml
#   immune-hive    its systemd unit and the `immune` system user
#   immune-agent   its systemd unit and the prebuilt BPF object of this architecture
# Usage: packaging/build-debs.sh [OUTDIR]   (make packages). Needs dpkg-dev, python3-venv, and
# for the BPF object clang, llvm, libbpf-dev and bpftool: on the build machine only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${1:-$ROOT/dist}
WORK=${IMMUNE_DEB_WORK:-$ROOT/build/deb}
# Debian's own interpreter: the packages depend on Debian's python3, whatever else is on PATH.
PY=/usr/bin/python3
PREFIX=/usr/lib/immune

die() { echo "build-debs: $*" >&2; exit 1; }
for tool in dpkg-deb dpkg-architecture; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install dpkg-dev"
done
"$PY" -c 'import ensurepip' 2>/dev/null || die "$PY cannot make a venv: apt-get install python3-venv"

VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
ARCH=$(dpkg --print-architecture)
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PYNEXT=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')
rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"

# --- immune-common: the tree's wheel and its dependencies in a venv made where it will live.
# The venv is built in the staging folder and moved as is: a venv finds its prefix from its
# pyvenv.cfg, so only the console scripts' shebangs carry the build path, and they are dropped.
COMMON=$WORK/immune-common
VENV=$COMMON$PREFIX
echo "build-debs: venv for Python $PYVER in $VENV" >&2
"$PY" -m venv "$VENV"
# setuptools leaves build/lib behind, with files the tree may no longer have: start clean.
rm -rf "$ROOT/build/lib" "$ROOT/build/bdist."*
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-compile "$ROOT"
"$VENV/bin/python" -m pip uninstall -q -y pip setuptools >/dev/null 2>&1 || true
SITE=$VENV/lib/python$PYVER/site-packages
# The BPF object belongs to the agent package; none comes from the tree's wheel.
rm -rf "$SITE/kmod/prebuilt" "$SITE/kmod/.build"
find "$VENV/bin" -mindepth 1 ! -name 'python*' -delete
sed -i '/^command = /d' "$VENV/pyvenv.cfg"   # the build machine's path, of no use on a host
# Byte-compile now, with the installed path in the code objects: the units make /usr read-only.
"$VENV/bin/python" -m compileall -q -j0 -s "$COMMON" -p / "$VENV/lib" >/dev/null
install -D -m 0755 packaging/debian/immune-node.sh "$COMMON/usr/bin/immune-node"
# The example configuration, whose values are the defaults (data in /var/lib/immune), under a
# header that says how the packaged units use it.
install -d "$COMMON/etc/immune"
{ cat packaging/debian/immune.toml.head; cat node/immune.example.toml; } >"$COMMON/etc/immune/immune.toml"
chmod 0644 "$COMMON/etc/immune/immune.toml"
install -D -m 0644 README.md "$COMMON/usr/share/doc/immune-common/README.md"

# --- immune-agent: the prebuilt BPF object, so the host needs no compiler and no kernel headers.
AGENT=$WORK/immune-agent
PREBUILT=$WORK/prebuilt
echo "build-debs: prebuilding the BPF object" >&2
PYTHONPATH=$ROOT "$VENV/bin/python" -m kmod prebuild --out "$PREBUILT" >&2 \
    || die "python -m kmod prebuild failed (it needs clang, llvm, libbpf-dev and bpftool here)"
ls "$PREBUILT"/*.bpf.o >/dev/null 2>&1 || die "python -m kmod prebuild wrote no .bpf.o into $PREBUILT"
install -d "$AGENT${SITE#"$COMMON"}/kmod/prebuilt"
install -m 0644 "$PREBUILT"/* "$AGENT${SITE#"$COMMON"}/kmod/prebuilt/"
install -D -m 0644 services/systemd/immune-agent.service "$AGENT/lib/systemd/system/immune-agent.service"

# --- immune-hive
HIVE=$WORK/immune-hive
install -D -m 0644 services/systemd/immune-hive.service "$HIVE/lib/systemd/system/immune-hive.service"

# Runtime libraries the compiled modules link outside the venv, as Debian packages (dpkg -S).
shlib_depends() {
    find "$1" -name '*.so*' -type f -print0 | xargs -0 -r ldd 2>/dev/null \
        | awk '/=> \// {print $3}' | sort -u | while read -r lib; do
            case "$lib" in "$1"*) continue ;; esac
            dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null || true
        done | cut -d: -f1 | sort -u | paste -sd, | sed 's/,/, /g'
}
LIBS=$(shlib_depends "$VENV")

for pkg in immune-common immune-agent immune-hive; do
    dir=$WORK/$pkg
    install -d -m 0755 "$dir/DEBIAN" "$dir/usr/share/doc/$pkg"
    install -m 0644 packaging/debian/copyright "$dir/usr/share/doc/$pkg/copyright"
    for script in postinst prerm postrm; do
        [ -f "packaging/debian/$pkg.$script" ] && install -m 0755 "packaging/debian/$pkg.$script" "$dir/DEBIAN/$script"
    done
    [ -f "packaging/debian/$pkg.conffiles" ] && install -m 0644 "packaging/debian/$pkg.conffiles" "$dir/DEBIAN/conffiles"
    size=$(du -sk --exclude=DEBIAN "$dir" | cut -f1)
    case $pkg in
        immune-common) depends="python3 (>= $PYVER), python3 (<< $PYNEXT), adduser${LIBS:+, $LIBS}"
                       desc="code and launcher (immune-node) shared by the hive and the agent" ;;
        immune-agent)  depends="immune-common (= $VERSION), libbpf1, iproute2"
                       desc="agent: eBPF + fanotify sensor, spool, uplink and response executor" ;;
        immune-hive)   depends="immune-common (= $VERSION), adduser"
                       desc="hive: router, store, Sigma detection, correlation, playbooks, console" ;;
    esac
    # The compiled wheels (pyzmq, msgspec, cryptography, re2) are built for one CPython ABI:
    # hence the upper bound on python3.
    cat >"$dir/DEBIAN/control" <<EOF
Package: $pkg
Version: $VERSION
Architecture: $ARCH
Maintainer: SENTINEL IMMUNE developers <immune@localhost>
Installed-Size: $size
Depends: $depends
Section: admin
Priority: optional
Description: SENTINEL IMMUNE EDR/XDR for Linux servers: $desc
 SENTINEL IMMUNE is an EDR/XDR/MDR platform written in Python as supervised
 trio actors over ZeroMQ: an eBPF sensor on each agent, a central hive that
 runs Sigma rules, correlates and answers with playbooks.
EOF
    deb=$OUT/${pkg}_${VERSION}_${ARCH}.deb
    # root:root owns every file whoever builds; the dirs under /var are made by postinst.
    dpkg-deb --root-owner-group -Zxz --build "$dir" "$deb" >/dev/null
    echo "$deb"
done
