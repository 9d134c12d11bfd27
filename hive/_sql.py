"""What every store backend shares: its errors and its transactions.

The hive's modules write SQLite's dialect against ``Store.db``: ``?``
placeholders, ``INSERT OR IGNORE``, ``BEGIN IMMEDIATE``, ``json_extract(col,
'$.key')`` and ``LIKE`` (ASCII case-insensitive).  On SQLite that is the
sqlite3 connection itself (nothing in between, so nothing slower); another
backend's connection (hive._postgres) takes the same statements and says
them in its own dialect.  Tables that SQLite numbers by ``rowid`` have a
column of that name elsewhere.  Errors of any backend leave as ``sqlite3.Error``
or :class:`SqlError`: catch :data:`DB_ERRORS`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import msgspec


class SqlError(Exception):
    """A database error of a backend other than SQLite."""

    def __init__(self, message: str, *, data: bool = False) -> None:
        super().__init__(message)
        self.data = data
        """The data's fault (a value out of range, a constraint): trying again will not help."""


DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, SqlError)

# SQLite's primary result codes that mean "this data", not "this disk".
_DATA_CODES = frozenset({18, 19, 20, 25})  # TOOBIG, CONSTRAINT, MISMATCH, RANGE
# Python-side errors binding a value (an int beyond 64 bits, a type SQLite
# has no column type for) or encoding a row.
_DATA_EXCEPTIONS = (OverflowError, ValueError, TypeError, msgspec.EncodeError)


def is_data_error(e: BaseException | None) -> bool:
    if isinstance(e, SqlError):
        return e.data
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", None)
        # No code: the sqlite3 module refused a value before SQLite saw it.
        return code is None or (code & 0xFF) in _DATA_CODES
    return isinstance(e, _DATA_EXCEPTIONS)


class Transaction:
    """``with Transaction(db, error):`` BEGIN IMMEDIATE, then COMMIT, or ROLLBACK
    on any exception; the database's errors leave as ``error(reason)``.  Given
    ``data_error``, errors that are the data's (see ``StoreDataError``),
    including a value Python cannot bind, leave as ``data_error(reason)``."""

    def __init__(self, db, error: Callable[[str], Exception],
                 data_error: Callable[[str], Exception] | None = None) -> None:
        self.db = db
        self.error = error
        self.data_error = data_error

    def __enter__(self):
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except DB_ERRORS as e:
            raise self.error(str(e)) from None
        return self.db

    def __exit__(self, kind, exc, tb) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
                return
            except DB_ERRORS as e:
                self._rollback()
                raise self.error(f"commit failed: {e}") from None
        self._rollback()
        if self.data_error is not None and is_data_error(exc):
            what = str(exc) if isinstance(exc, DB_ERRORS) else f"{type(exc).__name__}: {exc}"
            raise self.data_error(what) from None
        if isinstance(exc, DB_ERRORS):
            raise self.error(str(exc)) from None

    def _rollback(self) -> None:
        # After some failures (a full disk, a lost server) the transaction is gone already.
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except DB_ERRORS:
                pass
