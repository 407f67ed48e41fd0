"""The core stays pure: no I/O imports, and its public names match ``__all__``.

Like trio's ``_core``, ``multistore.core`` must not reach the outside world: time comes in
as an injected callable, nothing touches files, sockets, threads or drivers, and it
imports no other part of multistore except the error tree.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import multistore.core

CORE = Path(multistore.core.__file__).parent
ALLOWED = {
    "__future__",
    "abc",
    "bisect",
    "collections",
    "dataclasses",
    "enum",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "json",
    "math",
    "operator",
    "re",
    "typing",
    "multistore.errors",
    "multistore.core",
}
MODULES = sorted(CORE.rglob("*.py"))


def imported_modules(tree: ast.AST, module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the package
                base = module.rsplit(".", node.level)[0]
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                assert node.module is not None
                names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            names.add("__import__")  # dynamic imports are not allowed either
    return names


def allowed(name: str) -> bool:
    return any(name == ok or name.startswith(ok + ".") for ok in ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_core_module_imports_only_pure_modules(path: Path) -> None:
    module = "multistore.core." + path.stem if path.stem != "__init__" else "multistore.core"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = sorted(name for name in imported_modules(tree, module) if not allowed(name))
    assert not bad, f"{path.name} imports {bad}; the core must stay free of I/O"


def test_the_checker_catches_io_imports() -> None:
    tree = ast.parse("import os\nfrom asyncio import sleep\nimport multistore.stores\n")
    assert sorted(n for n in imported_modules(tree, "x") if not allowed(n)) == [
        "asyncio",
        "multistore.stores",
        "os",
    ]
    assert not allowed("time") and not allowed("socket") and not allowed("sqlite3")
    assert allowed("collections.abc") and allowed("multistore.core._hlc")


def test_all_matches_public_names() -> None:
    module = importlib.import_module("multistore.core")
    exported = set(module.__all__)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, type(importlib))
        and getattr(value, "__module__", "multistore.core").startswith("multistore.core")
    }
    # Everything defined in core is exported; re-exports (ClockSkewError lives in
    # multistore.errors) may be exported too, and every exported name exists.
    assert public <= exported
    assert all(hasattr(module, name) for name in exported)
    assert len(module.__all__) == len(exported)
