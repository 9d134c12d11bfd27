"""The response executor: what the hive's playbooks ask an agent to do.

Plain functions and one plain object (``Executor``) that act on the real
system and answer each ``wire.Command`` with a ``wire.CommandResult``; the
executor actor is their thin shell (see ``_executor.py`` for the actions and
their parameters).  The sensor is reached through a ``SensorSlot``: the
agent's tree makes one, passes ``slot.attach`` to the kmod reader actor as
``on_sensor`` and ``slot`` to the executor actor."""

from ._actor import executor_actor
from ._errors import Refused, ResponseError
from ._evidence import collect_evidence, unpack, verify_bundle
from ._executor import ACTIONS, SENSOR_ACTIONS, Executor, rule_name
from ._files import quarantine_file, sha256_file
from ._policy import (
    ISOLATION,
    Block,
    Isolation,
    ResponsePolicy,
    SensorSlot,
    endpoint_addresses,
)
from ._process import kill_process

__all__ = [
    "ACTIONS",
    "ISOLATION",
    "SENSOR_ACTIONS",
    "Block",
    "Executor",
    "Isolation",
    "Refused",
    "ResponseError",
    "ResponsePolicy",
    "SensorSlot",
    "collect_evidence",
    "endpoint_addresses",
    "executor_actor",
    "kill_process",
    "quarantine_file",
    "rule_name",
    "sha256_file",
    "unpack",
    "verify_bundle",
]
