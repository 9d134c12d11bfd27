"""The agent's own errors.  OS errors are mapped to these at the boundary
(the spool's file operations), so the relay handles one family."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises."""


class SpoolError(AgentError):
    """The spool could not read or write its folder.

    ``errno`` is the OS error number when there was one (``errno.ENOSPC``
    when the disk is full), else 0.  Nothing the spool had accepted is lost
    by the failure: buffered batches are written again by the next
    :meth:`Spool.sync`."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno
