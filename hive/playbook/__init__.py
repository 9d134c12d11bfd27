"""Playbooks: the hive's answers to detections (the MDR part).

Playbooks are YAML files (format in ``_playbook.py``; the defaults in
``hive/playbooks``).  ``PlaybookEngine`` is a plain object that turns alerts,
results, approvals and time into commands for agents and an audit trail;
``playbook_actor`` is its thin shell; ``Records`` keeps the trail in the
hive's store.  ``check_playbooks(DIR)`` is ``immune-node playbooks check DIR``.
"""

from pathlib import Path

from ._actions import ACTIONS, ActionSpec, Notify, check_guardrails, check_params, command, plain_params
from ._actor import playbook_actor
from ._engine import (
    Action,
    AuditRecord,
    Decisions,
    EngineStatistics,
    PlaybookEngine,
    plain,
)
from ._errors import PlaybookError, RecordsError, TemplateError
from ._notify import Notifier
from ._playbook import (
    LEVELS,
    MODES,
    CheckReport,
    Condition,
    Limits,
    Playbook,
    Step,
    Trigger,
    check_playbooks,
    load_playbook,
    parse_playbook,
)
from ._records import Records
from ._template import Template

DEFAULT_PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
"""The playbooks that ship (``hive/playbooks``)."""

__all__ = [
    "ACTIONS",
    "DEFAULT_PLAYBOOKS",
    "LEVELS",
    "MODES",
    "Action",
    "ActionSpec",
    "AuditRecord",
    "CheckReport",
    "Condition",
    "Decisions",
    "EngineStatistics",
    "Limits",
    "Notifier",
    "Notify",
    "Playbook",
    "PlaybookEngine",
    "PlaybookError",
    "Records",
    "RecordsError",
    "Step",
    "Template",
    "TemplateError",
    "Trigger",
    "check_guardrails",
    "check_params",
    "check_playbooks",
    "command",
    "load_playbook",
    "parse_playbook",
    "plain",
    "plain_params",
    "playbook_actor",
]
