"""``immune-node``: the one launcher of SENTINEL IMMUNE."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from typing import Any
from pathlib import Path

import msgspec
import trio
import zmq

import actors
from actors import Node, Supervisor, decode_tap, query_status, setup_logging
from hive import present
from wire import INT64_MAX  # SQLite's largest integer: bounds limits and times on the command line

from ._config import HIVE_FOLDERS, POLICY_FILE, READ_DATA, WRITE_DATA, Config, ConfigError, load_config
from ._fleet import FleetCliError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A failure to report to the user as one line, then exit non-zero."""


# -- running a node -------------------------------------------------------------


def run_node(name: str, tree: Supervisor, cfg: Config) -> int:
    """Run ``tree`` until SIGINT/SIGTERM, then stop it in reverse order."""
    try:  # the sensor's library logs as "kmod"
        setup_logging(cfg.node.log_level, also=("kmod",), format=cfg.node.log_format, to=cfg.node.log_to)
    except OSError as e:
        raise CliError(e.strerror or str(e)) from None
    log = actors.get_logger(name)
    node = Node(name, tree, cfg.run_dir)
    # SIGHUP's default action ends a process: a node only reloads on it (the
    # kmod reader's receiver takes it while it runs and restores this after),
    # so a hive, or an agent between two runs of its reader, ignores it; so
    # do the node's child processes, which inherit the disposition.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                async def on_signal() -> None:
                    async for signum in signals:
                        actors.log_event(log, "node.signal", signal=signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return
                nursery.start_soon(on_signal)
                await node.run()
                nursery.cancel_scope.cancel()

    # Not `except*`: Python before 3.11.4 (Debian 12 has 3.11.2) wraps what
    # an except* clause raises in a new group, so the one-line error would
    # come out as a traceback.
    try:
        trio.run(main)
    except BaseExceptionGroup as g:
        for kinds, says in ((actors.NodeBusy, "{e}"),
                            ((actors.Escalation, actors.StartError), "{name} stopped: {e}"),
                            (OSError, "{name}: {e}")):
            matched = g.subgroup(kinds)
            if matched is not None:
                raise CliError(says.format(name=name, e=_os_error(_leaf(matched), cfg.data_dir))) from None
        raise
    return EXIT_OK


def _os_error(e: BaseException, folder: object = None) -> BaseException | str:
    """An OS error as a user reads it: the file, then the reason.  A failed
    write often has no file name (it fails at close): then ``folder``, the
    one the node was writing in."""
    if isinstance(e, OSError) and e.strerror:
        if e.filename:
            return f"{e.filename}: {e.strerror}"
        return f"{e.strerror} (in {folder})" if folder else e.strerror
    return e


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _build(tree: Callable[[Config], Supervisor], cfg: Config) -> Supervisor:
    """A hive's tree opens its store and keys as it is built: their errors
    (a full disk, a damaged file) are one line too."""
    from hive import StoreError

    try:
        return tree(cfg)
    except (StoreError, actors.KeyFileError) as e:
        raise CliError(str(e)) from None


def cmd_hive(args: argparse.Namespace, cfg: Config) -> int:
    from ._trees import hive_tree

    return run_node("hive", _build(hive_tree, cfg), cfg)


def cmd_agent(args: argparse.Namespace, cfg: Config) -> int:
    from ._trees import NotEnrolled, agent_tree, standalone_tree

    if args.standalone:
        return run_node("agent", standalone_tree(cfg), cfg)
    try:
        tree = agent_tree(cfg)
    except (NotEnrolled, actors.KeyFileError) as e:
        raise CliError(str(e)) from None
    return run_node("agent", tree, cfg)


def cmd_demo(args: argparse.Namespace, cfg: Config) -> int:
    from ._config import HiveConfig
    from ._trees import demo_tree

    if args.listen is None and cfg.hive.listen == HiveConfig().listen:
        # A demo keeps to this machine unless told otherwise.
        cfg.hive.listen = DEMO_LISTEN
        if cfg.hive.enroll_listen == "tcp://0.0.0.0:7401":
            cfg.hive.enroll_listen = DEMO_LISTEN[:-1] + "1"
    return run_node("demo", _build(demo_tree, cfg), cfg)


DEMO_LISTEN = "tcp://127.0.0.1:7400"


# -- looking at a running node ------------------------------------------------


def cmd_version(args: argparse.Namespace, cfg: Config) -> int:
    import json

    import wire
    from agent._host import agent_version
    from hive._store import SCHEMA_VERSION

    from kmod._build import describe_object

    info = {"version": agent_version(), "wire": wire.WIRE_VERSION, "wire_commands_since": wire.COMMANDS_SINCE,
            "store_schema": SCHEMA_VERSION, "bpf_object": describe_object()}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"immune-node {info['version']} (wire {wire.WIRE_VERSION}: speaks with agents of wire "
              f"{wire.COMMANDS_SINCE} to {wire.WIRE_VERSION}; store schema {SCHEMA_VERSION})")
        print(f"sensor BPF object: {info['bpf_object']}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    try:
        st = query_status(cfg.run_dir, timeout=args.timeout)
    except actors.ActorError as e:
        if not cfg.cluster.nats or args.json:
            raise CliError(str(e)) from None
        print(f"this node: {e}")
        return _cluster_status(cfg)
    if args.json:
        sys.stdout.buffer.write(msgspec.json.encode(st) + b"\n")
        return EXIT_OK
    up = time.time() - st.started
    state = "ready" if st.ready else "starting"
    print(f"node {st.node} pid {st.pid} {state} up {up:.0f}s  taps offered {st.taps_offered} lost {st.taps_lost}")
    cols = ("ACTOR", "STATE", "PID", "IN", "OUT", "BYTES_IN", "BYTES_OUT", "BAD", "RESTARTS", "QUEUE", "LAST ERROR")
    rows = [cols] + [
        (a.name, a.state, str(a.pid or st.pid), str(a.msgs_in), str(a.msgs_out), str(a.bytes_in),
         str(a.bytes_out), str(a.malformed), str(a.restarts), str(a.queue_depth), a.last_error[:60])
        for a in st.actors
    ]
    _table(rows)
    for a in st.actors:
        hive = a.extra.get("hive")
        if isinstance(hive, str):  # an agent's relay: the hive node it delivers to
            how = "connected" if a.extra.get("connected") else "connecting"
            moves = int(a.extra.get("hive_moves", 0))
            print(f"{a.name}: hive {hive} ({how}; {moves} move{'' if moves == 1 else 's'} between hive nodes)")
        store = a.extra.get("store")
        if isinstance(store, str) and store != "ok":  # a cluster writer that cannot commit
            print(f"{a.name}: store {store}")
    return _cluster_status(cfg) if cfg.cluster.nats else EXIT_OK


def _cluster_status(cfg: Config) -> int:
    """The cluster this node is part of, as its NATS servers say."""
    import trio

    from hive.cluster import ClusterError
    from hive.cluster._status import cluster_lines, read_cluster

    from ._trees import cluster_spec

    try:
        view = trio.run(read_cluster, cluster_spec(cfg))
    except ClusterError as e:
        raise CliError(f"cluster: cannot read it from {', '.join(cfg.cluster.nats)}: {e}") from None
    print("\n".join(cluster_lines(view)))
    return EXIT_OK


def cmd_restart(args: argparse.Namespace, cfg: Config) -> int:
    try:
        name = actors.request_restart(cfg.run_dir, args.actor, timeout=args.timeout)
    except actors.ActorError as e:
        raise CliError(str(e)) from None
    print(f"restarted {name}: its supervisor restarts it (and, by its strategy, the actors that depend on it)")
    return EXIT_OK


def cmd_tap(args: argparse.Namespace, cfg: Config) -> int:
    info_path = cfg.run_dir / "node.json"
    try:
        endpoint = msgspec.json.decode(info_path.read_bytes())["tap"]
    except (OSError, msgspec.DecodeError, KeyError):
        raise CliError(f"no node is running with {cfg.run_dir} (no {info_path.name})") from None
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.connect(endpoint)
    for topic in args.topics or [""]:
        sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
    last: dict[str, int] = {}
    lost = printed = 0
    out = sys.stdout.buffer
    enc = msgspec.json.Encoder()
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    try:
        while args.count is None or printed < args.count:
            if not poller.poll(200):
                continue
            topic, seq, payload = decode_tap(sub.recv_multipart())
            gap = seq - last.get(topic, seq - 1) - 1
            last[topic] = seq
            if gap > 0:
                lost += gap
                print(f"tap: lost {gap} messages on {topic} (this watcher was too slow)", file=sys.stderr)
            try:
                body = msgspec.msgpack.decode(payload)
            except msgspec.DecodeError:
                body = {"undecodable": payload.hex()}
            if isinstance(body, list) and len(body) == 2 and isinstance(body[0], int):
                body = body[1]  # the versioned envelope
            out.write(enc.encode({"topic": topic, "seq": seq, "msg": body}) + b"\n")
            out.flush()
            printed += 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        return EXIT_OK
    finally:
        sub.close()
        if lost:
            print(f"tap: {lost} messages lost in all", file=sys.stderr)
    return EXIT_OK


# -- enrollment ------------------------------------------------------------------------

TOKEN_PREFIX = "immune1-"


def make_token(hive_public: bytes, secret: str) -> str:
    """A one-time token also carries the hive's public key, so the agent can
    pin it before it ever connects."""
    from zmq.utils import z85

    return f"{TOKEN_PREFIX}{z85.decode(hive_public).hex()}-{secret}"


def parse_token(token: str) -> tuple[bytes, str]:
    from zmq.utils import z85

    body = token.strip().removeprefix(TOKEN_PREFIX)
    try:
        if not token.strip().startswith(TOKEN_PREFIX) or body[64] != "-":
            raise ValueError
        return z85.encode(bytes.fromhex(body[:64])), body[65:]
    except (ValueError, IndexError):
        raise CliError(f"not an enrollment token (expected {TOKEN_PREFIX}<64 hex>-<secret>)") from None


def _hive_store(cfg: Config, readonly: bool = False):
    from hive import Store, StoreError


    db = cfg.store_location
    if isinstance(db, Path) and not db.exists():
        raise CliError(f"no hive store at {db} (run `immune-node hive --data {cfg.data_dir}` once)")
    try:
        return Store(db, readonly=readonly)
    except StoreError as e:
        raise CliError(str(e)) from None


def cmd_enroll(args: argparse.Namespace, cfg: Config) -> int:
    from actors import KeyPair
    from hive import StoreError

    from ._trees import Layout

    lay = Layout(cfg.data_dir)
    if args.action == "token":
        keys = KeyPair.load_or_create(lay.keys, "hive")
        store = _hive_store(cfg)
        print(make_token(keys.public, store.new_token(ttl=args.ttl)))
        return EXIT_OK
    if args.action == "join":
        return _join(args, cfg, lay)
    store = _hive_store(cfg)
    try:
        if args.action == "add":
            from actors import check_key

            store.enroll(args.name, check_key(args.key.encode(), "public key").decode())
            print(f"enrolled {args.name}")
        elif args.action == "revoke":
            store.revoke(args.name)
            print(f"revoked {args.name}: its connections are refused from now on")
    except StoreError as e:
        raise CliError(str(e)) from None
    except actors.KeyFileError as e:
        raise CliError(str(e)) from None
    return EXIT_OK


def _join(args: argparse.Namespace, cfg: Config, lay) -> int:
    import socket as pysocket

    import wire
    from actors import Codec, KeyPair, curve_client

    hive_public, secret = parse_token(args.token)
    endpoint = args.enroll or _enroll_endpoint(cfg.agent.endpoints[0])
    name = args.id or cfg.agent.id or pysocket.gethostname()
    keys = KeyPair.load_or_create(lay.keys, "agent")
    z = zmq.Context.instance().socket(zmq.REQ)
    z.setsockopt(zmq.LINGER, 0)
    z.setsockopt(zmq.RCVTIMEO, int(args.timeout * 1000))
    curve_client(z, keys, hive_public)
    try:
        z.connect(endpoint)
        z.send(Codec(wire.Enroll).encode(wire.Enroll(token=secret, agent=name)))
        try:
            reply = Codec(wire.Enrolled).decode(z.recv())
        except zmq.Again:
            raise CliError(f"no answer from {endpoint} within {args.timeout:g}s "
                           "(wrong endpoint, hive down, or the token is not this hive's)") from None
    finally:
        z.close()
    if not reply.ok:
        raise CliError(f"enrollment refused: {reply.detail}")
    lay.hive_pub.write_bytes(hive_public + b"\n")
    if reply.bundle_key:
        lay.bundle_pub.write_bytes(reply.bundle_key)
    lay.agent_id.write_text(name + "\n")
    print(f"enrolled as {name}; hive key pinned in {lay.hive_pub}"
          + ("" if reply.bundle_key else " (the hive sent no policy bundle key: an older hive; no fleet policy)"))
    return EXIT_OK


def _enroll_endpoint(hive_endpoint: str) -> str:
    """The enrollment door is next to the agents' door: port + 1."""
    head, _, port = hive_endpoint.rpartition(":")
    if not port.isdigit():
        raise CliError(f"cannot derive the enrollment endpoint from {hive_endpoint!r}; pass --enroll")
    return f"{head}:{int(port) + 1}"


# -- querying the hive's store -------------------------------------------------------------


def parse_since(text: str) -> int:
    try:
        return present.parse_since(text)
    except present.SinceError as e:
        raise CliError(str(e)) from None


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


def cmd_agents(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "label":
        from ._fleet import label

        return label(args, cfg)
    if args.rest or args.remove:
        raise CliError("agents: KEY=VALUE and --remove go with `agents label NAME`")
    rows = _hive_store(cfg, readonly=True).agents()
    if args.json:
        sys.stdout.buffer.write(msgspec.json.encode([r.__dict__ for r in rows]) + b"\n")
        return EXIT_OK
    if not rows:
        print("no agents")
        return EXIT_OK
    labels = _hive_store(cfg, readonly=True).labels()
    table = [("AGENT", "STATE", "HOSTNAME", "LAST SEEN", "SPOOLED", "DROPPED", "VERSION", "WIRE", "POLICY",
              "BUNDLE", "LABELS", "ADDRESSES")]
    refused = []
    for r in rows:
        state = "revoked" if r.revoked else "online" if r.online else "offline" if r.last_seen else "enrolled"
        table.append((r.id, state, r.hostname, present.ago(r.last_seen), str(r.spooled), str(r.dropped),
                      r.agent_version, _wire(r.wire_version), r.policy_version or "-",
                      f"v{r.bundle_version}" if r.bundle_version else "-",
                      ",".join(f"{k}={v}" for k, v in labels.get(r.id, {}).items()) or "-", ",".join(r.addresses)))
        if r.bundle_detail:
            refused.append(f"{r.id}: {r.bundle_detail}")
    _table(table)
    if refused:
        print("\nbundles refused:\n  " + "\n  ".join(refused))
    return EXIT_OK


def _wire(version: int | None) -> str:
    """An agent's wire version; one the hive does not speak (it takes
    nothing from it and sends it nothing) says so."""
    import wire

    if version is None:
        return "-"
    if wire.COMMANDS_SINCE <= version <= wire.WIRE_VERSION:
        return str(version)
    return f"{version} (hive {wire.WIRE_VERSION}: refused)"


def cmd_events(args: argparse.Namespace, cfg: Config) -> int:
    import wire

    if args.kind and args.kind not in wire.EVENT_KINDS:
        raise CliError(f"--kind {args.kind!r}: one of {', '.join(wire.EVENT_KINDS)}")
    since = parse_since(args.since) if args.since else None
    events = _hive_store(cfg, readonly=True).events(agent=args.agent, kind=args.kind, since=since, limit=args.limit)
    if args.json:
        enc = msgspec.json.Encoder()
        for e in events:
            sys.stdout.buffer.write(enc.encode(e) + b"\n")
        return EXIT_OK
    table = [("TIME", "AGENT", "KIND", "VERDICT", "PID", "CONTAINER", "WHAT")]
    for e in events:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.time / 1e9))
        table.append((stamp, e.agent, type(e).__struct_config__.tag, e.verdict, str(e.pid), present.container_label(e),
                      present.describe(e)))
    _table(table)
    return EXIT_OK


