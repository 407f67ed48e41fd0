"""Unit tests of the document model's pure core: paths, filters, sorts, updates, projection.

These modules do no I/O (a test below keeps it so); the backends' SQL compilers are pure
too. Their agreement with a real database is tested in test_document_{sqlite,postgres}.py.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from typing import Any

import pytest

from multistore.errors import InvalidQueryError, InvalidValueError
from multistore.stores.document import _postgres_sql, _sqlite_sql
from multistore.stores.document._filters import (
    And,
    Compare,
    Exists,
    In,
    MatchAll,
    Not,
    Or,
    matches,
    parse_filter,
    parse_sort,
)
from multistore.stores.document._updates import (
    apply_update,
    parse_projection,
    parse_update,
    prepare_document,
    project,
)
from multistore.stores.document._values import Path, encode, json_equal, parse_path

PURE_MODULES = [
    "multistore.stores.document._values",
    "multistore.stores.document._filters",
    "multistore.stores.document._updates",
    "multistore.stores.document._sqlite_sql",
    "multistore.stores.document._postgres_sql",
]
ALLOWED_IMPORTS = {
    "__future__",
    "abc",
    "collections.abc",
    "dataclasses",
    "decimal",
    "hashlib",
    "json",
    "math",
    "re",
    "typing",
    "uuid",
    "multistore.errors",
    "multistore.stores.document._values",
    "multistore.stores.document._filters",
    "multistore.stores._limits",  # pure: bounds and a safe repr for messages
}


@pytest.mark.parametrize("name", PURE_MODULES)
def test_pure_modules_do_no_io(name: str) -> None:
    tree = ast.parse(inspect.getsource(importlib.import_module(name)))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported <= ALLOWED_IMPORTS, imported - ALLOWED_IMPORTS


# -- paths ---------------------------------------------------------------------------


def test_paths() -> None:
    assert parse_path("specs.cpu") == Path(("specs", "cpu"))
    assert parse_path("größe-2").segments == ("größe-2",)
    assert Path(("a", "b", "c")).prefixes == (Path(("a",)), Path(("a", "b")))
    for bad, message in [
        ("", "non-empty"),
        ("a..b", "empty segment"),
        ("a.$gt", "operator"),
        ("reviews.0", "array positions"),
        ("a.-1", "array positions"),
        ("a b", "letters, digits"),
        ("a'b", "letters, digits"),
        ('a"b', "letters, digits"),
        (".".join("x" * 9), "at most 8"),
    ]:
        with pytest.raises(InvalidQueryError, match=message):
            parse_path(bad)
    with pytest.raises(InvalidQueryError):
        parse_path(5)


# -- filters -------------------------------------------------------------------------


def test_filter_ast() -> None:
    a, b = Path(("a",)), Path(("b", "c"))
    assert parse_filter(None) == MatchAll()
    assert parse_filter({}) == MatchAll()
    assert parse_filter({"a": 1}) == Compare(a, "eq", 1)
    assert parse_filter({"a": {"$gt": 1, "$lte": 5}}) == And(
        (Compare(a, "gt", 1), Compare(a, "lte", 5))
    )
    assert parse_filter({"a": {"$ne": None}}) == Not(Compare(a, "eq", None))
    assert parse_filter({"b.c": {"$nin": [1, "x"]}}) == Not(In(b, (1, "x")))
    assert parse_filter({"a": {"$exists": False}}) == Not(Exists(a))
    assert parse_filter({"$nor": [{"a": 1}]}) == Not(Or((Compare(a, "eq", 1),)))
    assert parse_filter({"a": {"$not": {"$in": []}}}) == Not(In(a, ()))
    assert parse_filter({"a": {"x": 1}}) == Compare(a, "eq", {"x": 1})  # a literal object


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ({"a": {"$regex": "x"}}, "unknown operator '\\$regex'"),
        ({"$where": "1"}, "unknown top-level operator '\\$where'"),
        ({"$not": {"a": 1}}, "use it on a field"),
        ({"$and": {"a": 1}}, "non-empty list"),
        ({"$or": []}, "non-empty list"),
        ({"$or": [5]}, "must be a dict"),
        ({"a": {"$in": (1, 2)}}, "takes a list"),
        ({"a": {"$lt": True}}, "number or a string"),
        ({"a": {"$gte": {"x": 1}}}, "number or a string"),
        ({"a": {"$exists": None}}, "true or false"),
        ({"a": {"$not": {"b": 1}}}, "operators only"),
        ({"a": {"$eq": float("nan")}}, "NaN"),
        ({"a": {"$eq": 2**64}}, "64-bit"),
        ({"a": {"$eq": b"bytes"}}, "not a JSON type"),
        ({"a": {"b": {"$gt": 1}}}, "marks operators"),
    ],
)
def test_malformed_filters(flt: Any, message: str) -> None:
    with pytest.raises(InvalidQueryError, match=message):
        parse_filter(flt)


def test_evaluator_semantics() -> None:
    doc = {
        "n": 1,
        "s": "x",
        "t": True,
        "z": None,
        "arr": [1, [2, 3], {"k": 4}],
        "objs": [{"k": 1, "deep": [{"m": 2}]}, {"k": [5, 6]}],
        "obj": {"k": {"m": 3}},
    }
    truths = [
        {"n": 1.0},
        {"n": {"$gte": 1, "$lt": 1.5}},
        {"t": True},
        {"z": None},
        {"missing": None},
        {"arr": 1},
        {"arr": [2, 3]},
        {"arr": {"k": 4}},
        {"arr.k": 4},
        {"objs.k": 6},
        {"objs.deep.m": 2},
        {"obj.k.m": {"$in": [0, 3]}},
        {"s": {"$gt": "W"}},
        {"$or": [{"n": 2}, {"s": "x"}]},
        {"n": {"$not": {"$gt": 1}}},
        {"missing": {"$ne": 1}},
    ]
    falsehoods = [
        {"n": True},
        {"t": 1},
        {"n": "1"},
        {"s": {"$gt": 0}},
        {"n": {"$lt": "z"}},
        {"z": {"$ne": None}},
        {"arr": 2},  # an array inside an array is not searched
        {"arr": [1]},
        {"obj": {"k": {}}},
        {"missing": {"$exists": True}},
        {"arr.k": {"$exists": False}},
        {"$nor": [{"n": 1}]},
    ]
    for flt in truths:
        assert matches(parse_filter(flt), doc), flt
    for flt in falsehoods:
        assert not matches(parse_filter(flt), doc), flt


def test_json_equality() -> None:
    assert json_equal({"a": [1, {"b": 2.0}]}, {"a": [1.0, {"b": 2}]})
    assert not json_equal(1, True)
    assert not json_equal(0, False)
    assert not json_equal([1, 2], [2, 1])
    assert not json_equal({"a": 1}, {"a": 1, "b": None})


def test_sort_parsing() -> None:
    assert [(str(k.path), k.descending) for k in parse_sort([("a", 1), ("b.c", -1)])] == [
        ("a", False),
        ("b.c", True),
    ]
    for bad in ["a", {"a": 1}, [("a",)], [("a", 2)], [("a", True)], [("a", 1), ("a", -1)]]:
        with pytest.raises(InvalidQueryError):
            parse_sort(bad)


# -- documents and updates -----------------------------------------------------------


def test_prepare_document_copies_and_orders() -> None:
    source = {"b": [1], "_id": "x"}
    prepared = prepare_document(source)
    assert list(prepared) == ["_id", "b"]
    prepared["b"].append(2)
    assert source == {"b": [1], "_id": "x"}
    generated = prepare_document({"a": 1})
    assert isinstance(generated["_id"], str) and len(generated["_id"]) == 32
    for bad in [{"a": float("inf")}, {"$set": 1}, {"_id": 5}, {"a": "\ud800"}, {"a": "\x00"}]:
        with pytest.raises(InvalidValueError):
            prepare_document(bad)


def test_apply_update() -> None:
    doc = {"_id": "1", "a": {"b": 1}, "n": 1, "l": [1]}
    new = apply_update(
        doc,
        parse_update(
            {
                "$set": {"a.c.d": "x"},
                "$inc": {"n": 0.5, "m": 2},
                "$push": {"l": {"$each": [2, 3]}, "q": None},
                "$unset": {"a.b": ""},
            }
        ),
    )
    assert new == {
        "_id": "1",
        "a": {"c": {"d": "x"}},
        "n": 1.5,
        "m": 2,
        "l": [1, 2, 3],
        "q": [None],
    }
    assert doc == {"_id": "1", "a": {"b": 1}, "n": 1, "l": [1]}  # untouched
    with pytest.raises(InvalidValueError, match="holds"):
        apply_update(doc, parse_update({"$set": {"a.b.c": 1}}))
    with pytest.raises(InvalidValueError, match="not a number"):
        apply_update(doc, parse_update({"$inc": {"a": 1}}))
    with pytest.raises(InvalidValueError, match="not an array"):
        apply_update(doc, parse_update({"$push": {"n": 1}}))
    with pytest.raises(InvalidValueError, match="overflows"):
        apply_update({"n": 2**63 - 1}, parse_update({"$inc": {"n": 1}}))
    with pytest.raises(InvalidQueryError, match="conflict"):
        parse_update({"$set": {"a.b": 1}, "$unset": {"a": ""}})
    with pytest.raises(InvalidQueryError, match="_id"):
        parse_update({"$unset": {"_id": ""}})
    with pytest.raises(InvalidQueryError, match="unknown update operator '\\$rename'"):
        parse_update({"$rename": {"a": "b"}})


def test_projection() -> None:
    doc = {"_id": "1", "a": 1, "b": {"c": 2, "d": 3}, "l": [{"c": 1, "x": 0}, 5, {"x": 1}]}
    assert project(doc, parse_projection(["a", "b.c"])) == {"_id": "1", "a": 1, "b": {"c": 2}}
    assert project(doc, parse_projection({"l.c": 1, "_id": 0})) == {"l": [{"c": 1}, {}]}
    assert project(doc, parse_projection({"b.d": 0, "l.x": 0})) == {
        "_id": "1",
        "a": 1,
        "b": {"c": 2},
        "l": [{"c": 1}, 5, {}],
    }
    assert project(doc, parse_projection({"_id": 0})) == {
        k: v for k, v in doc.items() if k != "_id"
    }
    assert project(doc, parse_projection({"_id": 1})) == {"_id": "1"}
    assert parse_projection([]) is None and parse_projection(None) is None
    for bad in [{"a": 1, "b": 0}, {"a": "yes"}, ["a", "a.b"], "a", [5]]:
        with pytest.raises(InvalidQueryError):
            parse_projection(bad)


# -- the compilers ---------------------------------------------------------------------


def test_values_become_parameters_never_sql() -> None:
    hostile = "'); DROP TABLE t; --"
    flt = parse_filter({"a": hostile, "b": {"$in": [hostile, 1]}, "c": {"$gt": hostile}})
    for compile_filter in (_sqlite_sql.compile_filter, _postgres_sql.compile_filter):
        where, params = compile_filter(flt)
        assert "DROP" not in where
        assert any(hostile in str(v) for v in params.values())


def test_encode_positional_floats() -> None:
    assert encode({"a": 1e20}) == '{"a":1e+20}'
    assert encode({"a": [1e20, 1.5e-7, 2.5]}, positional_floats=True) == (
        '{"a":[100000000000000000000.0,0.00000015,2.5]}'
    )
