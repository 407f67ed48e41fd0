"""__all__ and the real public names stay in step (as httpx's test_exported_members)."""

from __future__ import annotations

import importlib

import pytest

import multistore

PACKAGES = [
    "multistore",
    "multistore.errors",
    "multistore.urls",
    "multistore.config",
    "multistore.stores",
    "multistore.stores.kv",
    "multistore.stores.document",
    "multistore.stores.search",
    "multistore.stores.relational",
    "multistore.stores.graph",
    "multistore.stores.widecolumn",
    "multistore.stores.timeseries",
    "multistore.sync",
    "multistore.core",
    "multistore.consistency",
    "multistore.replication",
    "multistore.service",
    "multistore.lab.servers",
    "multistore.lab.proxy",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_matches_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = set(module.__all__)
    is_package = hasattr(module, "__path__")
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and not isinstance(value, type(importlib))  # submodules are not exports
        and (
            getattr(value, "__module__", name).startswith("multistore")
            if is_package  # a package re-exports names defined in its private modules
            else getattr(value, "__module__", name) == name
        )
    }
    public -= {"annotations"}
    missing = public - exported
    assert not missing, f"{name}: public but not in __all__: {sorted(missing)}"
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names {attr}, which does not exist"


def test_top_level_all_is_unique() -> None:
    assert len(multistore.__all__) == len(set(multistore.__all__))