def cmd_alerts(args: argparse.Namespace, cfg: Config) -> int:
    since = parse_since(args.since) if args.since else None
    alerts = _hive_store(cfg, readonly=True).alerts(agent=args.agent, since=since, level=args.level, limit=args.limit)
    if args.json:
        enc = msgspec.json.Encoder()
        for a in alerts:
            sys.stdout.buffer.write(enc.encode(a) + b"\n")
        return EXIT_OK
    table = [("TIME", "AGENT", "LEVEL", "COUNT", "INCIDENT", "CONTAINER", "TITLE")]
    for a in alerts:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a.time / 1e9))
        inside = next((e for e in a.events if getattr(e, "container", "")), None)
        table.append((stamp, a.agent or "-", a.level, _count(a), a.incident[:12] or "-", present.container_label(inside),
                      a.title))
    _table(table)
    return EXIT_OK


def _count(alert) -> str:
    """An alert's hits: itself and its repeats, with the time of the last repeat."""
    if alert.count == 1:
        return "1"
    return f"{alert.count} (last {time.strftime('%H:%M:%S', time.gmtime(alert.last_seen / 1e9))})"


def cmd_triage(args: argparse.Namespace, cfg: Config) -> int:
    from hive import StoreError

    store = _hive_store(cfg)
    try:
        if store.incident(args.incident) is None:
            raise CliError(f"no incident {args.incident!r} (see the console's incidents page)")
        rows = store.triage(args.incident, limit=args.limit if args.all else 1)
        if args.new or not rows:
            if not cfg.ai.url:
                raise CliError("AI triage is off: set [ai] url and model in the hive's configuration (without "
                               "them nothing about an incident leaves the hive)")
            mark = rows[0].id if rows else 0
            store.request_triage(args.incident, "cli")
            deadline = time.monotonic() + args.wait
            while True:
                rows = store.triage(args.incident, limit=args.limit if args.all else 1)
                if rows and rows[0].id > mark:
                    break
                if time.monotonic() > deadline:
                    raise CliError(f"no triage of {args.incident} within {args.wait:g} s: is the hive running "
                                   "with [ai] url set? (the request stays: it will be done when it is)")
                time.sleep(0.2)
    except StoreError as e:
        raise CliError(str(e)) from None
    finally:
        store.close()
    if args.json:
        enc = msgspec.json.Encoder()
        for r in rows:
            sys.stdout.buffer.write(enc.encode(r) + b"\n")
    else:
        for r in rows:
            print(_triage_text(r))
    return EXIT_OK if rows[0].state == "done" else EXIT_FAILED


