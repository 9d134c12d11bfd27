"""Which rules an event could match, without testing every rule.

Rules are grouped by logsource category.  Within a category, a rule with keys
(see ``_compile._best_key``: a whole token, or a token's first or last three
characters) is filed under each of them; a rule without keys (a regex, a
negation, a CIDR, a substring inside a word, ...) is tested on every event of
its category.

For an event, the index joins the values of the fields that some key names,
lower-cases and tokenizes them in one pass, and collects the rules filed under
its tokens, token prefixes and suffixes.  Keys are not told apart by field: a
rule may be tested because its token occurred in another field than the one it
needs, never the reverse, and one pass over one string is cheaper than one per
field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

from ._compile import AFFIX, Rule, SigmaEvent

_prefix = itemgetter(slice(None, AFFIX))
_suffix = itemgetter(slice(-AFFIX, None))
_KINDS = ("=", "^", "$")

# _compile.TOKEN's tokens, three times faster: after lower(), every character that is not
# [0-9a-z_] separates tokens, and so does every non-ASCII one ("?" once encoded).
_TOKEN_BYTES = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyz_")
_SEPARATE = bytes(c if c in _TOKEN_BYTES else 0x20 for c in range(256))


def tokens(text: str) -> list[bytes]:
    """The tokens of a value, as the index sees them (lower-cased ASCII bytes)."""
    return text.lower().encode("ascii", "replace").translate(_SEPARATE).split()


@dataclass(frozen=True, slots=True)
class _Table:
    keys: frozenset[bytes]
    rules: dict[bytes, tuple[int, ...]]
    """key text -> numbers of the rules filed under it."""


@dataclass(frozen=True, slots=True)
class _Category:
    always: tuple[int, ...]
    always_rules: list[Rule]
    fields: tuple[str, ...]
    whole: _Table | None
    prefix: _Table | None
    suffix: _Table | None


@dataclass(frozen=True, slots=True)
class IndexSummary:
    """How many rules of a category are keyed, and how many are tested on every event."""

    category: str
    keyed: int
    unkeyed: int
    fields: tuple[str, ...]


class RuleIndex:
    """Detection rules filed by category and by the keys they need."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        always: dict[str, list[int]] = {}
        fields: dict[str, set[str]] = {}
        tables: dict[str, dict[str, dict[str, list[int]]]] = {}
        for number, rule in enumerate(self.rules):
            always.setdefault(rule.category, [])
            fields.setdefault(rule.category, set())
            per_kind = tables.setdefault(rule.category, {kind: {} for kind in _KINDS})
            if rule.keys is None:
                always[rule.category].append(number)
                continue
            for name, kind, text in rule.keys:
                fields[rule.category].add(name)
                numbers = per_kind[kind].setdefault(text.encode("ascii"), [])
                if number not in numbers:
                    numbers.append(number)

        def table(filed: dict[str, list[int]]) -> _Table | None:
            if not filed:
                return None
            return _Table(frozenset(filed), {k: tuple(n) for k, n in filed.items()})

        self._categories = {
            category: _Category(
                always=tuple(always[category]),
                always_rules=[self.rules[n] for n in always[category]],
                fields=tuple(sorted(fields[category])),
                whole=table(tables[category]["="]),
                prefix=table(tables[category]["^"]),
                suffix=table(tables[category]["$"]),
            )
            for category in always
        }

    def __len__(self) -> int:
        return len(self.rules)

    def candidates(self, event: SigmaEvent) -> list[Rule]:
        """The rules of the event's category that the event could match, in load order.

        The list may be shared between calls: do not change it.
        """
        entry = self._categories.get(event.category)
        if entry is None:
            return []
        values = event.fields
        parts = []
        for name in entry.fields:
            value = values.get(name)
            if value is not None:
                parts.append(value if type(value) is str else str(value))
        if not parts:
            return entry.always_rules
        found = None
        words = tokens("\n".join(parts))
        for table, keys in ((entry.whole, words), (entry.prefix, map(_prefix, words)),
                            (entry.suffix, map(_suffix, words))):
            if table is None:
                continue
            for key in table.keys.intersection(keys):
                if found is None:
                    found = set(entry.always)
                found.update(table.rules[key])
        if found is None:
            return entry.always_rules
        rules = self.rules
        return [rules[n] for n in sorted(found)]

    def summary(self) -> list[IndexSummary]:
        out = []
        for category, entry in sorted(self._categories.items()):
            keyed = {n for t in (entry.whole, entry.prefix, entry.suffix) if t is not None
                     for ns in t.rules.values() for n in ns}
            out.append(IndexSummary(category, keyed=len(keyed), unkeyed=len(entry.always),
                                    fields=entry.fields))
        return out
