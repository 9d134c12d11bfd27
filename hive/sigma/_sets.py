"""The rule folders a hive runs: the built-in pack, SigmaHQ's Linux rules, the operator's.

SigmaHQ's set is read through a symbolic link in the node's data folder,
``DATA/rules/sigmahq``: it points at the copy shipped in the package until
``immune-node rules update`` installs a newer set beside it
(``DATA/rules/sigmahq-<time>``) and turns the link to it in one rename.  The
sentinel reads a linked folder through the link's target of the moment (see
``rule_files``), so a running hive sees the old set or the new one whole, and
reloads within seconds because the files' paths changed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hive.correlate import CorrelationRule

from ._compile import Rule
from ._loader import LoadReport
from ._suppress import suppression_key

BUILTIN_RULES = Path(__file__).resolve().parent.parent / "rules" / "builtin"
"""The built-in rule pack (``hive/rules/builtin``)."""
SIGMAHQ_RULES = BUILTIN_RULES.parent / "sigmahq"
"""SigmaHQ's Linux rules as shipped (``hive/rules/sigmahq``, DRL 1.1: see its NOTICE.md)."""
INSTALLED = "sigmahq-"
"""Prefix of the sets ``rules update`` installed under ``DATA/rules``."""


def sigmahq_link(data: Path) -> Path:
    return Path(data) / "rules" / "sigmahq"


def sigmahq_folder(data: Path, *, create: bool = False) -> Path:
    """The folder SigmaHQ's rules are read from for the node whose data folder is ``data``.

    The link ``DATA/rules/sigmahq`` if it leads to a set ``rules update`` installed
    (or if it is a folder of the operator's own); otherwise, with ``create``, the link
    made (or turned) to the shipped copy, which follows the package wherever it is
    installed; without ``create`` (or if the link cannot be made), the shipped copy itself.
    """
    link = sigmahq_link(data)
    if link.is_symlink():
        target = Path(os.readlink(link))
        if target.name.startswith(INSTALLED) and target.parent == Path() and link.is_dir():
            return link
    elif link.is_dir():
        return link
    if not create:
        return SIGMAHQ_RULES
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        point(link, SIGMAHQ_RULES)
    except OSError:
        return SIGMAHQ_RULES
    return link


def point(link: Path, target: Path | str) -> None:
    """Make ``link`` a symbolic link to ``target`` in one step (a new link renamed over it)."""
    fresh = link.with_name(f".{link.name}.{secrets.token_hex(4)}")
    os.symlink(target, fresh)
    try:
        os.replace(fresh, link)
    except OSError:
        fresh.unlink(missing_ok=True)
        raise


def rule_folders(data: Path, extra: Sequence[Path | str] = (), *, create: bool = False) -> list[Path]:
    """The hive's rule folders in the order it loads them: the built-in pack, SigmaHQ's
    set, then ``hive.rules`` (``extra``)."""
    return [BUILTIN_RULES, sigmahq_folder(data, create=create), *map(Path, extra)]


@dataclass(frozen=True, slots=True)
class ListedRule:
    """One loaded rule, as ``immune-node rules list`` shows it."""

    id: str
    title: str
    level: str
    source: str
    """The folder it came from: ``builtin/...``, ``sigmahq/...``, or the operator's folder."""
    suppressed_by: tuple[str, ...]


def listing(report: LoadReport, folders: Sequence[Path]) -> list[ListedRule]:
    """Every rule ``report`` loaded from ``folders``, with the folder it came from."""
    named = [(_label(folder), folder.resolve()) for folder in map(Path, folders)]

    def source(path: Path | None) -> str:
        if path is None:
            return "-"
        real = path.resolve()
        for label, root in named:
            if real.is_relative_to(root):
                inner = real.relative_to(root).parts[:-1]
                return "/".join((label, *inner[:1]))
        return str(path.parent)

    rules: list[Rule | CorrelationRule] = [*report.rules, *report.correlations]
    return [ListedRule(r.id, r.title, r.level, source(r.path), suppression_key(r)) for r in rules]


def _label(folder: Path) -> str:
    if folder == BUILTIN_RULES:
        return "builtin"
    if folder == SIGMAHQ_RULES or (folder.name == "sigmahq" and folder.parent.name == "rules"):
        return "sigmahq"
    return str(folder)
