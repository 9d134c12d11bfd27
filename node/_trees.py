"""The supervision trees of the hive, the agent and the demo node, and where
each keeps its files under the data folder."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from actors import Child, KeyPair, Supervisor, zap_handler

from ._config import Config


class Layout:
    """Files under ``--data``.  The demo node uses both halves in one folder."""

    def __init__(self, data: Path) -> None:
        self.data = Path(data)
        self.keys = self.data / "keys"
        self.spool = self.data / "spool"
        self.agent_id = self.keys / "agent.id"
        self.hive_pub = self.keys / "hive.pub"
        self.bundle_pub = self.keys / "bundle.pub"
        """The hive's key for policy bundles: the hive's own (beside
        bundle.key), or the one an agent pinned at enrollment."""
        self.fleet = self.data / "fleet"
        """An agent's policy bundles (``fleet.Keeper``) and the sensor policy link."""


def hive_children(cfg: Config) -> list[Child]:
    from hive.console import console_actor
    from hive import (
        INGEST, Store, correlate_actor, enroll_actor, registry_actor, router_actor, sentinel_actor, store_actor,
        zap_authorizer,
    )
    from hive.outputs import output_actor
    from hive.playbook import DEFAULT_PLAYBOOKS, playbook_actor
    from hive.sigma import rule_folders

    import fleet

    lay = Layout(cfg.data_dir)
    keys = KeyPair.load_or_create(lay.keys, "hive")
    bundle_key = fleet.SigningKey.load_or_create(lay.keys)
    Store(cfg.store_location).close()  # create the schema, and fail here if the folder is unusable
    t = cfg.node.shutdown_timeout
    db = cfg.store_location
    # Detection runs in child processes, so these hops are ipc.
    run = cfg.run_dir
    detect, correlate = f"ipc://{run}/detect.sock", f"ipc://{run}/correlate.sock"
    ingest, alerts = f"ipc://{run}/ingest.sock", f"ipc://{run}/alerts.sock"
    spec = cluster_spec(cfg)
    does = spec.does if spec else (lambda role: True)
    router_side = does("router")
    children = []
    if router_side:
        children += [
            Child("store", store_actor, shutdown=t, args=dict(
                path=db, retention_days=cfg.hive.retention_days, retention_mb=cfg.hive.retention_mb,
                ingest=(INGEST, ingest), detect=detect)),
            Child("registry", registry_actor, shutdown=t, args=dict(
                path=db, heartbeat_timeout=cfg.hive.heartbeat_timeout)),
            Child("zap", zap_handler, shutdown=t, args=dict(authorize=zap_authorizer(db))),
            Child("router", router_actor, shutdown=t, args=dict(
                path=db, keys=keys, listen=cfg.hive.listen, max_frame=cfg.hive.max_frame, cluster=spec)),
            Child("enroll", enroll_actor, shutdown=t, args=dict(path=db, keys=keys, listen=cfg.hive.enroll_listen,
                                                               bundle_key=bundle_key.public)),
        ]
        if spec:
            from hive.cluster import writer_actor

            # Takes agents' batches from JetStream into the store, and binds
            # the store's way to detection (its own events go there too).
            children.append(Child("writer", writer_actor, shutdown=t, args=dict(path=db, spec=spec, detect=detect)))
    if does("respond"):
        children.append(Child("playbook", playbook_actor, shutdown=t, args=dict(
            path=db, playbook_dirs=[DEFAULT_PLAYBOOKS, *map(Path, cfg.hive.playbooks)],
            # No webhook configured: vars.webhook is absent and notify steps are skipped.
            evidence_dir=lay.data / "evidence", variables={"webhook": cfg.hive.webhook} if cfg.hive.webhook else {},
            protected=hive_addresses(cfg.hive.listen), dry_run=cfg.hive.dry_run, alerts_endpoint=alerts,
            node=spec.node if spec else "", cluster=spec)))
    if does("correlate"):
        children.append(Child("correlate", correlate_actor, shutdown=t, process=True, args=dict(
            path=db, correlate=correlate, ingest=ingest, alerts=alerts, cluster=spec,
            # In a cluster it correlates the Sigma rules' correlations too.
            rule_dirs=rule_folders(lay.data, cfg.hive.rules, create=True) if spec else ())))
    if does("detect"):
        children.append(Child("sentinel", sentinel_actor, shutdown=t, start_timeout=120, process=True, args=dict(
            rule_dirs=rule_folders(lay.data, cfg.hive.rules, create=True), detect=detect, correlate=correlate,
            cluster=spec)))
    if router_side and cfg.console.enabled:
        # Last: nothing depends on it, so its restart restarts nothing else.
        children.append(Child("console", console_actor, shutdown=t, args=dict(
            config=cfg, db=db, data=lay.data, shutdown_timeout=t, protected=hive_addresses(cfg.hive.listen))))
    # Outputs last: one that restarts (its receiver's errors never make it)
    # restarts nothing else.  They read the store on their own.
    children += [Child(f"output-{o.name}", output_actor, shutdown=t, args=dict(path=db, output=o))
                 for o in cfg.outputs]
    if cfg.ai.url:
        # Only with [ai] url set: without it nothing about an incident leaves the hive.
        from hive.ai import ai_actor

        children.append(Child("ai", ai_actor, shutdown=t, args=dict(
            path=db, ai=cfg.ai, playbook_dirs=[DEFAULT_PLAYBOOKS, *map(Path, cfg.hive.playbooks)])))
    # Herd: publishes what the hive learned and pulls its peers; it reads
    # and writes the store on its own, so its restart restarts nothing else.
    # It serves through the console, so in a cluster it runs where the console does.
    if router_side and (cfg.herd.serve or cfg.herd.peers):
        from hive.herd import herd_actor
        import socket

        children.append(Child("herd", herd_actor, shutdown=t, args=dict(
            path=db, peers=list(cfg.herd.peers), key=bundle_key, share_days=cfg.herd.share_days,
            max_days=cfg.herd.max_days, hive_name=socket.gethostname(),
            rule_dirs=rule_folders(lay.data, cfg.hive.rules))))
    return children