def _triage_text(r) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.time))
    calls = f"{r.calls} call{'s' if r.calls != 1 else ''}"
    if r.state != "done":
        return f"incident {r.incident}: triage failed ({r.requested_by}, {when}, {calls}): {r.reason}"
    v = r.verdict
    return "\n".join([
        f"incident {r.incident}: verdict {v['severity']} (confidence {v['confidence']:.2f}) from {r.model} "
        f"in {r.seconds:.1f} s ({r.requested_by}, {when}, {calls})",
        f"  techniques: {', '.join(v['techniques']) or '-'}",
        f"  recommended playbook: {v['playbook'] or '-'}",
        f"  explanation: {v['explanation']}",
    ])


def cmd_playbooks(args: argparse.Namespace, cfg: Config) -> int:
    from hive.playbook import check_playbooks

    report = check_playbooks(args.dir)
    print(report.format())
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_actions(args: argparse.Namespace, cfg: Config) -> int:
    import dataclasses
    import getpass

    from hive.playbook import Records, RecordsError

    store = _hive_store(cfg)
    records = Records(store.db)
    try:
        if args.verb == "run":
            if not args.what:
                raise CliError("actions run: name the ACTION (kill_process, block_connect, isolate_host, "
                               "collect_evidence)")
            return _run_action(args, cfg, records)
        if args.what or args.agent or args.pid is not None or args.address or args.ttl is not None or args.tree:
            raise CliError("ACTION, --agent, --pid, --tree, --address and --ttl go with `actions run`")
        if args.approve:
            a = records.approve(args.approve, getpass.getuser())
            print(f"approved {a.id}: {a.action} on {a.agent or 'the hive'}; the playbook acts within a second")
            return EXIT_OK
        if args.deny:
            a = records.deny(args.deny, getpass.getuser(), args.why or "")
            print(f"denied {a.id}: {a.action} on {a.agent or 'the hive'}")
            return EXIT_OK
        actions = records.actions(states=["pending_approval"] if args.pending else (), limit=args.limit)
    except RecordsError as e:
        raise CliError(str(e)) from None
    if args.json:
        enc = msgspec.json.Encoder()
        for a in actions:
            sys.stdout.buffer.write(enc.encode(dataclasses.asdict(a)) + b"\n")
        return EXIT_OK
    table = [("ID", "TIME", "AGENT", "ACTION", "MODE", "STATE", "PLAYBOOK", "RESULT")]
    for a in actions:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(a.created))
        table.append((a.id, stamp, a.agent or "-", a.action, a.mode, a.state, a.playbook, a.result[:70]))
    _table(table)
    return EXIT_OK


