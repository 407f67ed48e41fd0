"""Unit tests of the pure ``:name`` translator and statement splitter (no database)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from multistore.errors import InvalidQueryError
from multistore.stores.relational._params import bind, compile_sql, split_statements


def test_sqlite_placeholders_become_positional_in_order() -> None:
    c = compile_sql("SELECT * FROM t WHERE a = :a AND b = :b OR a = :a", "sqlite")
    assert c.sql == "SELECT * FROM t WHERE a = ? AND b = ? OR a = ?"
    assert c.names == ("a", "b", "a")
    assert bind(c, {"a": 1, "b": 2, "unused": 3}) == [1, 2, 1]


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
def test_pyformat_placeholders_and_percent_doubled(dialect: str) -> None:
    c = compile_sql("SELECT '100%' AS p, x % 2 FROM t WHERE a LIKE :pat", dialect)
    assert c.sql == "SELECT '100%%' AS p, x %% 2 FROM t WHERE a LIKE %(pat)s"
    assert bind(c, {"pat": "a%"}) == {"pat": "a%"}


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mariadb"])
def test_statement_without_placeholders_is_untouched(dialect: str) -> None:
    sql = "SELECT '100%' AS p, 'it''s :x' FROM t -- :c\n"
    c = compile_sql(sql, dialect)
    assert c.sql == sql
    assert c.names == ()
    assert bind(c, None) is None
    assert bind(c, {"x": 1}) is None


@pytest.mark.parametrize(
    ("dialect", "sql", "expected_names"),
    [
        ("sqlite", "SELECT 'it''s :x', :y", ("y",)),
        ("postgresql", "SELECT 'it''s :x', :y", ("y",)),
        ("mariadb", "SELECT 'it''s :x', :y", ("y",)),
        ("mariadb", r"SELECT 'it\'s :x', :y", ("y",)),
        ("postgresql", r"SELECT E'it\'s :x', :y", ("y",)),
        ("postgresql", "SELECT $$ :x $$, $tag$ ' :x $tag$, :y", ("y",)),
        ("postgresql", "SELECT $1, :y", ("y",)),
        ("postgresql", "SELECT :y::text, x::int", ("y",)),
        ("postgresql", "SELECT '{1,2}'::int[], :y", ("y",)),
        ("sqlite", 'SELECT ":x" FROM t WHERE "a:b" = :y', ("y",)),
        ("mariadb", "SELECT `:x` FROM t WHERE :y", ("y",)),
        ("sqlite", "SELECT [:x] FROM t WHERE :y", ("y",)),
        ("sqlite", "SELECT 1 -- :x\n, :y", ("y",)),
        ("mariadb", "SELECT 1 # :x\n, :y", ("y",)),
        ("postgresql", "SELECT 1 /* :x /* nested :z */ :w */, :y", ("y",)),
        ("sqlite", "SELECT 1 /* :x */, :y", ("y",)),
        ("mariadb", "SELECT @a := 1, :y", ("y",)),
        ("sqlite", "SELECT a:b, :y", ("y",)),
        ("sqlite", "SELECT :_a1, :B", ("_a1", "B")),
    ],
)
def test_literals_identifiers_comments_and_casts_are_skipped(
    dialect: str, sql: str, expected_names: tuple[str, ...]
) -> None:
    assert compile_sql(sql, dialect).names == expected_names


def test_mariadb_double_dash_needs_a_space_to_start_a_comment() -> None:
    assert compile_sql("SELECT 5--:x", "mariadb").names == ("x",)
    assert compile_sql("SELECT 5-- :x", "mariadb").names == ()


def test_pg_cast_survives_translation() -> None:
    c = compile_sql("SELECT :v::numeric(10,2)", "postgresql")
    assert c.sql == "SELECT %(v)s::numeric(10,2)"


def test_missing_value_names_the_placeholder() -> None:
    c = compile_sql("INSERT INTO users (id, email) VALUES (:id, :email)", "sqlite")
    with pytest.raises(InvalidQueryError, match=r":email") as info:
        bind(c, {"id": 1})
    assert ":id" not in str(info.value).split("in ")[0]
    with pytest.raises(InvalidQueryError, match=r":id, :email"):
        bind(c, None)


def test_params_must_be_a_mapping() -> None:
    c = compile_sql("SELECT :a", "postgresql")
    with pytest.raises(InvalidQueryError, match="mapping"):
        bind(c, [1])  # type: ignore[arg-type]


def test_positional_question_mark_is_refused_on_sqlite_only() -> None:
    with pytest.raises(InvalidQueryError, match=":name"):
        compile_sql("SELECT * FROM t WHERE a = ?", "sqlite")
    assert compile_sql("SELECT '?' , :a", "sqlite").names == ("a",)
    # ? is a JSONB operator on PostgreSQL
    assert compile_sql("SELECT doc ? 'k' FROM t WHERE id = :id", "postgresql").names == ("id",)


def test_unterminated_literal_is_left_for_the_server() -> None:
    c = compile_sql("SELECT :a, 'oops :b", "postgresql")
    assert c.names == ("a",)
    assert c.sql == "SELECT %(a)s, 'oops :b"


def test_split_statements() -> None:
    script = """
    -- leading comment; with a semicolon
    CREATE TABLE a (x TEXT DEFAULT ';');
    INSERT INTO a VALUES ('it''s; fine'); /* ; */
    ;
    INSERT INTO a VALUES ('last')
    """
    assert split_statements(script, "sqlite") == [
        "-- leading comment; with a semicolon\n    CREATE TABLE a (x TEXT DEFAULT ';')",
        "INSERT INTO a VALUES ('it''s; fine')",
        "INSERT INTO a VALUES ('last')",
    ]


def test_split_statements_drops_comment_only_pieces() -> None:
    script = "CREATE TABLE a (x INT); -- trailing ; comment\n/* only */ ; # hash\n"
    assert split_statements(script, "mariadb") == ["CREATE TABLE a (x INT)"]
    assert split_statements(r"INSERT INTO a VALUES ('a\';b'); SELECT 1", "mariadb") == [
        r"INSERT INTO a VALUES ('a\';b')",
        "SELECT 1",
    ]


_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)


@given(value=_text)
def test_any_value_inside_a_string_literal_is_not_a_placeholder(value: str) -> None:
    literal = "'" + value.replace("'", "''") + "'"
    for dialect in ("sqlite", "postgresql"):
        c = compile_sql(f"SELECT {literal}, :p", dialect)
        assert c.names == ("p",)


@given(value=_text)
def test_pyformat_output_formats_back_to_the_input(value: str) -> None:
    """What psycopg/PyMySQL do with %(name)s and %%: the original text comes back."""
    literal = "'" + value.replace("'", "''").replace("\\", "\\\\") + "'"
    sql = f"SELECT {literal} AS v, 1 % 2 WHERE x = :p"
    c = compile_sql(sql, "mariadb")
    assert c.sql % {"p": ":p"} == sql


def test_translator_module_is_pure() -> None:
    """The translator imports no driver and nothing that does I/O."""
    path = Path(sys.modules[compile_sql.__module__].__file__ or "")
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    assert "functools" in modules
    allowed = {"__future__", "functools", "collections", "dataclasses", "typing", "multistore"}
    allowed |= {"math", "decimal"}  # pure: the check of NaN and infinities
    assert modules <= allowed
