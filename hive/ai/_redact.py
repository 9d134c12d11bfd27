"""Secrets out of text before it leaves the hive for a model.

``redact(text)`` replaces what looks like a credential with ``[REDACTED]``
and keeps the rest, so the model still sees what ran (``curl -H
'Authorization: Bearer [REDACTED]' https://...``).  It errs on the side of
hiding: a value after ``--password`` is hidden even if it was a file name.
``redact_all`` does the same to every string in plain data (a summary),
before it is encoded, so JSON escaping cannot split a secret from its
pattern.
"""

from __future__ import annotations

import re
from typing import Any

MARK = "[REDACTED]"

# Words that make a key's value a secret: env-style NAME=VALUE, a flag
# --name=VALUE or --name VALUE, a JSON or YAML "name": value.
_SECRET_WORD = (r"(?:passw(?:or)?d|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|"
                r"private[_-]?key|client[_-]?secret|credentials?)")

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # A PEM private key, whole (or to the end of the text when cut).
    (re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY"
                r"(?: BLOCK)?-----|\Z)", re.S), MARK),
    # HTTP authorization: Bearer, Basic, Token and the like.
    (re.compile(r"(?i)\b(bearer|basic|token|digest)(\s+)[A-Za-z0-9._~+/=:-]{6,}"), rf"\1\2{MARK}"),
    # AWS access key ids.
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}\b"), MARK),
    # Well-known token shapes: GitHub, Slack, OpenAI-style, Google API keys, JWTs.
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|"
                r"sk-[A-Za-z0-9_-]{20,}|AIza[0-9A-Za-z_-]{35})"), MARK),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"), MARK),
    # user:password@ in a URL.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"), rf"\1{MARK}@"),
    # --password=VALUE, --token VALUE, -password VALUE.
    (re.compile(rf"(?i)(--?[a-z0-9_-]*{_SECRET_WORD}[a-z0-9_-]*)(=|\s+)(?!-)(\"[^\"]*\"|'[^']*'|\S+)"),
     rf"\1\2{MARK}"),
    # NAME=VALUE (environment, config lines) and "name": "value" (JSON, YAML).
    (re.compile(rf"(?i)\b([a-z0-9_.-]*{_SECRET_WORD}[a-z0-9_.-]*)(\"?'?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&|]+)"),
     rf"\1\2{MARK}"),
    # Passwords glued to a short flag: mysql -pSECRET, sshpass -p SECRET.
    (re.compile(r"\b((?:mysql|mysqladmin|mysqldump|mariadb)\b[^\n]*?\s-p)(?!\s)(\S+)"), rf"\1{MARK}"),
    (re.compile(r"\b(sshpass\s+(?:-\w+\s+)*-p)(\s*)(\S+)"), rf"\1\2{MARK}"),
]


def redact(text: str) -> str:
    """``text`` with every secret it seems to hold replaced by ``[REDACTED]``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_all(value: Any) -> Any:
    """Plain data (dicts, lists, strings, numbers) with every string redacted,
    dictionary keys too."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): redact_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_all(v) for v in value]
    return value