def cluster_spec(cfg: Config):
    """The cluster this hive node is part of; None for a single node."""
    if not cfg.cluster.nats:
        return None
    from hive.cluster import ClusterSpec

    c = cfg.cluster
    return ClusterSpec(servers=tuple(c.nats), node=cfg.node_name, role=c.role, partitions=c.partitions,
                       correlate_partitions=c.correlate_partitions, lease=c.lease, pack=c.pack)


def hive_addresses(listen: str) -> list[str]:
    """The hive's own addresses, which no playbook may block."""
    from agent import addresses

    host = listen.split("//", 1)[-1].rpartition(":")[0].strip("[]")
    own = set(addresses()) | {"127.0.0.1", "::1"}
    if host not in ("0.0.0.0", "*", "::", ""):
        own.add(host)
    return sorted(own)


def hive_tree(cfg: Config) -> Supervisor:
    # rest_for_one: every inproc endpoint is bound by an earlier child and
    # connected by later ones (the table in hive._actors), so whoever
    # restarts, those that depend on it restart after it and connect again;
    # a restarted store restarts the router, which then holds no state about
    # batches the old store never acknowledged.
    return Supervisor(hive_children(cfg), strategy="rest_for_one", intensity=5, period=30)


EVENTS = "inproc://agent.events"


def sensor_child(cfg: Config, sink: str, on_sensor=None, on_policy=None, policy=None) -> Child:
    """The sensor, reading ``policy`` (default: ``[sensor] policy``, else the default one)."""
    from kmod import Scope, reader_actor

    return Child("sensor", reader_actor, shutdown=cfg.node.shutdown_timeout, start_timeout=120, args=dict(
        sink=sink, policy=policy or cfg.sensor.policy or None, scope=Scope.parse(cfg.sensor.scope),
        watchdog_bound=cfg.sensor.watchdog_ms / 1000, fold=cfg.sensor.fold_ms / 1000,
        on_sensor=on_sensor, on_policy=on_policy))


def standalone_tree(cfg: Config) -> Supervisor:
    """The sensor alone, its verdicts printed: no hive, no spool."""
    from agent._console import verdict_printer

    return Supervisor([
        Child("console", verdict_printer, args=dict(source=EVENTS)),
        sensor_child(cfg, EVENTS),
    ], strategy="rest_for_one")


class NotEnrolled(Exception):
    """The agent has no identity at a hive yet; the message says what to do."""


