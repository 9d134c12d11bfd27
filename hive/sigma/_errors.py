"""The rule engine's own error.  YAML and pySigma errors are mapped to it where
a rule is read, so callers (the sentinel actor, ``immune-node rules check``)
handle one type and get one precise reason per rule."""

from __future__ import annotations

from pathlib import Path

KINDS = ("file", "yaml", "limit", "sigma", "metadata", "logsource", "field", "value",
         "condition", "duplicate", "reference", "correlation")
"""What went wrong, coarsely: the file could not be read, was not YAML, is over a
loader limit (``hive/_datafile.py``; or there are too many rules), pySigma refused
the rule, a required attribute is missing, the logsource or a field is one our
sensors do not produce, a value or modifier is unsupported, the condition is
unusable, the id is taken, a correlation names an unknown rule, or uses a
correlation feature we do not implement."""


class RuleError(Exception):
    """A rule (or a whole rule file) that cannot be used, and why."""

    def __init__(self, reason: str, *, kind: str, path: Path | str | None = None,
                 rule_id: str = "", title: str = "") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown RuleError kind {kind!r}")
        self.reason = reason
        self.kind = kind
        self.path = Path(path) if path is not None else None
        self.rule_id = rule_id
        self.title = title
        super().__init__(reason)

    def located(self, *, path: Path, rule_id: str = "", title: str = "") -> RuleError:
        """The same error, with where it happened filled in."""
        return RuleError(self.reason, kind=self.kind, path=path,
                         rule_id=self.rule_id or rule_id, title=self.title or title)

    def __str__(self) -> str:
        where = str(self.path) if self.path is not None else "<rule>"
        if self.rule_id:
            where += f" [{self.rule_id}]"
        if self.title:
            where += f" {self.title!r}"
        return f"{where}: {self.kind}: {self.reason}"


def sigma_reason(error: Exception) -> str:
    """pySigma's message without the file location it appends (we print our own)."""
    return str(error.args[0]) if error.args else str(error)
