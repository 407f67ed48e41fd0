"""The relational conformance suite: the same tests on SQLite, PostgreSQL and MariaDB,
through the async API and, where a backend has one, the sync API
(:mod:`tests.stores.apis`)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from multistore.errors import (
    ConflictError,
    DuplicateKeyError,
    InvalidQueryError,
    InvalidValueError,
    MultistoreError,
    NotFoundError,
    StoreTimeoutError,
    StoreUnavailableError,
    UsageError,
)
from multistore.lab.servers import free_port
from multistore.stores import relational
from multistore.stores.relational import (
    Migration,
    RelationalStore,
    Row,
    TransactionStatus,
)
from tests.stores.apis import open_with

Body = Callable[[RelationalStore], Awaitable[None]]

BACKENDS = [
    ("sqlite", "async"),
    ("sqlite", "sync"),
    pytest.param(("postgresql", "async"), marks=pytest.mark.server),
    pytest.param(("postgresql", "sync"), marks=pytest.mark.server),
    pytest.param(("mariadb", "async"), marks=pytest.mark.server),
    pytest.param(("mariadb", "sync"), marks=pytest.mark.server),
]

_api = "async"  # the API that open_relational uses, set by the fixture below


@pytest.fixture(params=BACKENDS, ids=lambda p: "-".join(p))
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    global _api
    name, _api = request.param
    yield name
    _api = "async"


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/relational.db"
    if backend == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return str(request.getfixturevalue("mariadb_url"))


def with_options(url: str, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


async def open_relational(url: str) -> RelationalStore:
    store: RelationalStore = await open_with(_api)(url, model="relational")
    return store


def run(url: str, body: Body) -> None:
    async def main() -> None:
        store = await open_relational(url)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def money(value: Any) -> Decimal:
    """Compare amounts across backends (SQLite returns floats for DECIMAL columns)."""
    return Decimal(str(value)).quantize(Decimal("0.01"))


# -- the seed's order system -------------------------------------------------------

ORDER_SCHEMA = [
    Migration(
        1,
        "users and products",
        {
            "sqlite": """
                CREATE TABLE users (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    email VARCHAR(255) NOT NULL UNIQUE
                );
                CREATE TABLE products (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    name VARCHAR(100) NOT NULL
                );""",
            "postgresql": """
                CREATE TABLE users (id SERIAL PRIMARY KEY, email VARCHAR(255) NOT NULL UNIQUE);
                CREATE TABLE products (id SERIAL PRIMARY KEY, name VARCHAR(100) NOT NULL);""",
            "mariadb": """
                CREATE TABLE users (
                    id INT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(255) NOT NULL UNIQUE
                ) ENGINE=InnoDB;
                CREATE TABLE products (
                    id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL
                ) ENGINE=InnoDB;""",
        },
    ),
    Migration(
        2,
        "orders and order items",
        {
            "sqlite": """
                CREATE TABLE orders (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    user_id INT REFERENCES users(id),
                    total DECIMAL(10,2),
                    status VARCHAR(50),
                    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
                );
                CREATE TABLE order_items (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    order_id INT REFERENCES orders(id) ON DELETE CASCADE,
                    product_id INT REFERENCES products(id),
                    quantity INT NOT NULL CHECK (quantity > 0),
                    price DECIMAL(10,2)
                );""",
            "postgresql": """
                CREATE TABLE orders (
                    id SERIAL PRIMARY KEY,
                    user_id INT REFERENCES users(id),
                    total DECIMAL(10,2),
                    status VARCHAR(50),
                    created_at TIMESTAMP DEFAULT NOW()
                );
                CREATE TABLE order_items (
                    id SERIAL PRIMARY KEY,
                    order_id INT REFERENCES orders(id) ON DELETE CASCADE,
                    product_id INT REFERENCES products(id),
                    quantity INT NOT NULL CHECK (quantity > 0),
                    price DECIMAL(10,2)
                );""",
            "mariadb": """
                CREATE TABLE orders (
                    id INT AUTO_INCREMENT PRIMARY KEY,
                    user_id INT REFERENCES users(id),
                    total DECIMAL(10,2),
                    status VARCHAR(50),
                    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                    FOREIGN KEY (user_id) REFERENCES users(id)
                ) ENGINE=InnoDB;
                CREATE TABLE order_items (
                    id INT AUTO_INCREMENT PRIMARY KEY,
                    order_id INT,
                    product_id INT,
                    quantity INT NOT NULL CHECK (quantity > 0),
                    price DECIMAL(10,2),
                    FOREIGN KEY (order_id) REFERENCES orders(id) ON DELETE CASCADE,
                    FOREIGN KEY (product_id) REFERENCES products(id)
                ) ENGINE=InnoDB;""",
        },
    ),
]

# The seed's JOIN + SUM + GROUP BY, with its join condition corrected (the seed joins
# o.order_id = oi.id) and the 30-day window passed as a parameter to stay portable.
ORDER_TOTALS = """
SELECT
    o.id,
    u.email,
    SUM(oi.quantity * oi.price) AS total
