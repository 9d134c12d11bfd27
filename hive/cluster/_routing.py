"""Commands between routers: a playbook's command reaches the agent through
whichever router holds its connection, and the agent's answer comes back
to the node that sent it."""

from __future__ import annotations

import msgspec

import wire


class Routed(msgspec.Struct, kw_only=True, tag="routed", tag_field="type"):
    """A command on its way to the router holding ``agent``."""

    origin: str
    """The node whose playbook sent it: where the result goes."""
    agent: str
    command: wire.AnyCommand


class Answered(msgspec.Struct, kw_only=True, tag="answered", tag_field="type"):
    """An agent's answer on its way back to the node that sent the command."""

    agent: str
    result: wire.CommandResult


Routing = Routed | Answered
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Routing)


def encode(msg: Routing) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes) -> Routing | None:
    """None for what is not one of ours (counted by the caller)."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        return None


class Origins:
    """Which node sent each command a router carried for another, so the
    agent's answer goes back there; bounded (oldest forgotten first)."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._by_id: dict[str, str] = {}

    def sent(self, command: str, origin: str) -> None:
        self._by_id[command] = origin
        while len(self._by_id) > self.limit:
            self._by_id.pop(next(iter(self._by_id)))

    def answered(self, command: str) -> str | None:
        """The origin of a command, forgotten once answered (a result is final)."""
        return self._by_id.pop(command, None)
