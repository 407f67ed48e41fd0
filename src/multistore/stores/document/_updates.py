"""Documents in and out: checking, update operators and projection (pure: no I/O).

Update operators (an update applies all of them, or fails and changes nothing):

- ``$set {path: value}``: set a field; missing objects on a dotted path are created.
  Setting *through* an array or a scalar is an :class:`InvalidValueError`.
- ``$unset {path: ""}``: remove a field; a missing one is left alone.
- ``$inc {path: number}``: add to a number; a missing field starts at 0. A field
  that holds anything but a number is an :class:`InvalidValueError`.
- ``$push {path: value}`` or ``{path: {"$each": [values]}}``: append to an array,
  creating it when missing; a field that is not an array is an
  :class:`InvalidValueError`.

Two operators on the same path, or on a path and its prefix (``a`` and ``a.b``), are
an :class:`InvalidQueryError`, as in MongoDB; so is any change to ``_id``.

Projection: a list of paths (``["name", "specs.cpu"]``) or a dict of ``1`` for the
fields to keep, or a dict of ``0`` for the fields to drop. ``_id`` is kept unless
``{"_id": 0}`` says otherwise. Paths into arrays apply to each object in the array.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from multistore.errors import InvalidQueryError, InvalidValueError
from multistore.stores._limits import short_repr
from multistore.stores.document._values import (
    INT64_MAX,
    INT64_MIN,
    Path,
    check_value,
    copy_value,
    kind,
    parse_path,
)

__all__ = [
    "ID",
    "Shape",
    "UpdateOp",
    "apply_update",
    "check_collection",
    "check_id",
    "new_id",
    "parse_projection",
    "parse_update",
    "prepare_document",
    "project",
]

#: The field that holds a document's id.
ID: Final = "_id"
_ID_MAX: Final = 512
_COLLECTION: Final = re.compile(r"[a-z][a-z0-9_]{0,47}")
_UPDATE_OPS: Final = ("$set", "$unset", "$inc", "$push")


def check_collection(name: object) -> str:
    """A valid collection name: lowercase letter, then lowercase letters, digits, ``_``."""
    if not isinstance(name, str) or not _COLLECTION.fullmatch(name):
        raise InvalidValueError(
            f"bad collection name {short_repr(name)}: use a lowercase letter followed by up to 47 "
            "lowercase letters, digits or '_' (e.g. 'products', 'user_profiles')"
        )
    return name


def check_id(doc_id: object) -> str:
    """A valid document id: a non-empty string of at most 512 characters."""
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidValueError(f"bad document id {short_repr(doc_id)}: ids are non-empty strings")
    if len(doc_id) > _ID_MAX:
        raise InvalidValueError(f"document id is longer than {_ID_MAX} characters")
    check_value(doc_id, "document id", InvalidValueError)
    return doc_id


def new_id() -> str:
    """A fresh random id (32 hex digits)."""
    return uuid.uuid4().hex


def prepare_document(doc: object, doc_id: str | None = None) -> dict[str, Any]:
    """A checked copy of ``doc`` with ``_id`` first: the given id, the doc's own, or a new one.

    With ``doc_id`` given (replace), a different ``_id`` in the document is an error.
    """
    if not isinstance(doc, Mapping):
        raise InvalidValueError(f"a document must be a dict, not {type(doc).__name__}")
    if doc_id is not None:
        if ID in doc and doc[ID] != doc_id:
            raise InvalidValueError(
                f"the document's _id {short_repr(doc[ID])} differs from the id "
                f"{short_repr(doc_id)} it replaces"
            )
        final = doc_id
    else:
        final = check_id(doc[ID]) if ID in doc else new_id()
    body = {k: v for k, v in doc.items() if k != ID}
    check_value(body, f"document {short_repr(final)}", InvalidValueError)
    return {ID: final, **copy_value(body)}


# -- updates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateOp:
    op: str
    path: Path
    value: Any = None
    """``$set``: the new value; ``$inc``: the increment; ``$push``: a tuple of items."""


def parse_update(raw: object) -> tuple[UpdateOp, ...]:
    """The operations of an update dict; :class:`InvalidQueryError` if malformed."""
    if not isinstance(raw, Mapping) or not raw:
        raise InvalidQueryError(
            "an update is a non-empty dict of operators, e.g. {'$set': {'price': 9.99}}"
        )
    ops: list[UpdateOp] = []
    for op, fields in raw.items():
        if not isinstance(op, str) or not op.startswith("$"):
            raise InvalidQueryError(
                f"update key {short_repr(op)} is not an operator; use replace() to replace a "
                f"whole document, or one of {', '.join(_UPDATE_OPS)}"
            )
        if op not in _UPDATE_OPS:
            raise InvalidQueryError(
                f"unknown update operator {short_repr(op)}; known: {', '.join(_UPDATE_OPS)}"
            )
        if not isinstance(fields, Mapping) or not fields:
            raise InvalidQueryError(f"{op} takes a non-empty dict of {{path: value}}")
        for raw_path, value in fields.items():
            path = parse_path(raw_path, where=f"{op}")
            if path.segments[0] == ID:
                raise InvalidQueryError(f"{op} on {short_repr(raw_path)}: _id cannot be changed")
            ops.append(UpdateOp(op, path, _operand(op, path, value)))
    for i, a in enumerate(ops):
        for b in ops[i + 1 :]:
            if a.path.overlaps(b.path):
                raise InvalidQueryError(
                    f"update paths {short_repr(str(a.path))} ({a.op}) and "
                    f"{short_repr(str(b.path))} ({b.op}) "
                    "conflict: one is, or contains, the other"
                )
    return tuple(ops)


def _operand(op: str, path: Path, value: object) -> Any:
    where = f"{op} value for {short_repr(str(path))}"
    if op == "$unset":
        return None
    if op == "$inc":
        if kind(value) != "number":
            raise InvalidValueError(f"{where}: $inc takes a number, not {short_repr(value)}")
        check_value(value, where, InvalidValueError)
        return value
    if op == "$push":
        if isinstance(value, Mapping) and "$each" in value:
            if len(value) != 1:
                raise InvalidQueryError(f"{where}: only the $each modifier is supported")
            items = value["$each"]
            if not isinstance(items, list):
                raise InvalidQueryError(f"{where}: $each takes a list")
            check_value(items, where, InvalidValueError)
            return tuple(copy_value(items))
        check_value(value, where, InvalidValueError)
        return (copy_value(value),)
    check_value(value, where, InvalidValueError)
    return copy_value(value)


def apply_update(doc: Mapping[str, Any], ops: tuple[UpdateOp, ...]) -> dict[str, Any]:
    """A new document: ``doc`` with ``ops`` applied; ``doc`` itself is left untouched."""
    result: dict[str, Any] = copy_value(dict(doc))
    for op in ops:
        if op.op == "$unset":
            _unset(result, op.path)
            continue
        parent, key = _parent(result, op.path)
        current = parent.get(key, _ABSENT)
        where = f"{op.op} on {short_repr(str(op.path))}"
        if op.op == "$set":
            parent[key] = copy_value(op.value)
        elif op.op == "$inc":
            if current is _ABSENT:
                current = 0
            elif kind(current) != "number":
                raise InvalidValueError(
                    f"{where}: the field holds {short_repr(current)}, not a number"
                )
            parent[key] = _add(current, op.value, where)
        else:
            if current is _ABSENT:
                parent[key] = copy_value(list(op.value))
            elif isinstance(current, list):
                current.extend(copy_value(list(op.value)))
            else:
                raise InvalidValueError(
                    f"{where}: the field holds {short_repr(current)}, not an array"
                )
    check_value(result, f"updated document {short_repr(doc.get(ID))}", InvalidValueError)
    return result


_ABSENT: Final = object()


def _parent(doc: dict[str, Any], path: Path) -> tuple[dict[str, Any], str]:
    """The object that holds the last segment, creating missing objects on the way."""
    node = doc
    for i, segment in enumerate(path.segments[:-1]):
        child = node.get(segment, _ABSENT)
        if child is _ABSENT:
            child = node[segment] = {}
        elif not isinstance(child, dict):
            at = ".".join(path.segments[: i + 1])
            raise InvalidValueError(
                f"cannot create {short_repr(str(path))}: {short_repr(at)} holds "
                f"{kind(child)} {short_repr(child)}, not an object"
            )
        node = child
    return node, path.segments[-1]


def _unset(doc: dict[str, Any], path: Path) -> None:
    node: Any = doc
    for segment in path.segments[:-1]:
        node = node.get(segment) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path.segments[-1], None)


def _add(a: int | float, b: int | float, where: str) -> int | float:
    total = a + b
    if isinstance(total, int) and not INT64_MIN <= total <= INT64_MAX:
        raise InvalidValueError(f"{where}: the result {total} overflows 64-bit integers")
    if isinstance(total, float) and not math.isfinite(total):
        raise InvalidValueError(f"{where}: the result is not a finite number")
    return total


# -- projection ------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """A parsed projection."""

    include: bool
    """Keep only the named paths (True) or drop them (False)."""
    keep_id: bool
    tree: Mapping[str, Any] = field(default_factory=dict)
    """Nested dict of segments; ``True`` marks the end of a path."""


def parse_projection(raw: object) -> Shape | None:
    """A projection from a list of paths or a ``{path: 0 | 1}`` dict (None: whole docs)."""
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        flags: dict[str, bool] = {}
        for key, value in raw.items():
            if isinstance(value, bool) or value in (0, 1):
                flags[key] = bool(value)
            else:
                raise InvalidQueryError(f"projection value for {short_repr(key)} must be 0 or 1")
    elif isinstance(raw, list | tuple):
        for key in raw:
            if not isinstance(key, str):
                raise InvalidQueryError(
                    f"a projection path must be a string, not {short_repr(key)}"
                )
        flags = {key: True for key in raw}
    else:
        raise InvalidQueryError(
            f"projection takes a list of paths or a {{path: 0 or 1}} dict, not {short_repr(raw)}"
        )
    if not flags:
        return None
    keep_id = flags.pop(ID, True)
    if not flags:
        return Shape(include=keep_id, keep_id=keep_id)
    modes = set(flags.values())
    if len(modes) > 1:
        raise InvalidQueryError(
            "a projection either keeps fields (1) or drops them (0); only _id may differ"
        )
    paths = [parse_path(p, where="projection") for p in flags]
    tree: dict[str, Any] = {}
    for path in sorted(paths, key=lambda p: len(p.segments)):
        node = tree
        for segment in path.segments[:-1]:
            child = node.setdefault(segment, {})
            if child is True:
                raise InvalidQueryError(f"projection paths collide at {short_repr(str(path))}")
            node = child
        if path.segments[-1] in node:
            raise InvalidQueryError(f"projection paths collide at {short_repr(str(path))}")
        node[path.segments[-1]] = True
    return Shape(include=modes.pop(), keep_id=keep_id, tree=tree)


def project(doc: Mapping[str, Any], projection: Shape | None) -> dict[str, Any]:
    """``doc`` reduced by ``projection``."""
    if projection is None:
        return dict(doc)
    body = {k: v for k, v in doc.items() if k != ID}
    shaped = _keep(body, projection.tree) if projection.include else _drop(body, projection.tree)
    if projection.keep_id and ID in doc:
        return {ID: doc[ID], **shaped}
    return shaped


def _keep(obj: Mapping[str, Any], tree: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, sub in tree.items():
        if key not in obj:
            continue
        value = obj[key]
        if sub is True:
            out[key] = value
        elif isinstance(value, dict):
            out[key] = _keep(value, sub)
        elif isinstance(value, list):
            out[key] = [_keep(item, sub) for item in value if isinstance(item, dict)]
    return out


def _drop(obj: Mapping[str, Any], tree: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        sub = tree.get(key)
        if sub is True:
            continue
        if sub is None:
            out[key] = value
        elif isinstance(value, dict):
            out[key] = _drop(value, sub)
        elif isinstance(value, list):
            out[key] = [_drop(item, sub) if isinstance(item, dict) else item for item in value]
        else:
            out[key] = value
    return out