def _run_action(args: argparse.Namespace, cfg: Config, records: Any) -> int:
    """``immune-node actions run ACTION --agent NAME ...``: the operator's
    own action, checked as the console checks it, for the hive to send."""
    import getpass

    from ._trees import hive_addresses

    params: dict[str, Any] = {k: getattr(args, k) for k in ("pid", "address") if getattr(args, k) is not None}
    if args.tree:
        params["tree"] = True
    try:
        a = records.run(args.what, args.agent or "", params, ttl=args.ttl or 0.0, by=getpass.getuser(),
                        why=args.why or "", protected=hive_addresses(cfg.hive.listen))
    except ValueError as e:
        raise CliError(f"refused: {e}" if not str(e).startswith("refused") else str(e)) from None
    print(f"requested {a.id}: {a.describe()}; the hive sends it within a second or two "
          f"(`immune-node actions` shows its result)")
    return EXIT_OK


def cmd_rules(args: argparse.Namespace, cfg: Config) -> int:
    from hive.sigma import RuleError, check_rules

    if args.action == "list":
        return _rules_list(args, cfg)
    if args.action == "update":
        return _rules_update(args, cfg)
    try:
        report = check_rules(args.dir)
    except RuleError as e:
        raise CliError(str(e)) from None
    print(report.format())
    return EXIT_OK if report.ok else EXIT_FAILED