def agent_identity(cfg: Config) -> tuple[str, bytes]:
    """(agent id, pinned hive public key) from the config or the data folder."""
    import socket

    from actors import check_key

    lay = Layout(cfg.data_dir)
    if not (lay.keys / "agent.key").exists():
        raise NotEnrolled(f"this agent has no key in {lay.keys}: enroll it first with "
                          f"`immune-node enroll join TOKEN --data {cfg.data_dir}`")
    if cfg.agent.hive_key:
        hive_public = check_key(cfg.agent.hive_key.encode(), "agent.hive_key")
    elif lay.hive_pub.exists():
        hive_public = check_key(lay.hive_pub.read_bytes().strip(), str(lay.hive_pub))
    else:
        raise NotEnrolled(f"no hive key pinned in {lay.hive_pub} and agent.hive_key is empty: "
                          "enroll with `immune-node enroll join TOKEN`")
    name = cfg.agent.id or (lay.agent_id.read_text().strip() if lay.agent_id.exists() else socket.gethostname())
    return name, hive_public


def agent_fleet(cfg: Config) -> tuple[Any, Any]:
    """(keeper, policy link) of an agent: the policy bundles it took from
    the hive, and the link its sensor reads its policy through, pointed at
    the running bundle's policy or the local one (None for the keeper if
    the agent pinned no bundle key)."""
    import fleet
    from agent._fleet import PolicyLink
    from kmod import DEFAULT_POLICY

    lay = Layout(cfg.data_dir)
    keeper = None
    if lay.bundle_pub.exists():
        keeper = fleet.Keeper(lay.fleet, lay.bundle_pub.read_bytes())
        keeper.start()
    link = PolicyLink(lay.fleet, cfg.sensor.policy or DEFAULT_POLICY)
    link.start(keeper.running if keeper else None)
    return keeper, link


def agent_edge(name: str, keeper, folder: Path, hive_endpoints: list[str], slot=None):
    """The agent's edge engine, running the kept bundle's rules and playbooks
    from the start (before the hive says anything: it may be unreachable).
    Its playbooks may not block the hive's addresses or loopback; the events
    its rules read are delivered at once by the sensor in ``slot``."""
    import logging

    from agent._edge import Edge, EdgeError
    from agent.response import endpoint_addresses

    edge = Edge(name, protected=sorted({*endpoint_addresses(hive_endpoints), "127.0.0.1", "::1"}),
                wake=slot.wake_at_once if slot is not None else None)
    if keeper is not None and keeper.running is not None:
        try:
            edge.install(keeper.running, folder)
        except EdgeError as e:  # verified and loaded before it was kept: a newer engine refuses it
            logging.getLogger("immune.agent.edge").error("edge.refused version=%d reason=%s",
                                                         keeper.running.version, e)
    return edge


def agent_children(cfg: Config, hive_endpoints: list[str]) -> list[Child]:
    from agent import EVENTS_ENDPOINT, ProcessTable, relay
    from agent._fleet import fleet_actor

    name, hive_public = agent_identity(cfg)
    lay = Layout(cfg.data_dir)
    # One process table, kept current by the relay and read by the response
    # executor (what the agent knew of a process, also of one that exited):
    # a plain object shared in this process.
    table = ProcessTable()
    table.seed()
    keeper, link = agent_fleet(cfg)
    # The executor changes the sensor's policy through the slot, and the
    # edge the kinds it delivers at once; a restarted sensor gets both back
    # when it attaches.
    slot = None
    if cfg.sensor.enabled:
        from agent.response import SensorSlot

        slot = SensorSlot()
    edge = agent_edge(name, keeper, lay.fleet, hive_endpoints, slot)
    children = [
        Child("relay", relay, shutdown=cfg.node.shutdown_timeout, args=dict(
            agent_id=name, hive_endpoints=hive_endpoints, failover_after=cfg.agent.failover_after,
            keys_dir=lay.keys, hive_public=hive_public,
            spool_dir=lay.spool, spool_bytes=cfg.agent.spool_mb << 20, batch=cfg.agent.batch,
            heartbeat=cfg.agent.heartbeat, policy_version=functools.partial(policy_version, link.path, keeper),
            bundle_version=lambda: keeper.version if keeper else 0, table=table, edge=edge,
            learning=agent_learning(cfg, name, table))),
        Child("fleet", fleet_actor, shutdown=cfg.node.shutdown_timeout, args=dict(
            keeper=keeper, link=link, sensor=cfg.sensor.enabled, edge=edge)),
    ]
    if slot is not None:
        from agent.response import endpoint_addresses, executor_actor

        children += [
            sensor_child(cfg, EVENTS_ENDPOINT, on_sensor=slot.attach, on_policy=slot.rebase, policy=link.path),
            Child("executor", executor_actor, shutdown=cfg.node.shutdown_timeout, args=dict(
                data_dir=lay.data / "response", slot=slot, hive=endpoint_addresses(hive_endpoints), table=table)),
        ]
    return children


