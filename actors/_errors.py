"""The runtime's own errors.  Foreign errors (zmq, msgspec, OS) are mapped to
these at the boundary so that callers handle one family."""


class ActorError(Exception):
    """Base of every error the runtime raises."""


class DecodeError(ActorError):
    """A frame could not be decoded into the socket's message type."""


class StartError(ActorError):
    """A child failed before it said it was ready."""


class Escalation(ActorError):
    """A supervisor gave up (restart intensity exceeded) and stopped its children."""


class SocketClosed(ActorError):
    """The socket was closed while an operation was waiting on it."""