def _sentinel(cfg: Config) -> dict | None:
    """The statistics of the running hive's sentinel; None if no hive runs with this data folder."""
    try:
        st = query_status(cfg.run_dir, timeout=2.0)
    except actors.ActorError:
        return None
    return next((a.extra for a in st.actors if a.name.endswith(".sentinel")), None)


def _rules_list(args: argparse.Namespace, cfg: Config) -> int:
    from hive import StoreError
    from hive import parse_hits
    from hive.sigma import SUPPRESS_WINDOW, RuleError, listing, load_rules, rule_folders

    folders = rule_folders(cfg.data_dir, cfg.hive.rules)
    try:
        report = load_rules(folders).report
    except RuleError as e:
        raise CliError(str(e)) from None
    # In a cluster each node's sentinel counts only the batches it took from
    # the shared queue: the store every node writes to has them all.
    sentinel = None if cfg.cluster.nats else _sentinel(cfg)
    if sentinel is not None:
        hits, counted = parse_hits(str(sentinel.get("rule_hits", ""))), "since the running hive's sentinel started"
    else:
        try:
            hits = _hive_store(cfg, readonly=True).alert_hits()
            counted = "in the cluster's stored alerts (every node)" if cfg.cluster.nats else \
                "in the stored alerts (no hive runs)"
        except (CliError, StoreError) as e:
            if cfg.cluster.nats:
                raise CliError(f"rules list: the cluster's store cannot be read: {e}") from None
            hits, counted = {}, "none: no hive runs and there is no store"
    rules = listing(report, folders)
    if args.json:
        enc = msgspec.json.Encoder()
        for r in rules:
            sys.stdout.buffer.write(enc.encode({
                "loaded": True, "id": r.id, "title": r.title, "level": r.level, "source": r.source,
                "hits": hits.get(r.id, 0), "suppressed_by": r.suppressed_by}) + b"\n")
        for f in report.failures:
            sys.stdout.buffer.write(enc.encode({
                "loaded": False, "id": f.rule_id, "title": f.title, "path": str(f.path or ""), "kind": f.kind,
                "reason": f.reason}) + b"\n")
        return EXIT_OK
    table = [("ID", "LEVEL", "HITS", "SOURCE", "SUPPRESSED BY", "TITLE")]
    table += [(r.id, r.level, str(hits.get(r.id, 0)), r.source, "+".join(r.suppressed_by) or "-", r.title)
              for r in rules]
    _table(table)
    if report.failures:
        print(f"\nnot loaded ({report.failed}):")
        for f in report.failures:
            print(f"  {f}")
    print(f"\n{len(rules)} rules loaded from {', '.join(map(str, folders))}; {report.failed} not loaded; "
          f"hits {counted}. A hit within {SUPPRESS_WINDOW:g} s of its rule's alert with the same SUPPRESSED BY "
          "values is counted on that alert (immune-node alerts, COUNT).")
    return EXIT_OK


