"""``immune-node agents label`` and ``immune-node policy push|diff|history``:
fleet policy as an operator manages it, in the hive's store (a running
hive's router sends what changed within a second)."""

from __future__ import annotations

import argparse
import difflib
import getpass
import json
import time
from pathlib import Path

import msgspec

from ._config import Config


class FleetCliError(Exception):
    """Said to the user in one line (node.cli maps it to its own error)."""


def parse_labels(items: list[str], what: str = "label") -> dict[str, str]:
    import re

    from fleet import LABEL_KEY

    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise FleetCliError(f"{what} {item!r}: expected KEY=VALUE")
        if not re.match(LABEL_KEY, key):
            raise FleetCliError(f"{what} {item!r}: a key is a letter or digit, then letters, digits, "
                                "'.', '_' or '-', at most 63")
        if len(value) > 255 or "\0" in value:
            raise FleetCliError(f"{what} {item!r}: a value is at most 255 characters, without NUL")
        out[key] = value
    return out


def _read_folder(folder: str | None, what: str) -> dict[str, str]:
    """The YAML files directly in ``folder``, by name."""
    if not folder:
        return {}
    path = Path(folder)
    if not path.is_dir():
        raise FleetCliError(f"--{what} {folder}: not a folder")
    files = {}
    for p in sorted(path.iterdir()):
        if p.suffix in (".yml", ".yaml") and p.is_file():
            try:
                files[p.name] = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise FleetCliError(f"--{what}: {p}: cannot be read as text: {e}") from None
    if not files:
        raise FleetCliError(f"--{what} {folder}: no .yml or .yaml file in it")
    return files


def _check(args: argparse.Namespace) -> tuple[str, dict[str, str], dict[str, str]]:
    """The policy text, rules and playbooks the arguments name, each loaded
    as the agent (policy) and the hive's engines (rules, playbooks) would."""
    from hive.playbook import check_playbooks
    from hive.sigma import check_rules
    from kmod import Policy, PolicyError

    policy = ""
    if args.policy:
        try:
            policy = Path(args.policy).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise FleetCliError(f"--policy {args.policy}: cannot be read: {e}") from None
        try:
            Policy.parse(policy, origin=args.policy)
        except PolicyError as e:
            raise FleetCliError(f"--policy: {e}") from None
    rules = _read_folder(args.rules, "rules")
    if rules:
        report = check_rules(args.rules)
        if report.failures:
            raise FleetCliError(f"--rules {args.rules}: {report.failed} do not load, e.g. {report.failures[0]}")
    playbooks = _read_folder(args.playbooks, "playbooks")
    if playbooks:
        report = check_playbooks(args.playbooks)
        if not report.ok:
            raise FleetCliError(f"--playbooks {args.playbooks}: {report.format().splitlines()[0]}")
    if not (policy or rules or playbooks):
        raise FleetCliError("nothing to push: give --policy FILE, --rules DIR and/or --playbooks DIR")
    return policy, rules, playbooks


def _store(cfg: Config, readonly: bool = False):
    from hive import Store, StoreError


    if isinstance(cfg.store_location, Path) and not cfg.store_location.exists():
        raise FleetCliError(f"no hive store at {cfg.store_location} (start the hive once, or pass --data)")
    try:
        return Store(cfg.store_location, readonly=readonly)
    except StoreError as e:
        raise FleetCliError(str(e)) from None


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def label(args: argparse.Namespace, cfg: Config) -> int:
    if not args.rest:
        raise FleetCliError("agents label NAME KEY=VALUE ... [--remove KEY ...]")
    name, put = args.rest[0], parse_labels(args.rest[1:])
    remove = list(args.remove or [])
    if not put and not remove:
        raise FleetCliError("agents label NAME KEY=VALUE ...: no label given")
    store = _store(cfg)
    try:
        if name not in {a.id for a in store.agents()}:
            raise FleetCliError(f"no agent {name!r} at this hive (`immune-node agents` lists them)")
        labels = store.set_labels(name, put, remove, actor=_actor())
    finally:
        store.close()
    print(f"{name}: {' '.join(f'{k}={v}' for k, v in labels.items()) or 'no labels'}")
    return 0


def _decoded(row):
    """A stored bundle's content (the hive's own: not verified again)."""
    import fleet

    return msgspec.msgpack.decode(msgspec.msgpack.decode(row.signed, type=fleet.Signed).bundle, type=fleet.Bundle)


def _files(b) -> dict[str, str]:
    out = {"policy.toml": b.policy} if b.policy else {}
    out.update({f"rules/{k}": v for k, v in b.rules.items()})
    out.update({f"playbooks/{k}": v for k, v in b.playbooks.items()})
    return out


def _diff(old: dict[str, str], new: dict[str, str]) -> list[str]:
    lines: list[str] = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        lines += difflib.unified_diff((a or "").splitlines(keepends=True), (b or "").splitlines(keepends=True),
                                      fromfile=f"a/{name}" if a is not None else "/dev/null",
                                      tofile=f"b/{name}" if b is not None else "/dev/null")
    return [line if line.endswith("\n") else line + "\n" for line in lines]


def push(args: argparse.Namespace, cfg: Config) -> int:
    import fleet

    from ._trees import Layout

    labels = parse_labels(args.labels or [], "--labels")
    policy, rules, playbooks = _check(args)
    key = fleet.SigningKey.load_or_create(Layout(cfg.data_dir).keys)
    store = _store(cfg)

    def sign(version: int) -> bytes:
        b = fleet.Bundle(name=args.name, version=version, labels=labels, policy=policy, rules=rules,
                         playbooks=playbooks)
        try:
            return fleet.encode(key.sign(b))
        except ValueError as e:
            raise FleetCliError(f"bundle {args.name!r}: {e}") from None

    try:
        version = store.push_bundle(args.name, labels, sign, note=args.note or "", actor=_actor())
        agents = store.agents()
        tagged = store.labels()
    finally:
        store.close()
    targets = [a.id for a in agents if not a.revoked and fleet.selects(labels, tagged.get(a.id, {}))]
    print(f"pushed {args.name} v{version} for {' '.join(f'{k}={v}' for k, v in labels.items()) or 'every agent'}: "
          f"{'policy, ' if policy else ''}{len(rules)} rules, {len(playbooks)} playbooks; "
          f"{len(targets)} agents carry these labels ({', '.join(targets[:10]) or 'none yet'}"
          f"{', ...' if len(targets) > 10 else ''}); online ones get it within seconds")
    return 0


def diff(args: argparse.Namespace, cfg: Config) -> int:
    """What ``push`` with the same arguments would change against NAME's latest."""
    import sys

    labels = parse_labels(args.labels or [], "--labels")
    policy, rules, playbooks = _check(args)
    store = _store(cfg, readonly=True)
    try:
        rows = store.bundles(args.name, limit=1)
    finally:
        store.close()
    import fleet

    new = _files(fleet.Bundle(name=args.name, version=1, policy=policy, rules=rules, playbooks=playbooks))
    old, old_labels = ({}, None) if not rows else (_files(_decoded(rows[0])), rows[0].labels)
    out = _diff(old, new)
    if old_labels is not None and old_labels != labels:
        out.insert(0, f"labels: {json.dumps(old_labels, sort_keys=True)} -> {json.dumps(labels, sort_keys=True)}\n")
    if not rows:
        out.insert(0, f"{args.name}: never pushed; all of it is new\n")
    sys.stdout.writelines(out or [f"{args.name} v{rows[0].version}: no change\n"])
    return 1 if out else 0


def history(args: argparse.Namespace, cfg: Config) -> int:
    from .cli import _table

    store = _store(cfg, readonly=True)
    try:
        rows = store.bundles(args.name, limit=args.limit)
        running: dict[int, list[str]] = {}
        for a in store.agents():
            if a.bundle_version:
                running.setdefault(a.bundle_version, []).append(a.id)
    finally:
        store.close()
    if args.json:
        import sys

        for r in rows:
            b = _decoded(r)
            sys.stdout.write(json.dumps({
                "version": r.version, "name": r.name, "labels": r.labels, "pushed": r.pushed, "note": r.note,
                "policy": bool(b.policy), "rules": sorted(b.rules), "playbooks": sorted(b.playbooks),
                "agents": running.get(r.version, [])}) + "\n")
        return 0
    if not rows:
        print("no bundles pushed" + (f" named {args.name}" if args.name else ""))
        return 0
    table = [("VERSION", "NAME", "PUSHED", "LABELS", "POLICY", "RULES", "PLAYBOOKS", "RUN BY", "NOTE")]
    for r in rows:
        b = _decoded(r)
        table.append((str(r.version), r.name, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.pushed)),
                      " ".join(f"{k}={v}" for k, v in r.labels.items()) or "(all)", "yes" if b.policy else "-",
                      str(len(b.rules)), str(len(b.playbooks)), ",".join(running.get(r.version, [])) or "-",
                      r.note or "-"))
    _table(table)
    return 0


def add_parsers(add) -> None:
    """The ``policy`` command, through node.cli's ``add``."""
    from .cli import _common, _positive

    p = add("policy", None, "manage the policy bundles the hive assigns to agents",
            "Fleet policy: a bundle is a sensor policy (and edge rules and playbooks) for the agents whose "
            "labels include the bundle's (`immune-node agents label NAME KEY=VALUE`). `push` checks, signs "
            "with the hive's key and stores a new version; a running hive sends it to the online agents it "
            "selects within seconds, and to others when they connect. An agent runs the most specific "
            "bundle that selects it (the most labels, then the newest), refuses an unsigned, altered or "
            "older one, and rolls back to the last good one if the new one does not load. `diff` shows "
            "what a push would change; `history` lists the versions and who runs them.", common=False)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, fn, help in (("push", push, "check, sign and store a new version of bundle NAME"),
                           ("diff", diff, "what `push` with these files would change in NAME (exit 1 if any)")):
        c = actions.add_parser(name, help=help, description=help)
        c.add_argument("name", metavar="NAME")
        c.add_argument("--labels", nargs="+", metavar="KEY=VALUE", help="the agents it is for (default: every agent)")
        c.add_argument("--policy", metavar="FILE", help="a sensor policy (TOML)")
        c.add_argument("--rules", metavar="DIR", help="a folder of Sigma rules for the edge")
        c.add_argument("--playbooks", metavar="DIR", help="a folder of playbooks for the edge")
        if name == "push":
            c.add_argument("--note", help="why, kept in the history")
        c.set_defaults(fn=fn)
        _common(c)
    c = actions.add_parser("history", help="the pushed versions, newest first, and the agents that run each")
    c.add_argument("name", metavar="NAME", nargs="?")
    c.add_argument("--limit", type=_positive(int, 1 << 31), default=50)
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    c.set_defaults(fn=history)
    _common(c)
