"""``python -m kmod build`` compiles the BPF programs (cached);
``python -m kmod prebuild`` compiles them once for every kernel of this
architecture (what a package ships; hosts then need no compiler);
``python -m kmod which`` says which object the sensor would load;
``python -m kmod run`` runs the sensor and prints the seed's verdict lines."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

import msgspec

from . import KmodError, LinuxSensor, Policy, Scope, build, verdict_line
from ._build import describe_object, prebuild, prebuilt_paths


def _build(args: argparse.Namespace) -> int:
    print(build(force=args.force))
    print(f"kmod: the sensor loads {describe_object()}", file=sys.stderr)
    return 0


def _prebuild(args: argparse.Namespace) -> int:
    obj = prebuild(Path(args.out) if args.out else None, Path(args.btf) if args.btf else None)
    print(obj)
    print(prebuilt_paths(obj.parent)[1])
    return 0


def _which(args: argparse.Namespace) -> int:
    print(describe_object())
    return 0


def _run(args: argparse.Namespace) -> int:
    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sensor = LinuxSensor(Policy.load(args.policy) if args.policy else None,
                         scope=Scope.parse(args.scope), watchdog_bound=args.watchdog_ms / 1000)
    sensor.start()
    try:
        path, origin = sensor.bpf_object
        print(f"kmod: BPF object {path} ({origin})", file=sys.stderr)
        off = sensor.attachments()["off"]
        if off:
            print(f"kmod: hooks off: {', '.join(off)}", file=sys.stderr)
        if args.ready:
            with open(args.ready + ".tmp", "w") as f:
                json.dump(dict(pid=os.getpid(), **sensor.attachments()), f)
            os.replace(args.ready + ".tmp", args.ready)
        encode = msgspec.json.encode
        out = sys.stdout
        while not stop:
            sensor.wait(0.2)
            for event in sensor.drain():
                line = verdict_line(event)
                if line:
                    out.write(line + "\n")
                if args.events:
                    out.write(encode(event).decode() + "\n")
            out.flush()
    finally:
        sensor.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kmod", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the BPF programs (only if their sources changed)")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.set_defaults(fn=_build)
    p = sub.add_parser("prebuild", help="compile the BPF object once, for any kernel with BTF "
                       "(CO-RE), with a JSON manifest beside it")
    p.add_argument("--out", metavar="DIR", help="output directory (default: kmod/prebuilt)")
    p.add_argument("--btf", metavar="FILE", help="the BTF whose type names vmlinux.h is made of "
                   "(default: this kernel's /sys/kernel/btf/vmlinux; for a build chroot without /sys)")
    p.set_defaults(fn=_prebuild)
    w = sub.add_parser("which", help="say which BPF object the sensor would load, without loading it")
    w.set_defaults(fn=_which)
    r = sub.add_parser("run", help="run the sensor, print verdict lines until SIGTERM/SIGINT")
    r.add_argument("--policy", help="policy TOML file (default: kmod/default_policy.toml)")
    r.add_argument("--scope", default="machine",
                   help="machine (default), cgroup:PATH, netns:PATH|NAME or container:ID|NAME|image=GLOB")
    r.add_argument("--events", action="store_true", help="also print every event as JSON")
    r.add_argument("--watchdog-ms", type=float, default=250.0,
                   help="fail open when fanotify is not answered within this (default 250)")
    r.add_argument("--ready", metavar="FILE",
                   help="once running, write {pid, programs, links} as JSON to FILE")
    r.set_defaults(fn=_run)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.fn(args)
    except KmodError as e:
        print(f"kmod: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
