"""AI triage: an incident's summary (secrets redacted) sent to an
OpenAI-compatible chat-completions endpoint, its answer checked against a
schema and stored with the incident as a verdict.

Plain parts: ``redact`` (``_redact``), ``summarize``/``summary_text``
(``_summary``), ``parse_answer`` and ``Verdict`` (``_verdict``), ``Budget``;
``ChatClient`` makes the HTTP call (timeouts, retries, budget); ``ai_actor``
is the thin shell the hive runs when ``[ai] url`` is set.
"""

import importlib
from typing import Any

# Imported when first asked for: the playbook engine and the configuration
# use the plain parts without trio, httpx and the store.
_EXPORTS = {
    "MARK": "._redact", "redact": "._redact", "redact_all": "._redact",
    "SCHEMA": "._verdict", "SEVERITIES": "._verdict", "TriageError": "._verdict", "Verdict": "._verdict",
    "parse_answer": "._verdict", "request_body": "._verdict",
    "Budget": "._budget",
    "summarize": "._summary", "summary_text": "._summary", "event_view": "._summary",
    "ChatClient": "._client", "Outcome": "._client", "endpoint": "._client",
    "Summaries": "._actor", "ai_actor": "._actor", "store_outcome": "._actor",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hive.ai' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
