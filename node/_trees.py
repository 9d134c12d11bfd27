"""The supervision trees of the hive, the agent and the demo node, and where
each keeps its files under the data folder."""

from __future__ import annotations

from pathlib import Path

from actors import Child, KeyPair, Supervisor, zap_handler

from ._config import Config


class Layout:
    """Files under ``--data``.  The demo node uses both halves in one folder."""

    def __init__(self, data: Path) -> None:
        self.data = Path(data)
        self.keys = self.data / "keys"
        self.hive_db = self.data / "hive.db"
        self.spool = self.data / "spool"
        self.agent_id = self.keys / "agent.id"
        self.hive_pub = self.keys / "hive.pub"


def hive_children(cfg: Config) -> list[Child]:
    from hive import (
        Store, correlate_actor, enroll_actor, registry_actor, router_actor, sentinel_actor, store_actor,
        zap_authorizer,
    )
    from hive.sigma import BUILTIN_RULES

    lay = Layout(cfg.data_dir)
    keys = KeyPair.load_or_create(lay.keys, "hive")
    Store(lay.hive_db).close()  # create the schema, and fail here if the folder is unusable
    t = cfg.node.shutdown_timeout
    db = lay.hive_db
    return [
        Child("store", store_actor, shutdown=t, args=dict(
            path=db, retention_days=cfg.hive.retention_days, retention_mb=cfg.hive.retention_mb)),
        Child("registry", registry_actor, shutdown=t, args=dict(
            path=db, heartbeat_timeout=cfg.hive.heartbeat_timeout)),
        Child("zap", zap_handler, shutdown=t, args=dict(authorize=zap_authorizer(db))),
        Child("router", router_actor, shutdown=t, args=dict(
            path=db, keys=keys, listen=cfg.hive.listen, max_frame=cfg.hive.max_frame)),
        Child("enroll", enroll_actor, shutdown=t, args=dict(path=db, keys=keys, listen=cfg.hive.enroll_listen)),
        Child("correlate", correlate_actor, shutdown=t, args=dict(path=db)),
        Child("sentinel", sentinel_actor, shutdown=t, start_timeout=120, args=dict(
            rule_dirs=[BUILTIN_RULES, *map(Path, cfg.hive.rules)])),
    ]


def hive_tree(cfg: Config) -> Supervisor:
    # rest_for_one: a restarted store restarts the router, which then holds
    # no state about batches the old store never acknowledged.
    return Supervisor(hive_children(cfg), strategy="rest_for_one", intensity=5, period=30)


EVENTS = "inproc://agent.events"


def sensor_child(cfg: Config, sink: str) -> Child:
    from kmod import Scope, reader_actor

    return Child("sensor", reader_actor, shutdown=cfg.node.shutdown_timeout, start_timeout=120, args=dict(
        sink=sink, policy=cfg.sensor.policy or None, scope=Scope.parse(cfg.sensor.scope),
        watchdog_bound=cfg.sensor.watchdog_ms / 1000))


def standalone_tree(cfg: Config) -> Supervisor:
    """The sensor alone, its verdicts printed: no hive, no spool."""
    from agent._console import verdict_printer

    return Supervisor([
        Child("console", verdict_printer, args=dict(source=EVENTS)),
        sensor_child(cfg, EVENTS),
    ], strategy="rest_for_one")


def agent_tree(cfg: Config) -> Supervisor:
    return Supervisor([], strategy="rest_for_one")


def demo_tree(cfg: Config) -> Supervisor:
    return Supervisor([Child("hive", hive_tree(cfg), shutdown=cfg.node.shutdown_timeout * 6)],
                      strategy="one_for_one")
