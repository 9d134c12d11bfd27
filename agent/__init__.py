"""The host agent: enrich what the kernel sensor sees, spool it to disk,
deliver it to the hive exactly once, and carry commands back."""

from ._delivery import Delivery
from ._errors import AgentError, SpoolError
from ._failover import Failover
from ._host import addresses
from ._proctable import TOO_LARGE, Process, ProcessTable, ProcessTableStatistics, parse_cgroup
from ._relay import COMMANDS_ENDPOINT, EVENTS_ENDPOINT, FLEET_ENDPOINT, RESULTS_ENDPOINT, relay
from ._spool import DEFAULT_MAX_BYTES, Spool, SpoolStatistics

__all__ = [
    "AgentError", "COMMANDS_ENDPOINT", "DEFAULT_MAX_BYTES", "Delivery", "EVENTS_ENDPOINT", "Failover", "FLEET_ENDPOINT", "RESULTS_ENDPOINT",
    "addresses", "relay", "Process", "ProcessTable", "ProcessTableStatistics", "Spool",
    "SpoolError", "SpoolStatistics", "TOO_LARGE", "parse_cgroup",
]
