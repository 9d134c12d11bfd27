"""Templates in playbook parameters: ``{{ event.pid }}``, ``{{ alert.agent }}``,
``{{ event.cmdline | regex('(\\d+\\.\\d+\\.\\d+\\.\\d+)') | default('') }}``.

Deliberately small and never evaluated as code: an expression is a dotted
path into the data the engine hands over (dict keys and list indexes, no
attributes, no calls), then filters from a fixed list whose arguments are
literals (read with ``ast.literal_eval``).  A value that is a single
expression keeps its type (``"{{ event.pid }}"`` renders to an int); text
around expressions makes a string.

Filters: ``default(v)`` (if missing, null or empty), ``regex(pattern[, group])``
(first match, in RE2: see ``hive/_regex.py``; group 1 if the pattern has one,
else the whole match; missing when nothing matches), ``int``, ``str``,
``lower``.

Bounds, so that no playbook can make the hive spin or swell: an expression
has at most ``MAX_EXPRESSION`` characters, ``MAX_FILTERS`` filters and
``MAX_NESTING`` parentheses inside each other; a template renders to at most
``MAX_RENDERED`` characters.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping
from typing import Any

from hive._regex import Regex, RegexError

from ._errors import TemplateError

MAX_EXPRESSION = 1024
"""Characters between ``{{`` and ``}}``."""
MAX_FILTERS = 16
"""Filters in one expression."""
MAX_NESTING = 8
"""Parentheses inside each other in one expression."""
MAX_RENDERED = 64 << 10
"""Characters a template may render to (a command's parameter, a notification)."""

_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|\d+))*\Z")
_FILTER = re.compile(r"([a-z_]+)\s*(?:\((.*)\))?\Z", re.DOTALL)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def _default(value: Any, fallback: Any) -> Any:
    return fallback if value is MISSING or value is None or value == "" else value


def _regex(value: Any, pattern: Regex, group: int) -> Any:
    found = pattern.first(str(value), group)
    return MISSING if found is None else found


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(1e400)
        raise TemplateError(f"{value!r} is not an integer") from None


_FILTERS: dict[str, tuple[Callable[..., Any], int, int]] = {
    # name: (function, least arguments, most arguments)
    "default": (_default, 1, 1),
    "regex": (_regex, 1, 2),
    "int": (_int, 0, 0),
    "str": (str, 0, 0),
    "lower": (lambda v: str(v).lower(), 0, 0),
}
_TAKES_MISSING = frozenset({"default", "regex"})