FROM orders o
JOIN users u ON o.user_id = u.id
JOIN order_items oi ON oi.order_id = o.id
WHERE o.created_at > :since
GROUP BY o.id, u.email
ORDER BY o.id
"""


async def seed_orders(store: RelationalStore) -> dict[str, int]:
    await store.migrate(ORDER_SCHEMA)
    now = datetime.now().replace(microsecond=0)
    async with store.transaction() as tx:
        await tx.executemany(
            "INSERT INTO users (email) VALUES (:email)",
            [{"email": "alice@example.com"}, {"email": "bob@example.com"}],
        )
        await tx.executemany(
            "INSERT INTO products (name) VALUES (:name)", [{"name": "Laptop"}, {"name": "Mouse"}]
        )
        ids = {
            str(r["email"]): int(r["id"]) for r in await tx.fetch_all("SELECT id, email FROM users")
        }
        products = {
            str(r["name"]): int(r["id"])
            for r in await tx.fetch_all("SELECT id, name FROM products")
        }
        orders = [
            (ids["alice@example.com"], now - timedelta(days=1)),
            (ids["bob@example.com"], now - timedelta(days=2)),
            (ids["alice@example.com"], now - timedelta(days=60)),  # outside the window
        ]
        order_ids = []
        for user_id, created in orders:
            await tx.execute(
                "INSERT INTO orders (user_id, status, created_at) VALUES (:u, 'paid', :at)",
                {"u": user_id, "at": created},
            )
            order_ids.append(
                int(
                    await tx.fetch_val(
                        "SELECT MAX(id) FROM orders WHERE user_id = :u", {"u": user_id}
                    )
                )
            )
        items = [
            (order_ids[0], products["Laptop"], 1, Decimal("999.99")),
            (order_ids[0], products["Mouse"], 2, Decimal("19.99")),
            (order_ids[1], products["Mouse"], 3, Decimal("19.99")),
            (order_ids[2], products["Laptop"], 1, Decimal("500.00")),
        ]
        await tx.executemany(
            "INSERT INTO order_items (order_id, product_id, quantity, price) "
            "VALUES (:o, :p, :q, :price)",
            [{"o": o, "p": p, "q": q, "price": price} for o, p, q, price in items],
        )
    return {"recent": order_ids[0], "bob": order_ids[1], "old": order_ids[2], **ids}


def test_order_system_join_sum_group_by(store_url: str, backend: str) -> None:
    async def body(store: RelationalStore) -> None:
        ids = await seed_orders(store)
        since = datetime.now() - timedelta(days=30)
        rows = await store.fetch_all(ORDER_TOTALS, {"since": since})
        got = [(r["id"], r["email"], money(r["total"])) for r in rows]
        assert got == [
            (ids["recent"], "alice@example.com", Decimal("1039.97")),
            (ids["bob"], "bob@example.com", Decimal("59.97")),
        ]
        if backend != "sqlite":  # documented: SQLite returns floats for DECIMAL
            assert all(isinstance(r["total"], Decimal) for r in rows)

    run(store_url, body)


def test_order_items_cascade_when_order_deleted(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        ids = await seed_orders(store)
        before = await store.fetch_val("SELECT COUNT(*) FROM order_items")
        assert before == 4
        assert await store.execute("DELETE FROM orders WHERE id = :id", {"id": ids["recent"]}) == 1
        left = await store.fetch_all("SELECT order_id FROM order_items ORDER BY order_id")
        assert [r["order_id"] for r in left] == [ids["bob"], ids["old"]]

    run(store_url, body)


def test_integrity_violations_are_conflicts_and_change_nothing(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        ids = await seed_orders(store)
        cases = {
            "foreign key": "INSERT INTO order_items (order_id, product_id, quantity, price) "
            "VALUES (999999, NULL, 1, 1.00)",
            "not null": "INSERT INTO users (email) VALUES (NULL)",
            "check": f"INSERT INTO order_items (order_id, product_id, quantity, price) "
            f"VALUES ({ids['recent']}, NULL, 0, 1.00)",
            "referenced row": f"DELETE FROM users WHERE id = {ids['bob@example.com']}",
        }
        for what, sql in cases.items():
            with pytest.raises(ConflictError) as info:
                await store.execute(sql)
            assert not isinstance(info.value, DuplicateKeyError), what
            assert info.value.message, what
        assert await store.fetch_val("SELECT COUNT(*) FROM order_items") == 4
        assert await store.fetch_val("SELECT COUNT(*) FROM users") == 2

    run(store_url, body)


# -- rows and statements -------------------------------------------------------------


async def make_people(store: RelationalStore) -> None:
    await store.execute(
        "CREATE TABLE people (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL, age INT)"
    )
    await store.executemany(
        "INSERT INTO people (id, name, age) VALUES (:id, :name, :age)",
        [
            {"id": 1, "name": "Alice", "age": 30},
            {"id": 2, "name": "Bob", "age": 25},
            {"id": 3, "name": "Carol", "age": None},
        ],
    )


async def people(store: RelationalStore) -> list[tuple[Any, ...]]:
    return [r.as_tuple() for r in await store.fetch_all("SELECT * FROM people ORDER BY id")]


ORIGINAL = [(1, "Alice", 30), (2, "Bob", 25), (3, "Carol", None)]


def test_row_by_name_index_and_as_mapping(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        row = await store.fetch_one("SELECT id, name, age FROM people WHERE id = :id", {"id": 1})
        assert isinstance(row, Row)
        assert row["name"] == "Alice" and row[1] == "Alice" and row[-1] == 30
        assert row == {"id": 1, "name": "Alice", "age": 30}
        assert list(row) == ["id", "name", "age"] and row.columns == ("id", "name", "age")
        assert "age" in row and "email" not in row
        with pytest.raises(KeyError, match="email"):
            row["email"]
        assert dict(row) == {"id": 1, "name": "Alice", "age": 30}
        assert await store.fetch_one("SELECT * FROM people WHERE id = :id", {"id": 99}) is None
        assert await store.fetch_val("SELECT name FROM people WHERE id = :id", {"id": 99}) is None
        assert await store.fetch_val("SELECT COUNT(*) FROM people") == 3
        assert await store.fetch_all("SELECT * FROM people WHERE age > :a", {"a": 100}) == []

    run(store_url, body)


def test_execute_returns_rows_changed_including_unchanged_matches(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        assert await store.execute("UPDATE people SET age = 25 WHERE age <= :a", {"a": 30}) == 2
        # Bob already had age 25: every backend counts matched rows (MariaDB: FOUND_ROWS).
        assert await store.execute("UPDATE people SET age = 25 WHERE age = 25") == 2
        assert await store.execute("DELETE FROM people WHERE id = :id", {"id": 42}) == 0

    run(store_url, body)


def test_executemany_inserts_all_or_validates_first(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        n = await store.executemany(
            "INSERT INTO people (id, name) VALUES (:id, :name)",
            [{"id": i, "name": f"p{i}"} for i in range(10, 20)],
        )
        assert n == 10
        assert await store.fetch_val("SELECT COUNT(*) FROM people") == 13
        assert await store.executemany("INSERT INTO people (id) VALUES (:id)", []) == 0
        with pytest.raises(InvalidQueryError, match=":name"):
            await store.executemany(
                "INSERT INTO people (id, name) VALUES (:id, :name)",
                [{"id": 30, "name": "ok"}, {"id": 31}],
            )
        assert await store.fetch_val("SELECT COUNT(*) FROM people") == 13

    run(store_url, body)


def test_executemany_outside_a_transaction_is_all_or_nothing(store_url: str) -> None:
    """A multi-row call with no transaction around it runs in one of its own: a row
    that fails leaves none of the others behind, so its definite error is true (SQLite
    committed the rows before the failing one, and said DEFINITE)."""

    async def body(store: RelationalStore) -> None:
        await make_people(store)
        insert = "INSERT INTO people (id, name) VALUES (:id, :name)"
        rows = [{"id": 10, "name": "new"}, {"id": 1, "name": "exists"}, {"id": 11, "name": "x"}]
        with pytest.raises(DuplicateKeyError) as caught:
            await store.executemany(insert, rows)
        assert caught.value.definite
        assert await store.fetch_val("SELECT COUNT(*) FROM people") == 3
        update = "UPDATE people SET name = :name WHERE id = :id"
        with pytest.raises(MultistoreError) as failed:
            await store.executemany(update, [{"id": 2, "name": "Bobby"}, {"id": 3, "name": None}])
        assert failed.value.definite
        assert await store.fetch_val("SELECT name FROM people WHERE id = 2") == "Bob"
        async with store.connection() as conn:
            with pytest.raises(DuplicateKeyError):
                await conn.executemany(insert, rows)
            assert not conn.in_transaction
            assert await conn.fetch_val("SELECT COUNT(*) FROM people") == 3
        async with store.transaction() as tx:  # inside the caller's transaction: a savepoint
            await tx.execute(insert, {"id": 20, "name": "kept"})
            with pytest.raises(DuplicateKeyError):
                async with tx.transaction() as sp:
                    await sp.executemany(insert, rows)
        assert await store.fetch_val("SELECT COUNT(*) FROM people") == 4

    run(store_url, body)


def test_a_script_that_fails_part_way_is_not_definite(store_url: str, backend: str) -> None:
    """A script outside a transaction: PostgreSQL runs it as one implicit transaction,
    so a failure undoes it all (definite); SQLite and MariaDB commit statement by
    statement (a script may hold statements that cannot run in a transaction), so a
    failure after the first statement is indeterminate. A failing first statement has
    written nothing: definite everywhere."""

    async def body(store: RelationalStore) -> None:
        await make_people(store)
        with pytest.raises(DuplicateKeyError) as first:
            await store.execute_script(
                "INSERT INTO people (id, name) VALUES (1, 'dup');\n"
                "INSERT INTO people (id, name) VALUES (40, 'x');"
            )
        assert first.value.definite
        with pytest.raises(DuplicateKeyError) as later:
            await store.execute_script(
                "INSERT INTO people (id, name) VALUES (41, 'x');\n"
                "INSERT INTO people (id, name) VALUES (1, 'dup');"
            )
        written = await store.fetch_val("SELECT COUNT(*) FROM people WHERE id >= 40")
        if backend == "postgresql":
            assert written == 0 and later.value.definite
        else:
            assert written == 1 and not later.value.definite

    run(store_url, body)


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf"), Decimal("NaN"), Decimal("-Infinity")]
)
def test_nan_and_infinities_are_refused_alike(store_url: str, value: Any) -> None:
    """SQLite stored NaN as NULL without a word, MariaDB refused it and PostgreSQL kept
    it: every backend now refuses NaN and infinities as parameters, writing nothing."""

    async def body(store: RelationalStore) -> None:
        await store.execute("CREATE TABLE nums (id INT PRIMARY KEY, x DOUBLE PRECISION)")
        with pytest.raises(InvalidValueError, match=":x"):
            await store.execute("INSERT INTO nums (id, x) VALUES (1, :x)", {"x": value})
        with pytest.raises(InvalidValueError, match=":x"):
            await store.executemany(
                "INSERT INTO nums (id, x) VALUES (:id, :x)",
                [{"id": 2, "x": 1.0}, {"id": 3, "x": value}],
            )
        assert await store.fetch_val("SELECT COUNT(*) FROM nums") == 0

    run(store_url, body)


class _SQLText:
    """An object whose text is SQL: PyMySQL wrote ``str(value)`` into the statement."""

    def __str__(self) -> str:
        return "0); DELETE FROM things; --"


@pytest.mark.parametrize(
    "value",
    [_SQLText(), {"a": 1}, {1, 2}, [[1], [2]], "lone \ud800 surrogate"],
    ids=["object", "dict", "set", "nested-list", "surrogate"],
)
def test_parameters_no_backend_can_send_are_refused_alike(store_url: str, value: Any) -> None:
    """Found by the hostile suite: MariaDB spliced an unknown object's text into the
    SQL unescaped, sets and nested lists raised RecursionError or a server error, and
    lone surrogates raised UnicodeEncodeError on SQLite and PostgreSQL."""

    async def body(store: RelationalStore) -> None:
        await store.execute("CREATE TABLE things (id INT PRIMARY KEY, v VARCHAR(100))")
        await store.execute("INSERT INTO things (id, v) VALUES (1, 'kept')")
        with pytest.raises(InvalidValueError):
            await store.execute("INSERT INTO things (id, v) VALUES (2, :v)", {"v": value})
        rows = await store.fetch_all("SELECT id, v FROM things")
        assert [(r["id"], r["v"]) for r in rows] == [(1, "kept")]

    run(store_url, body)


def test_statements_and_values_no_backend_runs_are_definite_usage_errors(store_url: str) -> None:
    """Found by the hostile suite: MariaDB answered a blank statement, a list where one
    value belongs and bytes that are not UTF-8 with indeterminate store errors;
    PostgreSQL raised ValueError for an int too long to print; a statement that is not
    a string raised TypeError."""

    async def body(store: RelationalStore) -> None:
        await store.execute("CREATE TABLE items (id VARCHAR(20) PRIMARY KEY, n BIGINT)")
        for sql in ("", "  ", "-- only a comment"):
            with pytest.raises(InvalidQueryError, match="empty statement"):
                await store.execute(sql)
        with pytest.raises(InvalidQueryError, match="string"):
            await store.fetch_all(["SELECT 1"])  # type: ignore[arg-type]
        for value in (10**5000, [1, 2]):
            with pytest.raises(UsageError) as info:
                await store.execute("INSERT INTO items (id, n) VALUES ('a', :n)", {"n": value})
            assert info.value.definite
        try:  # SQLite compares the blob; the servers refuse it, definitely
            await store.fetch_all("SELECT * FROM items WHERE id = :v", {"v": b"\x80"})
        except UsageError as exc:
            assert exc.definite
        assert await store.fetch_val("SELECT COUNT(*) FROM items") == 0

    run(store_url, body)


def test_uuid_parameters_are_sent_as_text_everywhere(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await store.execute("CREATE TABLE ids (id VARCHAR(36) PRIMARY KEY)")
        key = uuid.UUID("12345678-1234-5678-1234-567812345678")
        await store.execute("INSERT INTO ids (id) VALUES (:id)", {"id": key})
        assert await store.fetch_val("SELECT id FROM ids") == str(key)

    run(store_url, body)


def test_values_round_trip(store_url: str, backend: str) -> None:
    blob = {"sqlite": "BLOB", "postgresql": "BYTEA", "mariadb": "BLOB"}[backend]

    async def body(store: RelationalStore) -> None:
        await store.execute(
            f"CREATE TABLE vals (id INT PRIMARY KEY, s VARCHAR(200), n BIGINT, f DOUBLE PRECISION,"
            f" d DECIMAL(12,4), b {blob})"
        )
        values = {
            "id": 1,
            "s": "Grüße 🌍 'quoted' \"double\" back\\slash",
            "n": 2**53 + 1,
            "f": 0.5,
            "d": Decimal("1234.5678"),
            "b": b"\x00\xff\x01",
        }
        await store.execute(
            "INSERT INTO vals (id, s, n, f, d, b) VALUES (:id, :s, :n, :f, :d, :b)", values
        )
        row = await store.fetch_one("SELECT * FROM vals")
        assert row is not None
        assert row["s"] == values["s"] and row["n"] == values["n"] and row["f"] == 0.5
        assert bytes(row["b"]) == values["b"]
        assert money(row["d"]) == Decimal("1234.57")
        if backend != "sqlite":
            assert row["d"] == Decimal("1234.5678")
        await store.execute("INSERT INTO vals (id) VALUES (:id)", {"id": 2})
        empty = await store.fetch_one("SELECT s, n, d, b FROM vals WHERE id = 2")
        assert empty is not None and list(empty.values()) == [None, None, None, None]

    run(store_url, body)


def test_literal_percent_and_colons_survive(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        # '%' in SQL with and without parameters; ':x' inside a literal is not a parameter
        assert await store.fetch_val("SELECT COUNT(*) FROM people WHERE name LIKE 'A%'") == 1
        n = await store.fetch_val(
            "SELECT COUNT(*) FROM people WHERE name LIKE 'A%' OR name = :n", {"n": "Bob"}
        )
        assert n == 2
        assert await store.fetch_val("SELECT 'it''s :x 100%'", {}) == "it's :x 100%"
        assert await store.fetch_val("SELECT 'it''s :x 100%' AS v WHERE 1 = :one", {"one": 1}) == (
            "it's :x 100%"
        )

    run(store_url, body)


def test_connection_runs_several_statements(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        async with store.connection() as conn:
            assert not conn.in_transaction
            await conn.execute("UPDATE people SET age = 31 WHERE id = 1")
            assert await conn.fetch_val("SELECT age FROM people WHERE id = 1") == 31
            async with conn.transaction():
                assert conn.in_transaction
            assert not conn.in_transaction
        await store.execute_script(
            "INSERT INTO people (id, name) VALUES (7, 'semi;colon');\n"
            "INSERT INTO people (id, name) VALUES (8, 'it''s');"
        )
        names = await store.fetch_all("SELECT name FROM people WHERE id >= 7 ORDER BY id")
        assert [r["name"] for r in names] == ["semi;colon", "it's"]

    run(store_url, body)


def test_concurrent_statements_all_land(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        await asyncio.gather(
            *(
                store.execute(
                    "INSERT INTO people (id, name) VALUES (:id, :name)", {"id": i, "name": f"c{i}"}
                )
                for i in range(100, 140)
            )
        )
        assert await store.fetch_val("SELECT COUNT(*) FROM people WHERE id >= 100") == 40

    run(store_url, body)


# -- transactions --------------------------------------------------------------------


def test_transaction_commits(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        async with store.transaction() as tx:
            assert tx.status.value == "active"
            await tx.execute("INSERT INTO people (id, name) VALUES (4, 'Dan')")
            await tx.execute("UPDATE people SET age = age + 1 WHERE id = 1")
            assert await tx.fetch_val("SELECT COUNT(*) FROM people") == 4
        assert tx.status is TransactionStatus.COMMITTED
        assert await people(store) == [
            (1, "Alice", 31),
            (2, "Bob", 25),
            (3, "Carol", None),
            (4, "Dan", None),
        ]

    run(store_url, body)


def test_exception_rolls_back_everything(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        with pytest.raises(RuntimeError, match="boom"):
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO people (id, name) VALUES (4, 'Dan')")
                await tx.execute("DELETE FROM people WHERE id = 1")
                raise RuntimeError("boom")
        assert tx.status is TransactionStatus.ROLLED_BACK
        assert await people(store) == ORIGINAL

    run(store_url, body)


def test_failed_statement_rolls_back_the_whole_transaction(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        with pytest.raises(DuplicateKeyError):
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO people (id, name) VALUES (4, 'Dan')")
                await tx.execute("UPDATE people SET name = 'changed' WHERE id = 2")
                await tx.execute("INSERT INTO people (id, name) VALUES (1, 'dup')")
        assert tx.status is TransactionStatus.ROLLED_BACK
        assert await people(store) == ORIGINAL  # no partial write

    run(store_url, body)


def test_error_caught_inside_the_block_still_rolls_back(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        with pytest.raises(ConflictError, match="rolled back"):
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO people (id, name) VALUES (4, 'Dan')")
                with pytest.raises(DuplicateKeyError):
                    await tx.execute("INSERT INTO people (id, name) VALUES (1, 'dup')")
                with pytest.raises(InvalidQueryError, match="aborted"):
                    await tx.execute("INSERT INTO people (id, name) VALUES (5, 'Eve')")
        assert tx.status is TransactionStatus.ROLLED_BACK
        assert await people(store) == ORIGINAL

    run(store_url, body)


def test_nested_transaction_is_a_savepoint(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO people (id, name) VALUES (4, 'Dan')")
            with pytest.raises(DuplicateKeyError):
                async with tx.transaction() as inner:
                    await inner.execute("INSERT INTO people (id, name) VALUES (5, 'Eve')")
                    await inner.execute("INSERT INTO people (id, name) VALUES (1, 'dup')")
            assert inner.status is TransactionStatus.ROLLED_BACK
            async with tx.transaction() as kept:
                await kept.execute("INSERT INTO people (id, name) VALUES (6, 'Fay')")
            assert kept.status is TransactionStatus.COMMITTED
        assert tx.status is TransactionStatus.COMMITTED
        assert [r[0] for r in await people(store)] == [1, 2, 3, 4, 6]

    run(store_url, body)


def test_uncommitted_writes_are_invisible_to_another_store(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        other = await open_relational(store_url)
        try:
            async with store.transaction() as tx:
                await tx.execute("INSERT INTO people (id, name) VALUES (4, 'Dan')")
                assert await other.fetch_val("SELECT COUNT(*) FROM people") == 3
            assert await other.fetch_val("SELECT COUNT(*) FROM people") == 4
        finally:
            await other.close()

    run(store_url, body)


def test_connection_and_transaction_refuse_use_after_their_block(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO people (id, name) VALUES (4, 'Dan')")
        async with store.connection() as conn:
            pass  # a connection block that ends: the object must be unusable after it
        with pytest.raises(UsageError, match="committed"):
            await tx.execute("DELETE FROM people")
        with pytest.raises(UsageError, match="block ended"):
            await conn.execute("DELETE FROM people")
        assert await store.fetch_val("SELECT COUNT(*) FROM people") == 4

    run(store_url, body)


# -- migrations ----------------------------------------------------------------------

MIGRATIONS = [
    # Given out of order on purpose: they must run by version.
    Migration(2, "add email", "ALTER TABLE accounts ADD COLUMN email VARCHAR(100)"),
    Migration(
        1,
        "accounts",
        "CREATE TABLE accounts (id INT PRIMARY KEY, name VARCHAR(50));\n"
        "INSERT INTO accounts (id, name) VALUES (1, 'it''s; seeded')",
    ),
    Migration(3, "seed more", "INSERT INTO accounts (id, name, email) VALUES (2, 'b', 'b@x')"),
]


def test_migrations_run_once_in_order(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        assert await store.applied_migrations() == []
        assert await store.migrate(MIGRATIONS) == [1, 2, 3]
        rows = await store.fetch_all("SELECT id, name, email FROM accounts ORDER BY id")
        assert [r.as_tuple() for r in rows] == [(1, "it's; seeded", None), (2, "b", "b@x")]
        assert await store.migrate(MIGRATIONS) == []
        assert await store.fetch_val("SELECT COUNT(*) FROM accounts") == 2
        applied = await store.applied_migrations()
        assert [(a.version, a.name) for a in applied] == [
            (1, "accounts"),
            (2, "add email"),
            (3, "seed more"),
        ]
        assert all(len(a.checksum) == 64 for a in applied)
        assert applied[0].checksum == MIGRATIONS[1].checksum(store.backend)
        # a new migration later on is applied alone
        more = [*MIGRATIONS, Migration(4, "seed c", "INSERT INTO accounts (id) VALUES (3)")]
        assert await store.migrate(more) == [4]

    run(store_url, body)


def test_changed_migration_is_refused(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await store.migrate(MIGRATIONS)
        changed = [
            Migration(1, "accounts", "CREATE TABLE accounts (id BIGINT PRIMARY KEY)"),
            *MIGRATIONS[::2],
            Migration(4, "new", "INSERT INTO accounts (id) VALUES (4)"),
        ]
        with pytest.raises(ConflictError, match="migration 1 'accounts' was changed"):
            await store.migrate(changed)
        # nothing applied, not even the new migration 4
        assert [a.version for a in await store.applied_migrations()] == [1, 2, 3]
        assert await store.fetch_val("SELECT COUNT(*) FROM accounts") == 2
        # a migration older than the newest applied one, never applied, is refused
        await store.migrate([*MIGRATIONS, Migration(5, "five", "")])
        with pytest.raises(ConflictError, match="older than"):
            await store.migrate([*MIGRATIONS, Migration(4, "late", ""), Migration(5, "five", "")])
        assert [a.version for a in await store.applied_migrations()] == [1, 2, 3, 5]

    run(store_url, body)


def test_failed_migration_is_not_recorded(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        broken = [*MIGRATIONS[1:2], Migration(2, "broken", "INSERT INTO no_such_table VALUES (1)")]
        with pytest.raises(NotFoundError):
            await store.migrate(broken)
        assert [a.version for a in await store.applied_migrations()] == [1]
        assert await store.migrate(MIGRATIONS) == [2, 3]

    run(store_url, body)


def test_concurrent_migrators_apply_each_migration_once(store_url: str) -> None:
    counted = [
        Migration(1, "log", "CREATE TABLE runs (n INT)"),
        *(Migration(v, f"step {v}", "INSERT INTO runs (n) VALUES (1)") for v in range(2, 7)),
    ]

    async def body(store: RelationalStore) -> None:
        others = [await open_relational(store_url) for _ in range(2)]
        try:
            results = await asyncio.gather(
                store.migrate(counted), *(o.migrate(counted) for o in others)
            )
        finally:
            for other in others:
                await other.close()
        assert sorted(v for done in results for v in done) == [1, 2, 3, 4, 5, 6]
        assert await store.fetch_val("SELECT COUNT(*) FROM runs") == 5

    run(store_url, body)


def test_migration_sql_per_backend_dict_needs_this_backend(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        from multistore.errors import UnsupportedError

        with pytest.raises(UnsupportedError, match=store.backend):
            await store.migrate([Migration(1, "other", {"nonexistent": "SELECT 1"})])
        assert await store.applied_migrations() == []

    run(store_url, body)


# -- bad input -----------------------------------------------------------------------


def test_syntax_error(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        with pytest.raises(InvalidQueryError) as info:
            await store.execute("UPDATE people SET name = 'x' WHERE")
        assert info.value.message
        with pytest.raises(InvalidQueryError):
            await store.fetch_all("SELEC * FROM people")
        assert await people(store) == ORIGINAL

    run(store_url, body)


def test_duplicate_key(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        with pytest.raises(DuplicateKeyError) as info:
            await store.execute(
                "INSERT INTO people (id, name, age) VALUES (:id, :name, :age)",
                {"id": 1, "name": "Mallory", "age": 99},
            )
        assert re.search(r"(?i)unique|duplicate", info.value.message)  # the backend's words
        assert await people(store) == ORIGINAL

    run(store_url, body)


def test_missing_table(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        with pytest.raises(NotFoundError, match=r"(?i)no_such_table"):
            await store.fetch_all("SELECT * FROM no_such_table")
        with pytest.raises(NotFoundError):
            await store.execute("INSERT INTO no_such_table (id) VALUES (:id)", {"id": 1})
        assert await people(store) == ORIGINAL

    run(store_url, body)


def test_missing_parameter(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        with pytest.raises(InvalidQueryError, match=":age"):
            await store.execute("UPDATE people SET age = :age WHERE id = :id", {"id": 1, "agee": 5})
        with pytest.raises(InvalidQueryError, match="mapping"):
            await store.execute("UPDATE people SET age = :age", [5])  # type: ignore[arg-type]
        assert await people(store) == ORIGINAL

    run(store_url, body)


def test_injection_is_stored_as_data(store_url: str) -> None:
    async def body(store: RelationalStore) -> None:
        await make_people(store)
        attacks = [
            "'; DROP TABLE people; --",
            "Robert'); DROP TABLE people;--",
            ":name",
            "%(name)s %s %% ?",
            "\\'; DELETE FROM people; --",
            '" OR 1=1 --',
            "$1 $$ $tag$",
        ]
        for i, value in enumerate(attacks, start=10):
            await store.execute(
                "INSERT INTO people (id, name) VALUES (:id, :name)", {"id": i, "name": value}
            )
        rows = await store.fetch_all("SELECT name FROM people WHERE id >= 10 ORDER BY id")
        assert [r["name"] for r in rows] == attacks
        for value in attacks:
            hit = await store.fetch_val("SELECT id FROM people WHERE name = :v", {"v": value})
            assert hit is not None
        assert await store.fetch_val("SELECT COUNT(*) FROM people") == 3 + len(attacks)

    run(store_url, body)


def test_statement_timeout(store_url: str, backend: str) -> None:
    slow = {
        "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT COUNT(*) FROM c",
        "postgresql": "SELECT pg_sleep(10)",
        "mariadb": "SELECT SLEEP(10)",
    }[backend]

    async def body(store: RelationalStore) -> None:
        # without the timeout the statement would finish (or never end) without an error
        with pytest.raises(StoreTimeoutError):
            await store.fetch_all(slow)
        assert await store.fetch_val("SELECT 1") == 1  # the store is still usable

    run(with_options(store_url, timeout=0.5), body)


# -- server down and restart (server backends) ----------------------------------------

SERVERS = [
    pytest.param("postgresql", marks=pytest.mark.server),
    pytest.param("mariadb", marks=pytest.mark.server),
]


@pytest.mark.parametrize("scheme", SERVERS)
def test_closed_port_is_unavailable_fast(scheme: str) -> None:
    # A connect timeout far past pytest's per-test timeout: an open that waited it out,
    # instead of taking the refusal at once, would fail the test by timing out.
    url = f"{scheme}://user:pw@127.0.0.1:{free_port()}/db?connect_timeout=3600"

    async def main() -> None:
        with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1") as info:
            await open_relational(url)
        assert info.value.definite  # refused: nothing was sent

    asyncio.run(main())


@pytest.mark.parametrize("scheme", SERVERS)
def test_reconnect_after_server_restart(scheme: str, request: pytest.FixtureRequest) -> None:
    server_name, url_name = {
        "postgresql": ("postgres_server", "postgres_url"),
        "mariadb": ("mariadb_server", "mariadb_url"),
    }[scheme]
    url = with_options(str(request.getfixturevalue(url_name)), connect_timeout=2)
    server = request.getfixturevalue(server_name)

    async def body(store: RelationalStore) -> None:
        await make_people(store)
        try:
            server.stop()
            # unavailable, not a StoreTimeoutError (nor a hang: pytest's timeout bounds it)
            with pytest.raises(StoreUnavailableError):
                await store.fetch_val("SELECT COUNT(*) FROM people")
            with pytest.raises(StoreUnavailableError):
                await store.execute("INSERT INTO people (id, name) VALUES (9, 'x')")
        finally:
            server.start()
        # the same store object works again, on new connections
        assert await people(store) == ORIGINAL
        await store.execute("INSERT INTO people (id, name) VALUES (4, 'Dan')")
        async with store.transaction() as tx:
            await tx.execute("UPDATE people SET age = 1 WHERE id = 4")
        assert await store.fetch_val("SELECT age FROM people WHERE id = 4") == 1

    run(url, body)


def test_public_names() -> None:
    assert set(relational.__all__) == {
        "AppliedMigration",
        "Connection",
        "Migration",
        "Params",
        "Queries",
        "RelationalStore",
        "Row",
        "Transaction",
        "TransactionStatus",
    }
    for name in relational.__all__:
        assert hasattr(relational, name)


def test_docs_example_runs(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The interface example of docs/stores/relational.md, unchanged, on every backend."""
    doc = Path(__file__).parents[2] / "docs" / "stores" / "relational.md"
    example = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)[0]
    code, _, _ = example.partition("with tempfile.TemporaryDirectory()")
    namespace: dict[str, Any] = {}
    exec(compile(code, str(doc), "exec"), namespace)
    asyncio.run(namespace["main"](store_url))
    assert capsys.readouterr().out.splitlines() == [
        "[1, 2]",
        "TransactionStatus.COMMITTED",
        "alice@example.com 10 1039.97",
        "DuplicateKeyError rolled_back",
        "paid",
        "0",
    ]
