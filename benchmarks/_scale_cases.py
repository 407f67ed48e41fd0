"""Every case of ``multistore bench scale`` by its id, and the module that defines it
(a case's process imports only that module: the store engines or the logs)."""

from __future__ import annotations

import importlib

from benchmarks._scale_types import Case

MODULES = ("_scale_stores", "_scale_logs")


def load(module: str) -> dict[str, Case]:
    """The cases of one module, by id."""
    if module not in MODULES:
        raise KeyError(module)
    cases: list[Case] = importlib.import_module(f"benchmarks.{module}").CASES
    return {case.id: case for case in cases}


def all_cases() -> dict[str, tuple[str, Case]]:
    """Every case by id, with its module."""
    return {cid: (module, case) for module in MODULES for cid, case in load(module).items()}
