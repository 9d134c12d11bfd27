"""The response executor's own errors.  OS and policy errors are mapped to
these where an action touches the system, and every one becomes a failed
``CommandResult`` whose detail is the message: it must say what happened
and why, to the analyst reading the audit trail."""

from __future__ import annotations


class ResponseError(Exception):
    """An action could not be carried out."""


class Gone(ResponseError):
    """The process an action was for has already exited: an expected race
    with a kill or a short-lived process, not a fault of the agent."""


class Refused(ResponseError):
    """A guardrail refused the action: it would harm the host or the agent
    (pid 1, the agent and its ancestors, the hive's address, the agent's
    own executables)."""
