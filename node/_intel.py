"""``immune-node intel``: the indicators this hive pulled from its peers
(list, pull now, revoke) and its own herd key (what peers pin)."""

from __future__ import annotations

import argparse
import json
import time

from ._config import Config
from ._fleet import FleetCliError, _actor


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def cmd_intel(args: argparse.Namespace, cfg: Config) -> int:
    from hive import Store, StoreError
    from hive.herd import HerdError, Intel, pull

    from .cli import _table
    from ._trees import Layout

    if args.action == "key":
        import fleet
        from hive.console._taxii import ROOT, collection_id

        key = fleet.SigningKey.load_or_create(Layout(cfg.data_dir).keys)
        host, _, port = cfg.console.listen.removeprefix("https://").rpartition(":")
        print(f"key = \"{key.public.hex()}\"")
        print(f"url = \"https://{host}:{port}/taxii2/{ROOT}/collections/{collection_id(key.public)}/\"")
        return 0
    try:
        store = Store(cfg.store_location, readonly=args.action == "list")
    except StoreError as e:
        raise FleetCliError(str(e)) from None
    intel = Intel(store.db)
    try:
        if args.action == "list":
            now = time.time()
            entries = intel.entries()
            if args.json:
                print(json.dumps([{
                    "key": e.key, "kind": e.kind, "value": e.value, "first": e.first, "updated": e.updated,
                    "revoked": e.revoked, "revoked_by": e.revoked_by, "in_force": bool(e.live(now)),
                    "sources": [vars(s) for s in e.sources]} for e in entries], indent=1))
                return 0
            rows = [("INDICATOR", "STATE", "PEER", "TRUST", "PEER'S ID", "CONF", "UNTIL")]
            for e in entries:
                state = "revoked" if e.revoked is not None else ("in force" if e.live(now) else "expired")
                for i, s in enumerate(e.sources or [None]):
                    if s is None:
                        rows.append((e.key, state, "-", "-", "-", "-", "-"))
                        continue
                    src_state = "revoked" if s.revoked else ("expired" if s.valid_until <= now else "")
                    rows.append((e.key if i == 0 else "", state if i == 0 else "", s.peer,
                                 s.trust + (f" ({src_state})" if src_state else ""), s.indicator, str(s.confidence),
                                 _when(s.valid_until)))
            _table(rows)
            return 0
        if args.action == "pull":
            peers = [p for p in cfg.herd.peers if not args.peer or p.name in args.peer]
            unknown = set(args.peer or ()) - {p.name for p in peers}
            if unknown:
                raise FleetCliError(f"no peer {sorted(unknown)[0]!r} in [herd] peers")
            if not peers:
                raise FleetCliError("no [[herd.peers]] in the configuration")
            failed = 0
            for p in peers:
                try:
                    r = pull(intel, p, now=time.time(), max_age=cfg.herd.max_days * 86400)
                except HerdError as e:
                    failed += 1
                    print(f"{p.name}: failed: {e}")
                    continue
                print(f"{p.name}: {r.accepted} accepted ({r.new} new, {r.revoked} revoked, {r.capped} expiry capped), "
                      f"{len(r.refused)} refused, {r.ignored} other objects")
                for ident, reason in r.refused:
                    print(f"  refused {ident or '-'}: {reason}")
            return 1 if failed else 0
        entry = intel.revoke(args.id, by=_actor(), now=time.time())
        print(f"revoked {entry.key}; the hive lifts its blocks within a few seconds")
        return 0
    except HerdError as e:
        raise FleetCliError(str(e)) from None
    finally:
        store.close()


def add_parsers(add) -> None:
    p = add("intel", cmd_intel, "indicators pulled from other hives (Herd): list, pull now, revoke; this hive's key",
            "Threat intelligence shared between hives. `list` shows every indicator pulled from the peers in "
            "[herd] peers (one line per peer that sent it), `pull` pulls now (all peers, or those named), "
            "`revoke ID` withdraws one (by its key, e.g. sha256:..., or a peer's indicator id) and lifts its "
            "blocks, `key` prints this hive's herd key and collection URL, which its peers put in their config.",
            common=False)
    from .cli import _common

    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="the indicators pulled, with their peers, trust and expiry")
    ls.add_argument("--json", action="store_true")
    pl = actions.add_parser("pull", help="pull from the peers now")
    pl.add_argument("peer", nargs="*", metavar="PEER")
    rv = actions.add_parser("revoke", help="revoke an indicator and lift its blocks")
    rv.add_argument("id", metavar="ID")
    key = actions.add_parser("key", help="print this hive's herd key and TAXII collection URL")
    for sp in (ls, pl, rv, key):
        _common(sp)
