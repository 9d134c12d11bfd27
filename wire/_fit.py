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
joined and the length of the join compared with the least bound, in C; only
a longer join is looked at per bound, and a message is rewritten field by
field only when a bound is exceeded or a join holds a surrogate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from operator import itemgetter
from typing import Callable, TypeVar

import msgspec
from msgspec import inspect

T = TypeVar("T", bound=msgspec.Struct)

CUT = "\u2026"
"""Ends a text that was cut to its bound."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_UNBOUNDED = 2**63


def fit_text(text: str, bound: int) -> str:
    """``text`` as UTF-8 can carry it and at most ``bound`` characters long."""
    return _cut(_utf8(text), bound)


def _utf8(text: str) -> str:
    if text.isascii() or _SURROGATE.search(text) is None:
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
    plans = _PLANS.get(only) or _PLANS.setdefault(only, {})
    astuple = msgspec.structs.astuple
    for msg in msgs:
        plan = plans.get(type(msg)) or _plan(type(msg), only)
        if not plan.fits(astuple(msg)):
            plan.rewrite(msg)


class _Plan:
    """How to check and fit the fields of one Struct type."""

    def __init__(self, texts: list[tuple[str, int]], lists: list[tuple[str, int, int, str | None]],
                 positions: dict[str, int]) -> None:
        self.texts = texts
        """(field, longest) of each text field."""
        self.lists = lists
        """(field, most items, longest item, flag field or None) of each list of texts."""
        by_bound: dict[int, list[int]] = {}
        for name, bound in texts:
            by_bound.setdefault(bound, []).append(positions[name])
        self.fits = _checker(by_bound, [(positions[name], most, longest) for name, most, longest, _ in lists])

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


def _checker(by_bound: dict[int, list[int]], lists: list[tuple[int, int, int]]) -> Callable[[tuple], bool]:
    """A test of a message's values (``msgspec.structs.astuple``): True if
    each is within its bound; False if one may not be.  Built on: a sum of
    lengths within a bound puts each within it, and a join is ASCII (a flag
    CPython keeps) or holds a surrogate only if one of its parts does."""
    every = _getter([at for ats in by_bound.values() for at in ats])
    least = min(by_bound, default=0)
    per_bound = [(_getter(ats), bound) for bound, ats in by_bound.items()]
    surrogate = _SURROGATE.search
    join = "".join

    def fits(values: tuple) -> bool:
        joined = join(every(values))
        if not joined.isascii() and surrogate(joined):
            return False
        if len(joined) > least:
            for get, bound in per_bound:
                if len(join(get(values))) > bound:
                    return False
        for at, most, longest in lists:
            items = values[at]
            if len(items) > most:
                return False
            joined = join(items)
            if len(joined) > longest or (not joined.isascii() and surrogate(joined)):
                return False
        return True

    return fits


def _getter(at: list[int]) -> Callable[[tuple], tuple]:
    """The values at ``at`` of a tuple, always as a tuple."""
    if not at:
        return lambda values: ()
    return itemgetter(*at) if len(at) > 1 else itemgetter(slice(at[0], at[0] + 1))


_PLANS: dict[frozenset[str] | None, dict[type, _Plan]] = {}


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
    plan = _PLANS[only][cls] = _Plan(texts, lists, {f.name: i for i, f in enumerate(info.fields)})
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
