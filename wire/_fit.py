"""Fitting a message into the contract's bounds, so the hive takes it.

The hive refuses a whole frame holding a value outside the bounds of
``_messages``; a batch the agent spooled with such a value would be sent
again and refused for ever, and its stream would stall behind it.  So what
an agent sends that it built from what it read on its host (/proc, passwd,
cgroup names, its own texts) goes through :func:`fit` first:

* text that cannot be UTF-8 (surrogates: the stand-ins ``os.fsdecode`` gives
  bytes that are not UTF-8) gets U+FFFD for each such byte, as the kernel
  sensor's decoder shows them, so that a path read from /proc and the same
  path reported by the kernel stay the same text;
* text longer than its bound keeps its first characters, the last one kept
  becoming U+2026 (``…``) so that the cut shows;
* a list of texts longer than its bound keeps its first items, and a cut
  list or item sets the message's ``<field>_truncated`` flag if it has one
  (``Exec.argv_truncated``).

The bounds are read from the message types (msgspec's type information),
so this can never disagree with the hive's decoder.  Left alone: integers
(every one an agent sends is a kernel field of a width within its bound, or
a count of its own), ``bytes``, and mappings (``CommandResult.data``, which
the response executor checks against the contract itself).

Cheap when nothing is out of bounds, the usual case: a message's texts are
joined and the length of the join compared with the least bound, in C (for
a burst of events, all at once); only a longer join is looked at per bound,
only a join that is not ASCII is checked for surrogates (by converting its
texts to UTF-8, which the spool's encoding then reuses), and a message is
rewritten field by field only when a bound is exceeded or a text holds a
surrogate.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter
from typing import Callable, TypeVar

import msgspec
from msgspec import inspect

T = TypeVar("T", bound=msgspec.Struct)

CUT = "\u2026"
"""Ends a text that was cut to its bound."""

_UNBOUNDED = 2**63
_to_msgpack = msgspec.msgpack.Encoder().encode
"""Raises UnicodeEncodeError on a surrogate, else leaves each text's UTF-8
in the text (CPython keeps it): the spool's encoding of the same texts then
costs a copy, and a text shared by many events is converted once."""


def _utf8_ok(texts: str | tuple[str, ...] | list[str]) -> bool:
    try:
        _to_msgpack(texts)
    except UnicodeEncodeError:
        return False
    return True


def fit_text(text: str, bound: int | None = None) -> str:
    """``text`` as UTF-8 can carry it (each byte ``os.fsdecode`` could not
    decode as U+FFFD), and at most ``bound`` characters long."""
    text = _utf8(text)
    return text if bound is None else _cut(text, bound)


def _utf8(text: str) -> str:
    if text.isascii() or _utf8_ok(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes the system gave
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def _cut(text: str, bound: int) -> str:
    return text[:bound - 1] + CUT if len(text) > bound else text


def fit(msg: T, only: frozenset[str] | None = None) -> T:
    """``msg``, changed in place where it is outside its type's bounds.
    ``only``: the fields to look at, when the caller knows that the others
    are within bounds (the contract's own decoder has read them since)."""
    fit_all((msg,), only)
    return msg


def fit_all(msgs: Iterable[msgspec.Struct], only: frozenset[str] | None = None) -> None:
    """:func:`fit` each of ``msgs``."""
    if not isinstance(msgs, list):
        msgs = list(msgs)
    if len(msgs) > 1:
        msgs = _suspects(msgs, only)
    checks = _CHECKS.get(only) or _CHECKS.setdefault(only, {})
    for msg in msgs:
        fits = checks.get(type(msg)) or _plan(type(msg), only).fits
        if not fits(msg):
            _PLANS[only][type(msg)].rewrite(msg)


def _suspects(msgs: list[msgspec.Struct], only: frozenset[str] | None) -> list[msgspec.Struct]:
    """Those of ``msgs`` that may be out of bounds, told for all at once with
    no Python step per message where their types allow it (a relay's burst:
    the same texts with the same bounds, and no lists of texts), which costs
    about half as much as one by one; else all of them."""
    plans = _PLANS.get(only) or _PLANS.setdefault(only, {})
    first: _Plan | None = None
    for kind in set(map(type, msgs)):
        plan = plans.get(kind) or _plan(kind, only)
        if plan.lists or (first is not None and plan.texts != first.texts):
            return msgs
        first = plan
    assert first is not None
    least = first.least
    joined = list(map("".join, map(first.every, msgs)))
    if max(map(len, joined)) <= least and all(map(str.isascii, joined)):
        return []
    return [m for m, text in zip(msgs, joined) if len(text) > least or not text.isascii()]


class _Plan:
    """How to check and fit the fields of one Struct type."""

    def __init__(self, texts: list[tuple[str, int]], lists: list[tuple[str, int, int, str | None]]) -> None:
        self.texts = texts
        """(field, longest) of each text field."""
        self.lists = lists
        """(field, most items, longest item, flag field or None) of each list of texts."""
        by_bound: dict[int, list[str]] = {}
        for name, bound in texts:
            by_bound.setdefault(bound, []).append(name)
        self.every = _getter([name for name, _ in texts])
        self.least = min(by_bound, default=0)
        self.fits = _checker(self.every, self.least, by_bound,
                             [(name, most, longest) for name, most, longest, _ in lists])

    def rewrite(self, msg: msgspec.Struct) -> None:
        for name, bound in self.texts:
            text = getattr(msg, name)
            fitted = fit_text(text, bound)
            if fitted is not text:
                setattr(msg, name, fitted)
        for name, most, longest, flag in self.lists:
            items = getattr(msg, name)
            kept = [_utf8(item) for item in items[:most]]
            cut = len(items) > most or any(len(item) > longest for item in kept)
            setattr(msg, name, [_cut(item, longest) for item in kept])
            if cut and flag:
                setattr(msg, flag, True)


def _checker(every: Callable[[object], tuple], least: int, by_bound: dict[int, list[str]],
             lists: list[tuple[str, int, int]]) -> Callable[[object], bool]:
    """A test of a message: True if each text is within its bound; False if
    one may not be.  Built on: a sum of lengths within a bound puts each
    within it, and a join is ASCII (a flag CPython keeps) only if each part
    is.  ``every``: all the texts; ``least``: the least bound."""
    per_bound = [(_getter(names), bound) for bound, names in by_bound.items()]
    join = "".join

    def texts_fit(msg: object) -> bool:
        texts = every(msg)
        joined = join(texts)
        if not joined.isascii() and not _utf8_ok(texts):
            return False
        if len(joined) > least:
            for get, bound in per_bound:
                if len(join(get(msg))) > bound:
                    return False
        return True

    if not lists:
        return texts_fit

    def fits(msg: object) -> bool:
        if not texts_fit(msg):
            return False
        for name, most, longest in lists:
            items = getattr(msg, name)
            if len(items) > most:
                return False
            joined = join(items)
            if len(joined) > longest or (not joined.isascii() and not _utf8_ok(items)):
                return False
        return True

    return fits


def _getter(names: list[str]) -> Callable[[object], tuple]:
    """The fields ``names`` of a message, always as a tuple."""
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        get = attrgetter(names[0])
        return lambda msg: (get(msg),)
    return lambda msg: ()


_PLANS: dict[frozenset[str] | None, dict[type, _Plan]] = {}
_CHECKS: dict[frozenset[str] | None, dict[type, Callable[[object], bool]]] = {}
"""By ``only``, then by type: the plans, and their tests on their own (the fast path)."""


def _plan(cls: type, only: frozenset[str] | None) -> _Plan:
    info = inspect.type_info(cls)
    if not isinstance(info, inspect.StructType):
        raise TypeError(f"fit takes a wire Struct, not {cls.__name__}")
    names = {f.name for f in info.fields}
    if only is not None and not only <= names:
        raise TypeError(f"{cls.__name__} has no field {', '.join(sorted(only - names))}")
    texts: list[tuple[str, int]] = []
    lists: list[tuple[str, int, int, str | None]] = []
    for f in info.fields:
        t = _bare(f.type)
        if only is not None and f.name not in only:
            continue
        if isinstance(t, inspect.StrType):
            texts.append((f.name, _bound(t, cls, f.name)))
        elif isinstance(t, inspect.ListType) and isinstance(_bare(t.item_type), inspect.StrType):
            if t.min_length:
                raise TypeError(f"fit cannot meet {cls.__name__}.{f.name}'s least length")
            flag = f"{f.name}_truncated"
            lists.append((f.name, _UNBOUNDED if t.max_length is None else t.max_length,
                          _bound(_bare(t.item_type), cls, f.name), flag if flag in names else None))
    plan = _PLANS.setdefault(only, {})[cls] = _Plan(texts, lists)
    _CHECKS.setdefault(only, {})[cls] = plan.fits
    return plan


def _bare(t: inspect.Type) -> inspect.Type:
    """The type under its description, if it has one."""
    return t.type if isinstance(t, inspect.Metadata) else t


def _bound(t: inspect.StrType, cls: type, name: str) -> int:
    """A text field's longest length.  What fit cannot meet (a pattern, a
    least length) is refused when the plan is made, never met by chance."""
    if t.pattern is not None or t.min_length:
        raise TypeError(f"fit cannot meet {cls.__name__}.{name}'s pattern or least length")
    return _UNBOUNDED if t.max_length is None else t.max_length
