"""The one portable parameter style: ``:name`` placeholders, translated per driver.

Pure functions, no I/O. :func:`compile_sql` scans a statement once (the result is
cached) and rewrites each ``:name`` placeholder into the driver's style:

* ``sqlite``: ``?``, bound from a list in order of appearance;
* ``postgresql`` (psycopg) and ``mariadb`` (PyMySQL): ``%(name)s``, with every other
  ``%`` doubled, because both drivers run the whole text through ``%`` formatting.

The scanner skips what is not SQL code: string literals (``'it''s :x'``, PostgreSQL
``E'\\n'`` and ``$tag$…$tag$`` strings, MariaDB backslash escapes), quoted identifiers
(``"x"``, MariaDB/SQLite backticks, SQLite ``[x]``), ``--``/``#``/``/* */`` comments,
and ``::type`` casts. A statement without placeholders is passed through unchanged.
:func:`bind` then builds the driver's parameters and names a missing value.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

from multistore.errors import InvalidQueryError, InvalidValueError

__all__ = ["Compiled", "Dialect", "bind", "compile_sql", "split_statements"]

Dialect = Literal["sqlite", "postgresql", "mariadb"]

_IDENT_START: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT_CHARS: Final = _IDENT_START | frozenset("0123456789")
_WORD_CHARS: Final = _IDENT_CHARS | frozenset("$")
#: Types of list items that :func:`bind` lets through without the slower checks.
_FLAT_ITEMS: Final = frozenset({str, int, float, bool, bytes, type(None)})


@dataclass(frozen=True)
class Compiled:
    """A statement rewritten for one driver."""

    sql: str
    """The text to send to the driver."""
    names: tuple[str, ...]
    """Placeholder names in order of appearance (repeats included)."""
    dialect: Dialect
    source: str
    """The statement as the caller wrote it."""

    @property
    def has_params(self) -> bool:
        return bool(self.names)


def compile_sql(sql: str, dialect: Dialect) -> Compiled:
    """Rewrite the ``:name`` placeholders of ``sql`` for ``dialect``'s driver. A
    statement that is not a string, or holds nothing but blanks and comments (which
    MariaDB refuses and the others ignore), is an :class:`InvalidQueryError`."""
    if not isinstance(sql, str):
        raise InvalidQueryError(f"a statement must be a string, not {type(sql).__name__}")
    compiled = _compile(sql, dialect)
    if not compiled.names and _is_blank(sql, dialect):
        raise InvalidQueryError("empty statement: the SQL holds no statement to run")
    return compiled


@functools.lru_cache(maxsize=512)
def _compile(sql: str, dialect: Dialect) -> Compiled:
    pyformat = dialect != "sqlite"
    out: list[str] = []
    names: list[str] = []
    n = len(sql)
    i = 0
    start = 0  # start of the code run not yet copied to ``out``

    def flush(upto: int) -> None:
        chunk = sql[start:upto]
        out.append(chunk.replace("%", "%%") if pyformat else chunk)

    while i < n:
        skipped = _skip_non_code(sql, i, dialect)
        if skipped != i:
            i = skipped
            continue
        c = sql[i]
        if c == ":":
            if sql.startswith("::", i):
                i += 2
            elif (
                i + 1 < n
                and sql[i + 1] in _IDENT_START
                and not (i > 0 and sql[i - 1] in _IDENT_CHARS)
            ):
                j = i + 2
                while j < n and sql[j] in _IDENT_CHARS:
                    j += 1
                name = sql[i + 1 : j]
                flush(i)
                out.append("?" if dialect == "sqlite" else f"%({name})s")
                names.append(name)
                i = start = j
            else:
                i += 1
        elif c == "?" and dialect == "sqlite":
            raise InvalidQueryError(
                f"positional '?' placeholder at offset {i} of {_excerpt(sql)}; "
                "multistore uses named placeholders: write :name and pass a dict"
            )
        else:
            i += 1
    if not names:
        return Compiled(sql, (), dialect, sql)
    flush(n)
    return Compiled("".join(out), tuple(names), dialect, sql)


def split_statements(sql: str, dialect: Dialect) -> list[str]:
    """Split a script at the ``;`` that end statements (not those inside literals or
    comments); blank pieces are dropped. ``BEGIN … END`` bodies are not understood."""
    statements: list[str] = []
    n = len(sql)
    i = start = 0
    while i < n:
        skipped = _skip_non_code(sql, i, dialect)
        if skipped != i:
            i = skipped
        elif sql[i] == ";":
            statements.append(sql[start:i])
            i = start = i + 1
        else:
            i += 1
    statements.append(sql[start:])
    return [s.strip() for s in statements if not _is_blank(s, dialect)]


def bind(compiled: Compiled, params: Mapping[str, Any] | None) -> Any:
    """The driver's parameters for one execution of ``compiled``: ``None`` when the
    statement has no placeholders, a list (sqlite) or a dict (psycopg, PyMySQL)."""
    if params is not None and not isinstance(params, Mapping):
        raise InvalidQueryError(
            f"params must be a mapping of placeholder names to values, not {type(params).__name__}"
        )
    if not compiled.names:
        return None
    given: Mapping[str, Any] = params or {}
    missing = [name for name in dict.fromkeys(compiled.names) if name not in given]
    if missing:
        listed = ", ".join(f":{name}" for name in missing)
        raise InvalidQueryError(
            f"no value given for placeholder {listed} in {_excerpt(compiled.source)}"
        )
    for name in dict.fromkeys(compiled.names):  # a name used twice is checked once
        value = given[name]
        if isinstance(value, Mapping | set | frozenset) or (
            isinstance(value, list | tuple)
            and any(
                type(item) not in _FLAT_ITEMS
                and isinstance(item, list | tuple | Mapping | set | frozenset)
                for item in value
            )
        ):
            raise InvalidValueError(
                f"placeholder :{name} is a {type(value).__name__} that no backend stores; "
                "pass a scalar (or, for PostgreSQL arrays, a flat list)"
            )
        if isinstance(value, float | Decimal) and not _finite(value):
            raise InvalidValueError(
                f"placeholder :{name} is {value!r}: NaN and infinities cannot be stored the "
                "same way on every backend (SQLite turns NaN into NULL, MariaDB refuses "
                "both), so they are refused; store NULL or a sentinel instead"
            )
    if compiled.dialect == "sqlite":
        return [given[name] for name in compiled.names]
    return {name: given[name] for name in compiled.names}


def _finite(value: float | Decimal) -> bool:
    return value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)


def _skip_non_code(sql: str, i: int, dialect: Dialect) -> int:
    """If a literal, quoted identifier or comment starts at ``sql[i]``, the index just
    past it; otherwise ``i``."""
    c = sql[i]
    if c == "'":
        backslash = dialect == "mariadb" or (
            dialect == "postgresql" and i > 0 and sql[i - 1] in "eE" and _starts_word(sql, i - 1)
        )
        return _skip_quoted(sql, i, "'", backslash)
    if c == '"':
        return _skip_quoted(sql, i, '"', False)
    if c == "`" and dialect != "postgresql":
        return _skip_quoted(sql, i, "`", False)
    if c == "[" and dialect == "sqlite":
        end = sql.find("]", i + 1)
        return len(sql) if end < 0 else end + 1
    if (c == "-" and _line_comment_at(sql, i, dialect)) or (c == "#" and dialect == "mariadb"):
        end = sql.find("\n", i)
        return len(sql) if end < 0 else end + 1
    if c == "/" and sql.startswith("/*", i):
        return _skip_block_comment(sql, i, nested=dialect == "postgresql")
    if c == "$" and dialect == "postgresql" and not (i > 0 and sql[i - 1] in _WORD_CHARS):
        return _skip_dollar_quoted(sql, i)
    return i


def _line_comment_at(sql: str, i: int, dialect: Dialect) -> bool:
    if not sql.startswith("--", i):
        return False
    # MariaDB needs a space or control character after "--" (so 5--1 is 5 - -1).
    return dialect != "mariadb" or i + 2 >= len(sql) or sql[i + 2] in " \t\r\n\f\v"


def _is_blank(sql: str, dialect: Dialect) -> bool:
    """True when ``sql`` holds nothing but whitespace and comments."""
    i, n = 0, len(sql)
    while i < n:
        if sql[i].isspace():
            i += 1
            continue
        is_comment = (
            sql.startswith("/*", i)
            or _line_comment_at(sql, i, dialect)
            or (sql[i] == "#" and dialect == "mariadb")
        )
        if not is_comment:
            return False
        i = _skip_non_code(sql, i, dialect)
    return True


def _starts_word(sql: str, i: int) -> bool:
    return i == 0 or sql[i - 1] not in _WORD_CHARS


def _skip_quoted(sql: str, i: int, quote: str, backslash: bool) -> int:
    """Index just past the literal that opens at ``sql[i]``; a doubled quote (and,
    when ``backslash``, a backslash) escapes. Unterminated: the end of the text."""
    n = len(sql)
    i += 1
    while i < n:
        c = sql[i]
        if backslash and c == "\\":
            i += 2
        elif c == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def _skip_block_comment(sql: str, i: int, *, nested: bool) -> int:
    n = len(sql)
    depth = 0
    while i < n:
        if sql.startswith("/*", i):
            depth = depth + 1 if nested or depth == 0 else depth
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def _skip_dollar_quoted(sql: str, i: int) -> int:
    """Skip a PostgreSQL ``$tag$…$tag$`` string; a ``$1`` parameter is left alone."""
    j = i + 1
    n = len(sql)
    if j < n and sql[j] in _IDENT_START:
        while j < n and sql[j] in _IDENT_CHARS:
            j += 1
    if j >= n or sql[j] != "$":
        return i + 1
    tag = sql[i : j + 1]
    end = sql.find(tag, j + 1)
    return n if end < 0 else end + len(tag)


def _excerpt(sql: str, limit: int = 80) -> str:
    text = " ".join(sql.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