def agent_learning(cfg: Config, name: str, table=None):
    """The agent's learned profiles (kept in ``profiles`` in the data
    folder), or None with ``[profile] enabled = false``.  ``table``: the
    relay's process table, whose containers find a ``cgroup:ID``
    workload's cgroup path."""
    if not cfg.profile.enabled:
        return None
    import logging

    from agent._profile import Learning, ProfileSettings

    p = cfg.profile
    settings = ProfileSettings(learn=p.learn_hours * 3600, stable=p.stable_hours * 3600,
                               realert=p.realert_hours * 3600, folder_cap=p.folder_cap, peer_cap=p.peer_cap,
                               max_workloads=p.max_workloads, max_items=p.max_items, cgroups=p.cgroups,
                               enforce_action=p.enforce_action)
    log = logging.getLogger("immune.agent.profile")
    return Learning(name, cfg.data_dir / "profiles", settings, log=log.warning,
                    resolve=table.containers.cgroup_path if table is not None else None)


def policy_version(link: Path, keeper=None) -> str:
    """What the hive's registry shows as the agent's policy: where it comes
    from (the hive's bundle vN, the default policy, or the local file's
    name) and the start of the SHA-256 of the policy in force (the sensor's
    last accepted, in this process), so a fleet running different policies
    stands out.  The relay asks at each start: a restarted relay names the
    policy the sensor runs, not the one the node started with."""
    from kmod import DEFAULT_POLICY
    from kmod._reload import PolicyFile

    source = PolicyFile.of(link)
    assert source is not None
    target = Path(os.path.realpath(link))
    if keeper is not None and keeper.running is not None and keeper.running.policy:
        name = f"bundle v{keeper.running.version}"
    else:
        name = "default" if target == Path(os.path.realpath(DEFAULT_POLICY)) else target.name
    digest = source.in_force()
    if not digest:
        return f"{name} (unreadable)"
    return f"{name}:{digest[:12]}"


def agent_tree(cfg: Config) -> Supervisor:
    # rest_for_one: the relay binds the endpoints the sensor (and the response
    # executor) connect to; an inproc connection does not survive its binder.
    return Supervisor(agent_children(cfg, cfg.agent.endpoints), strategy="rest_for_one", intensity=5, period=30)


def local_endpoint(listen: str) -> str:
    """Where a client on this machine reaches a server bound to ``listen``."""
    for wildcard in ("0.0.0.0", "*"):
        listen = listen.replace(f"//{wildcard}:", "//127.0.0.1:")
    return listen.replace("//[::]:", "//[::1]:")


def demo_tree(cfg: Config) -> Supervisor:
    """A hive and an agent in one node; the agent enrolls itself."""
    import socket

    from hive import Store

    lay = Layout(cfg.data_dir)
    hive = hive_tree(cfg)  # creates the hive's key and store
    agent_keys = KeyPair.load_or_create(lay.keys, "agent")
    if not lay.agent_id.exists():
        lay.agent_id.write_text(socket.gethostname() + "\n")
    lay.hive_pub.write_bytes(KeyPair.load(lay.keys, "hive").public + b"\n")
    name, _ = agent_identity(cfg)
    store = Store(cfg.store_location)
    try:
        store.enroll(name, agent_keys.public.decode())
    finally:
        store.close()
    agent = Supervisor(agent_children(cfg, [local_endpoint(cfg.hive.listen)]), strategy="rest_for_one",
                       intensity=5, period=30)
    t = cfg.node.shutdown_timeout * 8
    return Supervisor([Child("hive", hive, shutdown=t), Child("agent", agent, shutdown=t)],
                      strategy="one_for_one")