UPDATE_WAIT = 15.0
"""Seconds ``rules update`` waits for a running hive to load the new set."""


def _rules_update(args: argparse.Namespace, cfg: Config) -> int:
    from hive.sigma import UpdateError, update_sigmahq

    try:
        done = update_sigmahq(cfg.data_dir, args.source, cfg.hive.rules)
    except UpdateError as e:
        raise CliError(f"rules update: {e}; the rules in use are unchanged") from None
    print(f"installed {done.files} rule files from {args.source} as {done.folder}: {done.loaded} rules load, "
          f"{done.not_loaded} do not (`immune-node rules list` says why)")
    if _sentinel(cfg) is None:
        print("no hive runs with this data folder: it loads them when it starts")
        return EXIT_OK
    deadline = time.monotonic() + UPDATE_WAIT
    while time.monotonic() < deadline:
        sentinel = _sentinel(cfg) or {}
        if str(done.folder.resolve()) in str(sentinel.get("rule_folders", "")).split("\n"):
            print(f"the running hive loaded them: {sentinel.get('rules_loaded')} rules in all")
            return EXIT_OK
        time.sleep(0.5)
    raise CliError(f"rules update: installed, but the running hive did not load them within {UPDATE_WAIT:g}s "
                   "(see immune-node status: the sentinel's last error)")


# -- the parser ---------------------------------------------------------------------

Command = Callable[[argparse.Namespace, Config], int]