def _split_pipes(text: str) -> list[str]:
    """Split on ``|`` outside quotes and parentheses (a regex has both)."""
    parts, depth, quote, start = [], 0, "", 0
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
            if depth > MAX_NESTING:
                raise TemplateError(f"{text.strip()!r}: parentheses nest more than "
                                    f"{MAX_NESTING} deep (MAX_NESTING)")
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quote or depth:
        raise TemplateError(f"unbalanced quotes or parentheses in {text.strip()!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts]


class _Expr:
    __slots__ = ("filters", "path", "root", "text")

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        if len(text) > MAX_EXPRESSION:
            raise TemplateError(f"{{{{ {self.text[:40]}... }}}}: {len(text)} characters, more than "
                                f"{MAX_EXPRESSION} (MAX_EXPRESSION)")
        head, *rest = _split_pipes(text)
        if len(rest) > MAX_FILTERS:
            raise TemplateError(f"{{{{ {self.text} }}}}: {len(rest)} filters, more than {MAX_FILTERS} "
                                "(MAX_FILTERS)")
        if not _PATH.match(head):
            raise TemplateError(f"{{{{ {self.text} }}}}: {head!r} is not a dotted path such as event.pid")
        self.path = head.split(".")
        self.root = self.path[0]
        self.filters: list[tuple[str, Callable[..., Any], tuple]] = []
        for part in rest:
            m = _FILTER.match(part)
            if m is None or m.group(1) not in _FILTERS:
                raise TemplateError(f"{{{{ {self.text} }}}}: unknown filter {part!r} "
                                    f"(known: {', '.join(_FILTERS)})")
            name, args_text = m.group(1), m.group(2)
            fn, least, most = _FILTERS[name]
            args: tuple = ()
            if args_text is not None and args_text.strip():
                try:
                    args = ast.literal_eval(f"({args_text},)")
                except (ValueError, SyntaxError, TypeError):  # TypeError: {[]: 1}
                    raise TemplateError(f"{{{{ {self.text} }}}}: the arguments of {name} must be "
                                        f"literals (quoted strings, numbers), not {args_text!r}") from None
            if not least <= len(args) <= most:
                raise TemplateError(f"{{{{ {self.text} }}}}: {name} takes {least}"
                                    + (f" to {most}" if most != least else "") + f" argument(s), got {len(args)}")
            if name == "regex":
                args = self._regex_args(*args)
            self.filters.append((name, fn, args))

    def _regex_args(self, pattern: Any, group: Any = None) -> tuple[Regex, int]:
        try:
            regex = Regex(str(pattern))
        except RegexError as e:
            raise TemplateError(f"{{{{ {self.text} }}}}: bad regex {pattern!r}: {e.reason}") from None
        if group is None:
            group = 1 if regex.groups else 0
        number = regex.names.get(group) if isinstance(group, str) else group
        if type(number) is not int or not 0 <= number <= regex.groups:
            raise TemplateError(f"{{{{ {self.text} }}}}: the regex has no group {group!r} (it has "
                                f"0 to {regex.groups}{''.join(f', {n!r}' for n in regex.names)})")
        return regex, number

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        value = resolve(scope, self.path)
        for name, fn, args in self.filters:
            if value is MISSING and name not in _TAKES_MISSING:
                break
            try:
                value = fn(value, *args)
            except TemplateError as e:
                raise TemplateError(f"{{{{ {self.text} }}}}: {e}") from None
        if value is MISSING:
            raise TemplateError(f"{{{{ {self.text} }}}}: {_why_missing(scope, self.path, self.filters)}")
        return value


def _why_missing(scope: Mapping[str, Any], path: list[str], filters: list) -> str:
    name = ".".join(path)
    if resolve(scope, path) is not MISSING:
        return "the regex did not match"
    if path[0] == "vars":
        return f"{name} is not configured on the hive"
    event = scope.get("event")
    kind = event.get("kind") if isinstance(event, dict) else None
    where = f" (the alert's event is a {kind} event)" if kind and path[0] == "event" else ""
    return f"{name} is not in the alert{where}"


def resolve(scope: Mapping[str, Any], path: list[str]) -> Any:
    """The value at ``path`` (keys of dicts, indexes of lists), or MISSING."""
    value: Any = scope
    for part in path:
        if isinstance(value, Mapping):
            value = value.get(part, MISSING)
        elif isinstance(value, list) and part.isdigit():
            i = int(part)
            value = value[i] if i < len(value) else MISSING
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


class Template:
    """A compiled template string."""

    __slots__ = ("_parts", "_whole", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._parts: list[str | _Expr] = []
        at = 0
        while (start := text.find("{{", at)) >= 0:  # str.find: linear, whatever the text
            end = text.find("}}", start + 2)
            if end < 0:
                raise TemplateError(f"{_short(text)!r}: '{{{{' without a closing '}}}}'")
            if start > at:
                self._parts.append(text[at:start])
            self._parts.append(_Expr(text[start + 2:end]))
            at = end + 2
        if at < len(text):
            self._parts.append(text[at:])
        self._whole = len(self._parts) == 1 and isinstance(self._parts[0], _Expr)

    @property
    def roots(self) -> set[str]:
        return {p.root for p in self._parts if isinstance(p, _Expr)}

    def render(self, scope: Mapping[str, Any]) -> Any:
        if self._whole:
            value = self._parts[0].evaluate(scope)  # type: ignore[union-attr]
            if isinstance(value, str):
                self._check_size(len(value))
            return value
        out, size = [], 0
        for part in self._parts:
            text = part if isinstance(part, str) else str(part.evaluate(scope))
            size += len(text)
            self._check_size(size)  # before joining: a hundred copies of a long value add up
            out.append(text)
        return "".join(out)

    def _check_size(self, size: int) -> None:
        if size > MAX_RENDERED:
            raise TemplateError(f"{_short(self.text)!r}: renders to more than {MAX_RENDERED} "
                                "characters (MAX_RENDERED)")


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def compile_value(value: Any) -> Any:
    """Strings containing ``{{`` become Templates, in lists and dicts too."""
    if isinstance(value, str):
        return Template(value) if "{{" in value else value
    if isinstance(value, list):
        return [compile_value(v) for v in value]
    if isinstance(value, dict):
        return {k: compile_value(v) for k, v in value.items()}
    return value


def render_value(value: Any, scope: Mapping[str, Any]) -> Any:
    if isinstance(value, Template):
        return value.render(scope)
    if isinstance(value, list):
        return [render_value(v, scope) for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, scope) for k, v in value.items()}
    return value


def value_roots(value: Any) -> set[str]:
    """Every root a compiled value's templates name (to check them at load)."""
    if isinstance(value, Template):
        return value.roots
    if isinstance(value, list):
        return set().union(*(value_roots(v) for v in value))
    if isinstance(value, dict):
        return set().union(*(value_roots(v) for v in value.values()))
    return set()
