"""The playbook engine's own errors.  YAML and msgspec errors are mapped to
these where a playbook is read, so ``check_playbooks`` and the playbook actor
handle one family and report one precise reason per file."""

from __future__ import annotations

from pathlib import Path


class PlaybookError(Exception):
    """A playbook (file) that cannot be used, and why."""

    def __init__(self, reason: str, *, path: Path | str | None = None) -> None:
        self.reason = reason
        self.path = Path(path) if path is not None else None
        super().__init__(reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path is not None else self.reason


class TemplateError(Exception):
    """A template that cannot be compiled, or a value it names that the alert
    does not have."""


class RecordsError(Exception):
    """The commands and audit tables could not be read or written, or an
    operator's request names an action that cannot take it."""
