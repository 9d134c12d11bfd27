"""Rule and playbook files, read within bounds.

Whoever can write to a rule or playbook folder must not be able to hang or
crash the hive with it: a file is refused, with one line that names the limit,
when it is larger than ``MAX_FILE_BYTES``, nests deeper than ``MAX_DEPTH``,
holds more than ``MAX_DOCUMENTS`` YAML documents, or more than ``MAX_NODES``
values once aliases are expanded (a few lines of anchors and aliases can stand
for billions of values that every later walk over the data would visit).  An
alias to the collection it is in (a structure that contains itself) is refused
too, and libyaml refuses on its own what nests past 1000 levels.  The loaders
that use this refuse the one file and load the rest; the Sigma loader stops
reading files once ``MAX_RULES`` rules are loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml._yaml import CParser
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.resolver import Resolver

MAX_FILE_BYTES = 1 << 20
"""Bytes in one rule or playbook file (SigmaHQ's largest Linux rule has 49 KiB)."""
MAX_DEPTH = 32
"""Mappings and lists inside each other (a Sigma rule or a playbook needs about 6)."""
MAX_DOCUMENTS = 1000
"""YAML documents (``---``) in one file: each is a rule."""
MAX_NODES = 100_000
"""Values (keys, scalars, lists, mappings) in one file, an alias counting as all it stands for."""
MAX_RULES = 10_000
"""Sigma rules (detection and correlation) loaded from all files together."""

KINDS = ("file", "yaml", "limit")


class FileRefused(Exception):
    """A rule or playbook file that cannot be read, is not YAML, or is over a limit."""

    def __init__(self, reason: str, *, kind: str) -> None:
        assert kind in KINDS, kind
        self.reason = reason
        self.kind = kind
        super().__init__(reason)


class _BoundedLoader(Composer, SafeConstructor, Resolver, CParser):
    """PyYAML's safe loader, counting as it composes (composing is recursive, so depth
    is checked long before Python's recursion limit).  libyaml reads the text into
    events (3.5 times faster than PyYAML's own reader: a file as large as it may be
    takes a second or two); PyYAML's Python composer, which libyaml's would bypass,
    builds the nodes."""

    def __init__(self, stream: str) -> None:
        CParser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._nodes = 0
        self._documents = 0
        self._weights: dict[int, int] = {}
        """id(node) -> values it stands for, once composed (for aliases to it)."""

    def compose_document(self) -> Any:
        self._documents += 1
        if self._documents > MAX_DOCUMENTS:
            raise FileRefused(f"more than {MAX_DOCUMENTS} YAML documents (MAX_DOCUMENTS)",
                              kind="limit")
        self._weights.clear()
        return super().compose_document()

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                weight = self._weights.get(id(target))
                if weight is None:
                    raise FileRefused(f"line {event.start_mark.line + 1}: alias *{event.anchor} "
                                      "is inside the collection it names", kind="limit")
                self._count(weight)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            line = self.peek_event().start_mark.line + 1
            raise FileRefused(f"line {line}: nested more than {MAX_DEPTH} levels deep "
                              "(MAX_DEPTH)", kind="limit")
        before = self._nodes
        self._count(1)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._weights[id(node)] = self._nodes - before
        return node

    def _count(self, n: int) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise FileRefused(f"more than {MAX_NODES} values with aliases expanded (MAX_NODES)",
                              kind="limit")


def parse_yaml(text: str) -> list[Any]:
    """Every document of a YAML text, empty ones left out; raises FileRefused."""
    if len(text) > MAX_FILE_BYTES:
        raise FileRefused(_too_large(len(text)), kind="limit")
    loader = _BoundedLoader(text)
    try:
        documents = []
        while loader.check_data():
            document = loader.get_data()
            if document is not None:
                documents.append(document)
        return documents
    except yaml.YAMLError as e:
        raise FileRefused(_yaml_reason(e), kind="yaml") from None
    except ValueError as e:  # e.g. an integer of more digits than int() takes
        raise FileRefused(f"unusable value: {e}", kind="yaml") from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> list[Any]:
    """Every document of a YAML file, empty ones left out; raises FileRefused."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # not all of a file that is growing
        if len(data) > MAX_FILE_BYTES:
            raise FileRefused(_too_large(path.stat().st_size), kind="limit")
        text = data.decode("utf-8")
    except OSError as e:
        raise FileRefused(f"cannot read: {e.strerror or e}", kind="file") from None
    except UnicodeDecodeError as e:
        raise FileRefused(f"cannot read: not UTF-8 (byte {e.start})", kind="file") from None
    return parse_yaml(text)


def _too_large(size: int) -> str:
    return f"{size} bytes, more than the {MAX_FILE_BYTES} a file may have (MAX_FILE_BYTES)"


def _yaml_reason(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return problem