def _positive(kind: type, most: float) -> Callable[[str], float]:
    """An argparse type: a number above zero and at most ``most`` (a
    negative timeout would wait for ever, a negative limit would lift it)."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0 < value <= most:
            raise argparse.ArgumentTypeError(f"{text!r} must be above zero and at most {kind(most)}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="TOML configuration file (default: /etc/immune/immune.toml if it exists)")
    p.add_argument("--data", metavar="DIR",
                   help="folder where the node keeps its state (default: /var/lib/immune)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="log verbosity (default: info)")
    p.add_argument("--log-format", choices=["text", "json"],
                   help="text lines, or JSON lines with Elastic Common Schema names (default: text)")
    p.add_argument("--log-to", choices=["stderr", "journald"],
                   help="where a running node logs (default: stderr)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="immune-node",
        description="SENTINEL IMMUNE: EDR/XDR/MDR for Linux servers. One launcher for the hive, "
                    "the agent, and the tools that look at them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn: Command, help: str, description: str = "", common: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help)
        if common:  # a command with its own subcommands takes them there instead
            _common(p)
        p.set_defaults(fn=fn)
        return p

    p = add("hive", cmd_hive, "run the hive: receives agents' events, detects, responds",
            "Run the hive: receives agents' events, detects, responds. SIGINT or SIGTERM stop it; "
            "SIGHUP is ignored (rules and playbooks reload by themselves when their files change).")
    p.add_argument("--listen", metavar="ENDPOINT", help="where agents connect (default: tcp://0.0.0.0:7400)")
    p.add_argument("--console-listen", metavar="URL",
                   help="where the console serves HTTPS (default: https://127.0.0.1:7480)")
    p.add_argument("--role", choices=("router", "detect", "correlate", "respond", "all"),
                   help="in a cluster ([cluster] nats): what this node does (default: all)")

    p = add("agent", cmd_agent, "run the agent: the kernel sensor and the uplink to a hive",
            "Run the agent: the kernel sensor and the uplink to a hive. SIGINT or SIGTERM stop it; "
            "SIGHUP reloads the sensor's policy file (so does a change to the file).")
    p.add_argument("--hive", metavar="ENDPOINT", action="append",
                   help="the hive's endpoint (default: tcp://127.0.0.1:7400); give it again for each further hive "
                   "node sharing the store and key, in order of preference (replaces agent.hive)")
    p.add_argument("--id", help="this agent's name at the hive (default: the host name)")
    p.add_argument("--scope", help="machine | cgroup:/path | netns:/run/netns/NAME | container:ID|NAME|image=GLOB "
                   "(one running container, watched as its cgroup; default: machine)")
    p.add_argument("--policy", metavar="FILE", help="sensor policy file (default: the built-in policy)")
    p.add_argument("--standalone", action="store_true",
                   help="run the sensor alone, no hive: print verdict lines on stdout")

    p = add("demo", cmd_demo, "run a hive and an agent in one node on this machine",
            "Run a hive and an agent in one node on this machine, with embedded SQLite, "
            "the default policy, rules and playbooks. The agent enrolls itself.")
    p.add_argument("--listen", metavar="ENDPOINT", help="the hive's endpoint (default: tcp://127.0.0.1:7400)")
    p.add_argument("--console-listen", metavar="URL",
                   help="where the console serves HTTPS (default: https://127.0.0.1:7480)")

    p = add("tap", cmd_tap, "print a running node's messages as JSON lines",
            "Print the decoded messages of a running node as JSON lines until interrupted. "
            "TOPIC is a prefix of an actor's name, e.g. 'agent.sensor'; none means all.")
    p.add_argument("topics", nargs="*", metavar="TOPIC")
    p.add_argument("--count", type=_positive(int, INT64_MAX), metavar="N", help="stop after N messages")

    p = add("enroll", cmd_enroll, "give agents their identity at a hive",
            "On the hive: `token` prints a one-time token, `add` registers an agent's public key, "
            "`revoke` refuses an agent from now on. On the agent: `join TOKEN` enrolls this "
            "agent's key and pins the hive's key.", common=False)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = actions.add_parser("token", help="(hive) print a one-time enrollment token")
    t.add_argument("--ttl", type=_positive(float, 10 * 365 * 86400), default=3600.0, help="seconds the token stays valid (default 3600)")
    j = actions.add_parser("join", help="(agent) enroll this agent with a token")
    j.add_argument("token")
    j.add_argument("--enroll", metavar="ENDPOINT",
                   help="the hive's enrollment endpoint (default: the first agent.hive's port + 1)")
    j.add_argument("--id", help="name to enroll as (default: agent.id, else the host name)")
    j.add_argument("--timeout", type=_positive(float, 86400), default=10.0)
    a = actions.add_parser("add", help="(hive) register an agent's public key")
    a.add_argument("name")
    a.add_argument("key", help="the agent's public key (Z85, the content of keys/agent.pub)")
    r = actions.add_parser("revoke", help="(hive) refuse an agent's key from now on")
    r.add_argument("name")
    for sp in (t, j, a, r):
        _common(sp)

    p = add("agents", cmd_agents, "list the agents a hive knows; label them",
            "List the agents a hive knows: state, last sign of life, spooled and dropped events, versions "
            "(WIRE: the wire version of the agent's last Hello; the hive sends no commands to an agent "
            "on a wire version whose commands it cannot read), the policy in force, the policy bundle it "
            "runs (`immune-node policy`), labels and addresses. `agents label NAME KEY=VALUE ... "
            "[--remove KEY ...]` sets an agent's labels, which select the bundles it gets.")
    p.add_argument("action", nargs="?", choices=["label"], help="label: set labels of agent NAME")
    p.add_argument("rest", nargs="*", metavar="NAME KEY=VALUE", help=argparse.SUPPRESS)
    p.add_argument("--remove", nargs="+", metavar="KEY", help="(label) labels to take away")
    p.add_argument("--json", action="store_true")

    p = add("events", cmd_events, "query the events a hive stored (newest first)")
    p.add_argument("--agent", help="only this agent")
    p.add_argument("--kind", help="exec, fork, exit, open, setid, connect, bind or notice")
    p.add_argument("--since", help="e.g. 10m, 2h, 1d, or an ISO time")
    p.add_argument("--limit", type=_positive(int, INT64_MAX), default=100)
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = add("alerts", cmd_alerts, "query the alerts a hive raised (newest first)")
    p.add_argument("--agent", help="only this agent")
    p.add_argument("--level", help="informational, low, medium, high or critical")
    p.add_argument("--since", help="e.g. 10m, 2h, 1d, or an ISO time")
    p.add_argument("--limit", type=_positive(int, INT64_MAX), default=100)
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    for noun, fn in (("rules", cmd_rules), ("playbooks", cmd_playbooks)):
        p = add(noun, fn, f"check {'Sigma rule' if noun == 'rules' else 'playbook'} files",
                f"`{noun} check DIR` loads every file under DIR as the hive would and lists each one "
                "that cannot load, with its reason; exits 1 if any failed.", common=False)
        actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
        c = actions.add_parser("check", help=f"load the {noun} under DIR and report those that fail")
        c.add_argument("dir", metavar="DIR")
        _common(c)
        if noun == "rules":
            _rules_parsers(p, actions)

    from ._fleet import add_parsers as fleet_parsers

    fleet_parsers(add)

    from ._profile import add_parsers as profile_parsers

    profile_parsers(add)

    from ._users import add_parsers as users_parsers

    users_parsers(add)

    from ._intel import add_parsers as intel_parsers

    intel_parsers(add)

    p = add("actions", cmd_actions, "list the response actions of a hive; approve or deny them; run one by hand",
            "List the response actions of a hive, approve or deny those awaiting approval, or run one by hand: "
            "`actions run ACTION --agent NAME` with --pid (kill_process, collect_evidence; --tree kills its "
            "children too), --address (block_connect), --ttl (block_connect, isolate_host: lifted after that "
            "many seconds). The hive checks it as it checks a playbook's step (never init, the agent itself or "
            "the hive's own addresses) and sends it within a second or two; the audit trail names you.")
    p.add_argument("verb", nargs="?", choices=["run"], help="run an action by hand")
    # Checked by the hive (hive.playbook.MANUAL), not here: no import of the playbook engine for --help.
    p.add_argument("what", nargs="?", metavar="ACTION",
                   help="kill_process | block_connect | isolate_host | collect_evidence (with run)")
    p.add_argument("--agent", metavar="NAME", help="the agent to act on (with run)")
    p.add_argument("--pid", type=int, metavar="N", help="the process to kill or collect evidence on (with run)")
    p.add_argument("--tree", action="store_true", help="kill the process's children too (with run kill_process)")
    p.add_argument("--address", metavar="A", help="the address or network to block (with run block_connect)")
    p.add_argument("--ttl", type=float, metavar="S", help="lift the block or isolation after S seconds (with run)")
    p.add_argument("--pending", action="store_true", help="only actions waiting for approval")
    p.add_argument("--approve", metavar="ID", help="approve a pending action")
    p.add_argument("--deny", metavar="ID", help="deny a pending action")
    p.add_argument("--why", help="reason recorded with --deny or run")
    p.add_argument("--limit", type=_positive(int, INT64_MAX), default=100)
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = add("triage", cmd_triage, "show an incident's AI verdict, or ask the hive's model for one",
            "Print the latest AI triage of incident ID: the model's verdict (severity, confidence, ATT&CK "
            "techniques, recommended playbook, explanation) or why it failed. With --new, or when it has none "
            "yet, ask the running hive for a triage ([ai] url must be set) and wait for it. Exit 1 when the "
            "triage failed.")
    p.add_argument("incident", metavar="ID")
    p.add_argument("--new", action="store_true", help="ask for a new triage even if there is one")
    p.add_argument("--wait", type=_positive(float, 86400), default=180.0,
                   help="seconds to wait for the hive's triage (default: 180)")
    p.add_argument("--all", action="store_true", help="every triage of it, newest first")
    p.add_argument("--limit", type=_positive(int, INT64_MAX), default=20, help="with --all: at most this many")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = add("restart", cmd_restart, "restart one actor of a running node",
            "Make ACTOR of the node running with --data exit as if it crashed: its supervisor restarts "
            "it, and by its strategy the actors that depend on it. ACTOR is a name as `status` shows it "
            "(hive.router) or its last part if that is unique (router).")
    p.add_argument("actor", metavar="ACTOR")
    p.add_argument("--timeout", type=_positive(float, 86400), default=3.0, help="seconds to wait for the node's answer")

    p = add("version", cmd_version, "print this immune-node's version, wire version and store schema")
    p.add_argument("--json", action="store_true", help="print JSON instead of a line")

    p = add("status", cmd_status, "print each actor's state and statistics of a running node")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--timeout", type=_positive(float, 86400), default=3.0, help="seconds to wait for the node's answer")
    return parser


def _rules_parsers(p: argparse.ArgumentParser, actions: argparse._SubParsersAction) -> None:
    p.description += (" `rules list` shows every rule the hive runs (the built-in pack, SigmaHQ's Linux rules, "
                      "hive.rules) with its hits and suppression key, and every rule that does not load with "
                      "its reason. `rules update SOURCE` installs SigmaHQ's Linux rules from SOURCE as the "
                      "set the hive runs, and a running hive switches to it within seconds.")
    c = actions.add_parser("list", help="the rules the hive runs, their hits and suppression keys, and those "
                           "that do not load, with the reason")
    c.add_argument("--json", action="store_true", help="one JSON object per line")
    _common(c)
    c = actions.add_parser(
        "update", help="install SigmaHQ's Linux rules from a folder or a release archive",
        description="Install the Linux rules of SOURCE (a folder, such as a checkout of SigmaHQ/sigma, or a "
        "release archive: .zip, .tar, .tar.gz) as the SigmaHQ set of the hive of --data, in place of the one "
        "shipped with immune-node (give that folder as SOURCE to go back to it). The new set is checked "
        "as the hive would load it and swapped in at once; a broken or hostile SOURCE changes nothing and "
        "exits 1 with the reason. Rules whose logsource our sensor does not produce do not load and do not "
        "stop the update: `rules list` names them.")
    c.add_argument("source", metavar="SOURCE", type=Path)
    _common(c)


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    o: dict[str, object] = {"node_data": args.data, "node_log_level": args.log_level,
                            "node_log_format": args.log_format, "node_log_to": args.log_to}
    if args.command in ("hive", "demo"):
        o["hive_listen"] = args.listen
        o["console_listen"] = args.console_listen
        o["cluster_role"] = getattr(args, "role", None)
    if args.command == "agent":
        o.update(agent_hive=args.hive, agent_id=args.id, sensor_scope=args.scope, sensor_policy=args.policy)
    return o


# What each command needs on disk besides good values.
_CHECKS = {
    "hive": {WRITE_DATA, HIVE_FOLDERS},
    "agent": {WRITE_DATA, POLICY_FILE},
    "demo": {WRITE_DATA, HIVE_FOLDERS, POLICY_FILE},
    "enroll": {WRITE_DATA},
    "users": {WRITE_DATA},
    "intel": {WRITE_DATA},
    **dict.fromkeys(("tap", "agents", "events", "alerts", "actions", "status", "restart", "policy", "triage"),
                    {READ_DATA}),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, check=_CHECKS.get(args.command, ()), **_overrides(args))
        return args.fn(args, cfg)
    except (ConfigError, CliError, FleetCliError) as e:
        print(f"immune-node: {e}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, ConfigError) else EXIT_FAILED
    except OSError as e:
        # The disk filled or a file changed under us after the checks.
        print(f"immune-node: {_os_error(e)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

