"""The actor runtime: supervised trio actors over ZeroMQ.

It knows nothing about security; agents and the hive are built from it.
"""

from ._actor import ActorFn, Child, Context, Runtime, TaskStatus
from ._codec import Codec
from ._curve import ZAP_ENDPOINT, KeyFileError, KeyPair, check_key, curve_client, curve_server, zap_handler
from ._door import Door, watch_door
from ._errors import ActorError, DecodeError, Escalation, SocketClosed, StartError
from ._log import LogThrottle, get_logger, log_event, log_setup, setup_logging
from ._node import Node, NodeBusy, Status, endpoints, query_status, request_restart
from ._policy import Decision, Restart, RestartPolicy, Strategy
from ._stats import Snapshot, Statistics
from ._supervisor import Supervisor
from ._tap import Taps, decode_tap
from ._zmq import Duplex, Socket

__all__ = [
    "ActorError", "ActorFn", "KeyFileError", "KeyPair", "ZAP_ENDPOINT", "check_key",
    "curve_client", "curve_server", "zap_handler", "Child", "Codec", "Context", "DecodeError", "Decision", "Door",
    "Duplex", "Escalation", "LogThrottle", "Node", "NodeBusy", "Restart", "RestartPolicy", "Runtime", "Snapshot",
    "Socket", "SocketClosed", "StartError", "Statistics", "Status", "Strategy", "Supervisor",
    "TaskStatus", "Taps", "decode_tap", "endpoints", "get_logger", "log_event",
    "query_status", "request_restart", "log_setup", "setup_logging", "watch_door",
]
