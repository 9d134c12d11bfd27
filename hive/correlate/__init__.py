"""Correlation: Sigma correlation rules over detection hits, and correlation
across hosts (lateral movement, one binary spreading, incidents).

Plain objects with an injected clock, bounded under a flood.  The correlate
actor drives ``HostCorrelator``::

    hosts = HostCorrelator(clock=trio.current_time)
    hosts.set_addresses(hello.agent, hello.addresses)   # on each Hello
    new_alerts = hosts.observe(event)                   # every event, agent set
    alert.incident = hosts.observe_alert(alert)         # every alert from the sentinel
    hosts.expire()                                      # about once a second
    for incident in hosts.changed(): store(incident)    # after each batch

``SigmaCorrelator`` runs inside ``hive.sigma.RuleEngine``: the sentinel's
on a single node; in a cluster, the engine of the partition's owner, fed
hits the sentinels route with ``route()`` (see ``hive.cluster._correlate``).
"""

from ._hosts import (
    LATERAL_MOVEMENT_RULE,
    SPREAD_RULE,
    HostCorrelator,
    HostStatistics,
    Incident,
    TimelineEntry,
)
from ._sigma import (
    MAX_COUNT,
    MAX_DEPTH,
    OPERATORS,
    TYPES,
    CorrelationHit,
    CorrelationRule,
    CorrelatorStatistics,
    SigmaCorrelator,
)

__all__ = [
    "LATERAL_MOVEMENT_RULE", "MAX_COUNT", "MAX_DEPTH", "OPERATORS", "SPREAD_RULE", "TYPES", "CorrelationHit",
    "CorrelationRule", "CorrelatorStatistics", "HostCorrelator", "HostStatistics", "Incident",
    "SigmaCorrelator", "TimelineEntry",
]
