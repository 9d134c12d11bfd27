"""Playbooks: the hive's answers to detections (the MDR part).

Playbooks are YAML files (format in ``_playbook.py``; the defaults in
``hive/playbooks``).  ``PlaybookEngine`` is a plain object that turns alerts,
results, approvals and time into commands for agents and an audit trail;
``playbook_actor`` is its thin shell; ``Records`` keeps the trail in the
hive's store.  ``check_playbooks(DIR)`` is ``immune-node playbooks check DIR``.
"""

import importlib
from pathlib import Path
from typing import Any

from ._actions import (
    ACTIONS,
    MANUAL,
    ActionSpec,
    Notify,
    check_guardrails,
    check_manual,
    check_params,
    command,
    plain_params,
)
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
    VerdictTrigger,
    check_playbooks,
    load_playbook,
    parse_playbook,
)
from ._template import Template

# The actor and the store's records come when first asked for: the engine,
# which the agent runs at the edge, comes without them.
_LAZY = {"playbook_actor": "._actor", "Records": "._records"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'hive.playbook' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


DEFAULT_PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
"""The playbooks that ship (``hive/playbooks``)."""

__all__ = [
    "ACTIONS",
    "DEFAULT_PLAYBOOKS",
    "LEVELS",
    "MANUAL",
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
    "VerdictTrigger",
    "check_guardrails",
    "check_manual",
    "check_params",
    "check_playbooks",
    "command",
    "load_playbook",
    "parse_playbook",
    "plain",
    "plain_params",
    "playbook_actor",
]
