"""The supervision trees of the hive, the agent and the demo node."""

from __future__ import annotations

from actors import Supervisor

from ._config import Config


def hive_tree(cfg: Config) -> Supervisor:
    return Supervisor([], strategy="rest_for_one")


def agent_tree(cfg: Config) -> Supervisor:
    return Supervisor([], strategy="rest_for_one")


def demo_tree(cfg: Config) -> Supervisor:
    return Supervisor([], strategy="one_for_one")
