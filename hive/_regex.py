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

import re
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


class _Unsure(Exception):
    pass


_REPEAT = re.compile(r"\{(\d+)(?:,\d*)?\}")


def shortest(pattern: str) -> int:
    """The fewest characters a match of ``pattern`` can span; 0 where the pattern uses
    syntax this reading does not know.  A text shorter than that cannot match, and a call
    into RE2 costs a microsecond where ``len`` costs nothing (``[^/]{100,}$`` is tested on
    every file written)."""
    try:
        width, at = _alternation(pattern, 0)
    except (_Unsure, IndexError, ValueError):
        return 0
    return width if at == len(pattern) else 0


def _alternation(p: str, i: int) -> tuple[int, int]:
    width, i = _sequence(p, i)
    while i < len(p) and p[i] == "|":
        other, i = _sequence(p, i + 1)
        width = min(width, other)
    return width, i


def _sequence(p: str, i: int) -> tuple[int, int]:
    total = 0
    while i < len(p) and p[i] not in "|)":
        width, i = _atom(p, i)
        times, i = _repeat(p, i)
        total += width * times
    return total, i


def _atom(p: str, i: int) -> tuple[int, int]:
    c = p[i]
    if c in "^$":
        return 0, i + 1
    if c == ".":
        return 1, i + 1
    if c == "[":
        return 1, _class_end(p, i + 1)
    if c == "(":
        i += 1
        if p.startswith("?", i):
            i += 1
            if p.startswith(("P<", "<"), i):
                i = p.index(">", i) + 1
            else:
                while p[i].isalpha() or p[i] == "-":
                    i += 1
                if p[i] == ")":
                    return 0, i + 1  # (?i): flags from here on
                if p[i] != ":":
                    raise _Unsure
                i += 1
        width, i = _alternation(p, i)
        if p[i] != ")":
            raise _Unsure
        return width, i + 1
    if c == "\\":
        e = p[i + 1]
        if e in "bBAz":
            return 0, i + 2
        if e in "xpP":
            return 1, (p.index("}", i) + 1 if p[i + 2] == "{" else i + (4 if e == "x" else 3))
        if e in "dDwWsSntrfv" or (e.isascii() and not e.isalnum() and e != "_"):
            return 1, i + 2
        raise _Unsure
    if c in "*+?{":
        raise _Unsure
    return 1, i + 1


def _class_end(p: str, i: int) -> int:
    """Where the character class whose ``[`` is before ``i`` ends."""
    if p[i] == "^":
        i += 1
    if p[i] == "]":
        i += 1
    while p[i] != "]":
        if p[i] == "\\":
            i += 2
        elif p.startswith("[:", i):
            i = p.index(":]", i + 2) + 2
        else:
            i += 1
    return i + 1


def _repeat(p: str, i: int) -> tuple[int, int]:
    """How many times at least the atom before ``i`` occurs, and where its quantifier ends."""
    if i >= len(p) or p[i] not in "*+?{":
        return 1, i
    if p[i] == "{":
        m = _REPEAT.match(p, i)
        if m is None:
            raise _Unsure
        times, i = int(m.group(1)), m.end()
    else:
        times, i = (1 if p[i] == "+" else 0), i + 1
    if i < len(p) and p[i] == "?":
        i += 1  # lazy
    if i < len(p) and p[i] in "*+?{":
        raise _Unsure
    return times, i


def _encode(text: str) -> bytes:
    # surrogatepass: a str decoded with surrogateescape (a non-UTF-8 path) still matches.
    return text.encode("utf-8", "surrogatepass")


class Regex:
    """A compiled pattern: ``search`` answers whether it occurs in a text, ``first``
    gives the text of a group of its first occurrence."""

    __slots__ = ("_options", "_re", "_shortest", "_source", "_test", "groups", "names",
                 "pattern")

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
        # A yes/no answer needs no groups, and without them RE2 keeps to its DFA: 4 ms
        # instead of 240 on 16 KB for (.{1,5}){150}x.
        bare = re2.Options()
        bare.log_errors, bare.never_capture = False, True
        self._test = _RE2(_encode(source), bare)
        self.groups = compiled.NumberOfCapturingGroups()
        self.names = {name.decode("utf-8", "surrogatepass"): number
                      for name, number in compiled.NamedCapturingGroups()}
        """Group numbers by name, for ``(?P<name>...)``."""
        self._shortest = shortest(pattern)

    def search(self, text: str) -> bool:
        if len(text) < self._shortest:
            return False
        data = _encode(text)
        return self._test.Match(_UNANCHORED, data, 0, len(data))[0] != _NO_MATCH

    def first(self, text: str, group: int = 0) -> str | None:
        """The text ``group`` matched in the first occurrence, None if there is none
        (or the group took no part in it).  Raises RegexError for a group the
        pattern does not have."""
        if not 0 <= group <= self.groups:
            raise RegexError(self.pattern, f"it has no group {group}")
        if len(text) < self._shortest:
            return None
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
