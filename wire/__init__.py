"""The wire contract between agents and the hive (see ``_messages``)."""

from ._messages import (
    EVENT_KINDS,
    WIRE_VERSION,
    Ack,
    AgentMessage,
    Alert,
    AnyEvent,
    Bind,
    Command,
    Enroll,
    Enrolled,
    CommandResult,
    Connect,
    Event,
    EventBatch,
    Exec,
    Exit,
    Fork,
    Heartbeat,
    Hello,
    HiveMessage,
    Notice,
    Open,
    SetId,
)

__all__ = [
    "EVENT_KINDS", "WIRE_VERSION", "Ack", "AgentMessage", "Alert", "AnyEvent", "Bind",
    "Command", "CommandResult", "Enroll", "Enrolled", "Connect", "Event", "EventBatch", "Exec", "Exit", "Fork",
    "Heartbeat", "Hello", "HiveMessage", "Notice", "Open", "SetId",
]
