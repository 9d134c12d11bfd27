#!/usr/bin/env bash
# Sets up SENTINEL IMMUNE on a Debian 12 machine (as root) and runs it.
#   ./setup.sh demo   install, build the BPF programs, run `immune-node demo`
#   ./setup.sh test   install, build, run every test
#   ./setup.sh deps   install only
set -euo pipefail
cd "$(dirname "$0")"

# libpq5: psycopg's client library, for a hive whose [store] url is a PostgreSQL database.
APT_PACKAGES=(python3 python3-venv python3-dev gcc make clang llvm libbpf-dev bpftool
              iproute2 tcpdump procps util-linux libpq5)
# The tests also run real containers (an OCI runtime, a static busybox for their root) and a
# benign corpus through the sensor (logrotate, git, a wheel build).
# The attack simulations (tests/e2e/attacks) run the tools attackers use; a missing one fails under CI.
# The console's browser test drives Debian's headless Chromium. The store's tests start their own
# PostgreSQL server, and the cluster tests their own JetStream cluster of Debian's nats-server (a
# missing one fails under CI; a single hive node never needs either). The package tests build the
# .debs with dpkg-deb (dpkg-dev) and install them with adduser.
[ "${1:-demo}" = test ] && APT_PACKAGES+=(runc busybox-static logrotate git python3-wheel python3-setuptools
    strace gdb zip gnupg openssh-client libcap2-bin e2fsprogs lsof chromium chromium-driver postgresql
    nats-server dpkg-dev adduser)

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need_apt[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    # Debian's own Python, whatever else is on PATH: what a fresh machine runs
    /usr/bin/python3 -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing Python packages into .venv" >&2
    # compat mode puts the checkout on sys.path, so new packages need no reinstall
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
    touch "$stamp"
fi

case "$(pwd -P)/" in
    /tmp/*|/var/tmp/*|/dev/shm/*)
        echo "setup: note: this checkout is under /tmp, /var/tmp or /dev/shm, where the default" \
             "policy refuses to run executables; while a demo or agent runs, use" \
             "'.venv/bin/python -m node.cli ...' instead of .venv/bin/immune-node, or move the checkout" >&2 ;;
esac

case "${1:-demo}" in
    deps) ;;
    demo) shift || true; exec .venv/bin/immune-node demo "$@" ;;
    test) shift || true; exec .venv/bin/python -m pytest "$@" ;;
    *) echo "usage: ./setup.sh [demo|test|deps] [args...]" >&2; exit 2 ;;
esac
