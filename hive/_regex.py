"""Regular expressions from rules, playbook conditions and templates, in RE2.

These patterns come from files an operator (or whoever can write to the rule
folder) supplies, and they run against text an attacker chooses (command
lines, paths).  Python's ``re`` backtracks: ``(a+)+$`` against a long run of
``a`` followed by ``b`` never finishes, and it holds the GIL while it runs.
RE2 runs in time linear in the text, whatever the pattern, so every such
pattern is compiled here and nowhere else.

RE2 refuses what needs backtracking (lookahead, lookbehind, backreferences,
atomic groups, possessive quantifiers) and a few Python spellings (``\\Z`` is
``\\z``, ``\\uXXXX`` is ``\\x{XXXX}``); such a pattern is an error at load,
with the reason, never a silent fall back to ``re``.  Other differences from
``re``: ``\\d``, ``\\w`` and ``\\s`` are ASCII only (``\\s`` without ``\\v``), and
``$`` without the m flag matches only at the very end (``re`` also matches
before a final newline).
"""

from __future__ import annotations

from typing import Any

import re2

# The wrapper's search() builds a generator and a Match object per call (3 us on a
# 50-character string against 0.7 us for ``re``); calling its compiled RE2 object
# directly costs 1.4 us.  Rules call search() on every candidate event.
_RE2 = re2._re2.RE2
_UNANCHORED = re2._Anchor.UNANCHORED
_NO_MATCH = (-1, -1)

_HINTS = (
    ("(?=", "lookahead is not supported"),
    ("(?!", "lookahead is not supported"),
    ("(?<=", "lookbehind is not supported"),
    ("(?<!", "lookbehind is not supported"),
    ("(?P", "named backreferences are not supported"),
    ("(?>", "atomic groups are not supported"),
    ("\\Z", "write \\z for the end of the text"),
    ("\\u", "write \\x{XXXX} for a code point"),
    ("++", "possessive quantifiers are not supported"),
    ("*+", "possessive quantifiers are not supported"),
    ("?+", "possessive quantifiers are not supported"),
)


def escape(text: str) -> str:
    """``text`` as a pattern that matches exactly it."""
    return re2.escape(text)


class RegexError(ValueError):
    """A pattern RE2 cannot compile; the message says why in one line."""

    def __init__(self, pattern: str, reason: str) -> None:
        self.pattern = pattern
        self.reason = reason
        super().__init__(f"regular expression {pattern!r}: {reason}")


def _encode(text: str) -> bytes:
    # surrogatepass: a str decoded with surrogateescape (a non-UTF-8 path) still matches.
    return text.encode("utf-8", "surrogatepass")


class Regex:
    """A compiled pattern: ``search`` answers whether it occurs in a text, ``first``
    gives the text of a group of its first occurrence."""

    __slots__ = ("_options", "_re", "_source", "groups", "names", "pattern")

    def __init__(self, pattern: str, *, ignore_case: bool = False, multiline: bool = False,
                 dotall: bool = False) -> None:
        self.pattern = pattern
        flags = "i" * ignore_case + "m" * multiline + "s" * dotall
        options = re2.Options()
        options.log_errors = False  # RE2 would print every refused pattern on stderr
        source = f"(?{flags}){pattern}" if flags else pattern
        try:
            compiled = _RE2(_encode(source), options)
        except UnicodeEncodeError as e:
            raise RegexError(pattern, e.reason) from None
        if not compiled.ok():
            raise RegexError(pattern, _reason(compiled.error()))
        self._re, self._source, self._options = compiled, source, options
        self.groups = compiled.NumberOfCapturingGroups()
        self.names = {name.decode("utf-8", "surrogatepass"): number
                      for name, number in compiled.NamedCapturingGroups()}
        """Group numbers by name, for ``(?P<name>...)``."""

    def search(self, text: str) -> bool:
        data = _encode(text)
        return self._re.Match(_UNANCHORED, data, 0, len(data))[0] != _NO_MATCH

    def first(self, text: str, group: int = 0) -> str | None:
        """The text ``group`` matched in the first occurrence, None if there is none
        (or the group took no part in it).  Raises RegexError for a group the
        pattern does not have."""
        if not 0 <= group <= self.groups:
            raise RegexError(self.pattern, f"it has no group {group}")
        data = _encode(text)
        spans = self._re.Match(_UNANCHORED, data, 0, len(data))
        start, end = spans[group] if spans[0] != _NO_MATCH else _NO_MATCH
        if start < 0:
            return None
        return data[start:end].decode("utf-8", "surrogatepass")

    def with_re_api(self) -> Any:
        """The same pattern behind ``re``'s interface (``search``, ``fullmatch``, groups as
        Match objects), for code written against ``re`` such as pySigma."""
        return re2.compile(self._source, self._options)

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


def _reason(error: bytes | str) -> str:
    text = error.decode("utf-8", "replace") if isinstance(error, bytes) else error
    hint = next((h for token, h in _HINTS if token in text), "")
    if not hint and "invalid escape sequence: \\" in text and text[-1:].isdigit():
        hint = "backreferences are not supported"
    if hint:
        text += f" ({hint}; rules and playbooks use RE2, which runs in linear time)"
    return text
