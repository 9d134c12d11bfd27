#!/usr/bin/env bash
# Installs the packages of DIST into a throwaway copy of this machine and runs them there:
#   unshare -m -n --propagation private bash in_root.sh DIST STEPS
# The copy is an overlay of / on a tmpfs, seen only in this mount namespace; the private network
# namespace keeps the hive's ports apart from any other hive on the machine. STEPS (comma
# separated): install, run (hive + enrolled agent: an exec refused, an alert stored), upgrade
# (to the packages in $UPGRADE_DIST while events flow: the keys, spool and configuration kept,
# every event the agent took stored once), remove, purge. Each check prints "ok: ..." or stops
# the script with "FAIL: ...".
set -euo pipefail
DIST=$(realpath "$1")
STEPS=",$2,"
fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }

T=$(mktemp -d /tmp/immune-root.XXXXXX)
pids=()
# Whatever way the script ends, the nodes it started stop with it (their mount namespace goes too).
cleanup() {
    for p in "${pids[@]}"; do pkill -TERM -P "$p" 2>/dev/null || true; kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
mount -t tmpfs -o size=2g tmpfs "$T"
mkdir "$T/up" "$T/work" "$T/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/up,workdir=$T/work" "$T/root"
R=$T/root
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/tmp"
mount -t tmpfs tmpfs "$R/run"
mkdir -p "$R/pkgs" && cp "$DIST"/*.deb "$R/pkgs/"
ip link set lo up
in_root() { chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }

in_root sh -c 'dpkg -i /pkgs/*.deb' >"$T/dpkg.log" 2>&1 \
    || { cat "$T/dpkg.log"; fail "dpkg -i"; }
ok "installed"
in_root dpkg-query -W -f='${Status}\n' immune-common immune-hive immune-agent | grep -vq '^install ok installed$' \
    && fail "not all three packages are installed"
getent_out=$(in_root getent passwd immune) || fail "no user immune"
ok "user immune: $getent_out"
[ "$(in_root stat -c %U /var/lib/immune)" = immune ] || fail "/var/lib/immune is not the hive's"
[ "$(in_root stat -c %U:%a /var/lib/immune/agent)" = root:700 ] || fail "/var/lib/immune/agent is not root's, 0700"
in_root test -f /etc/immune/immune.toml || fail "no /etc/immune/immune.toml"
in_root immune-node version >/dev/null || fail "immune-node version"
ok "immune-node runs"

# As the units run them: the hive as immune, the agent as root within the unit's bounding set.
start_hive() {
    in_root runuser -u immune -- immune-node hive --config /etc/immune/immune.toml >>"$T/hive.log" 2>&1 &
    hive=$!
    pids+=("$hive")
    for _ in $(seq 100); do
        in_root runuser -u immune -- immune-node status 2>/dev/null | grep -q ' ready up' && return
        kill -0 "$hive" 2>/dev/null || { cat "$T/hive.log"; fail "the hive exited"; }
        sleep 0.2
    done
    cat "$T/hive.log"; fail "the hive did not get ready"
}
enroll_agent() {
    token=$(in_root runuser -u immune -- immune-node enroll token) || fail "no enrollment token from the hive"
    in_root immune-node enroll join "$token" --enroll tcp://127.0.0.1:7401 --data /var/lib/immune/agent \
        >"$T/join.log" 2>&1 || { cat "$T/join.log"; fail "enroll join"; }
    ok "agent enrolled"
}
start_agent() {
    local caps
    caps=$(sed -n 's/^CapabilityBoundingSet=//p' "$R/lib/systemd/system/immune-agent.service" \
           | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')
    in_root setpriv --bounding-set "-all,$caps" --no-new-privs \
        immune-node agent --config /etc/immune/immune.toml --data /var/lib/immune/agent >>"$T/agent.log" 2>&1 &
    agent=$!
    pids+=("$agent")
    for _ in $(seq 150); do
        st=$(in_root immune-node status --data /var/lib/immune/agent 2>/dev/null) || true
        if grep -q ' ready up' <<<"$st" && { [ "${1:-}" = alone ] || grep -q '(connected;' <<<"$st"; }; then
            return
        fi
        kill -0 "$agent" 2>/dev/null || { cat "$T/agent.log"; fail "the agent exited"; }
        sleep 0.2
    done
    cat "$T/agent.log"; fail "the agent did not get ready"
}
# A node stops as its unit stops it: SIGTERM to the node's own process (its status names it;
# $hive and $agent are the shells that started them), then it is awaited.
stop_node() {
    local pid
    pid=$(in_root immune-node status --json "$@" | python3 -c 'import json, sys; print(json.load(sys.stdin)["pid"])') \
        || fail "no status from the node to stop ($*)"
    kill -TERM "$pid"
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    fail "node $pid did not stop within 30 s of SIGTERM"
}
stop_hive() { stop_node --data /var/lib/immune; wait "$hive" 2>/dev/null || true; }
stop_agent() { stop_node --data /var/lib/immune/agent; wait "$agent" 2>/dev/null || true; }

if [[ $STEPS == *,run,* ]]; then
    # No compiler on this host: the agent must load the prebuilt object.
    rm -f "$R"/usr/bin/clang* "$R"/usr/lib/llvm-*/bin/clang* "$R/usr/sbin/bpftool" "$R/usr/bin/bpftool"
    in_root sh -c '! command -v clang && ! command -v bpftool' >/dev/null || fail "clang or bpftool still here"
    in_root /usr/lib/immune/bin/python -m kmod which | grep -q prebuilt || fail "the agent would not load the prebuilt object"
    ok "no clang, no bpftool; prebuilt object chosen"
    start_hive
    enroll_agent
    start_agent
    sleep 1
    cp /bin/true "$R/tmp/x.sh"
    chmod 0755 "$R/tmp/x.sh"
    if in_root /tmp/x.sh 2>"$T/exec.err"; then
        in_root immune-node status --data /var/lib/immune/agent || true
        cat "$T/agent.log"; fail "exec of /tmp/x.sh was not refused"
    fi
    ok "exec refused: $(cat "$T/exec.err")"
    for _ in $(seq 100); do
        alerts=$(in_root runuser -u immune -- immune-node alerts 2>&1) || true
        grep -q 'World-Writable' <<<"$alerts" && break
        sleep 0.2
    done
    grep -q 'World-Writable' <<<"$alerts" || { echo "$alerts"; tail -30 "$T/agent.log"; fail "no alert at the hive"; }
    ok "alert stored: $(grep -m1 'World-Writable' <<<"$alerts")"
    grep -h 'IMMUNE: \[BLOCKED\] exec /tmp/x.sh' "$T/agent.log" >/dev/null && ok "verdict line in the agent's log"
    cleanup
    pids=()
fi

if [[ $STEPS == *,upgrade,* ]]; then
    # Markers: execs of /bin/true with a word of their own (the loop's shell holds only "$i"),
    # each to be stored exactly once: one per exec event of /bin/true.
    mark() { in_root sh -c "for i in \$(seq $2); do /bin/true upgrade-mark-$1-\$i; done"; }
    stored() {
        in_root runuser -u immune -- immune-node events --kind exec --limit 1000000 --json 2>/dev/null \
            | python3 -c 'import json, re, sys
for line in sys.stdin:
    argv = json.loads(line).get("argv", [])
    if len(argv) == 2 and re.fullmatch(r"upgrade-mark-[A-Z]-[0-9]+", argv[1]):
        print(argv[1])'
    }
    wait_stored() {
        for _ in $(seq 300); do
            [ "$(stored | sort -u | wc -l)" -ge "$1" ] && return
            sleep 0.2
        done
        tail -20 "$T/agent.log"; fail "$(stored | sort -u | wc -l) markers stored, not $1"
    }
    NEXT=$(realpath "$UPGRADE_DIST")
    mkdir -p "$R/pkgs-next" && cp "$NEXT"/*.deb "$R/pkgs-next/"
    old=$(in_root dpkg-query -W -f='${Version}' immune-agent)
    start_hive
    in_root test -e /var/lib/immune/agent/keys/agent.key || enroll_agent
    start_agent
    mark A 50
    wait_stored 50
    ok "50 events stored before the upgrade"
    # The hive's package goes first (hives before agents): while it is down the agent spools.
    stop_hive
    mark B 50
    sleep 1
    stop_agent
    keys=$(in_root sh -c 'sha256sum /var/lib/immune/agent/keys/* /var/lib/immune/keys/*')
    echo "# kept across the upgrade" >>"$R/etc/immune/immune.toml"
    in_root sh -c 'dpkg -i /pkgs-next/*.deb' >"$T/dpkg.log" 2>&1 || { cat "$T/dpkg.log"; fail "dpkg -i (upgrade)"; }
    new=$(in_root dpkg-query -W -f='${Version}' immune-agent)
    [ "$new" != "$old" ] || fail "still $old after the upgrade"
    [ "$keys" = "$(in_root sh -c 'sha256sum /var/lib/immune/agent/keys/* /var/lib/immune/keys/*')" ] \
        || fail "the keys changed across the upgrade"
    in_root grep -q '# kept across the upgrade' /etc/immune/immune.toml || fail "the upgrade replaced the changed conffile"
    ok "upgraded $old -> $new; keys and configuration kept"
    start_hive
    start_agent
    mark C 50
    wait_stored 150
    all=$(stored | wc -l)
    [ "$all" -eq 150 ] || fail "$all markers stored for 150 events: some twice"
    ok "150 events stored once across the upgrade (50 before, 50 spooled while the hive was down, 50 after)"
    stop_agent
    stop_hive
    pids=()
fi

if [[ $STEPS == *,remove,* ]]; then
    echo "# local change" >>"$R/etc/immune/immune.toml"
    in_root dpkg -r immune-agent immune-hive immune-common >"$T/dpkg.log" 2>&1 || { cat "$T/dpkg.log"; fail "dpkg -r"; }
    in_root test ! -e /usr/bin/immune-node || fail "/usr/bin/immune-node left after remove"
    in_root test ! -e /usr/lib/immune || fail "/usr/lib/immune left after remove"
    in_root test ! -e /lib/systemd/system/immune-hive.service || fail "unit left after remove"
    in_root test -d /var/lib/immune/agent || fail "remove dropped /var/lib/immune/agent"
    in_root grep -q '# local change' /etc/immune/immune.toml || fail "remove dropped the configuration"
    ok "removed; /var/lib/immune and /etc/immune/immune.toml kept"
fi

if [[ $STEPS == *,purge,* ]]; then
    in_root dpkg --purge immune-agent immune-hive immune-common >"$T/dpkg.log" 2>&1 || { cat "$T/dpkg.log"; fail "dpkg --purge"; }
    for p in /var/lib/immune /etc/immune /var/log/immune /usr/lib/immune /usr/bin/immune-node \
             /etc/systemd/system/multi-user.target.wants/immune-hive.service \
             /etc/systemd/system/multi-user.target.wants/immune-agent.service; do
        in_root test ! -e "$p" || fail "$p left after purge"
    done
    in_root dpkg-query -W immune-common >/dev/null 2>&1 && fail "immune-common still known to dpkg"
    ok "purged; nothing left"
fi
echo "done"
