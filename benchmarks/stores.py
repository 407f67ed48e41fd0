"""``multistore bench stores``: each data model's common single-key/single-row
operations through multistore against the same operation through the raw driver."""

from __future__ import annotations

import importlib

from benchmarks._harness import BenchEnv, Row

MODELS = ("kv", "document", "search", "relational", "graph", "widecolumn", "timeseries")


async def run() -> list[Row]:
    env = BenchEnv()
    rows: list[Row] = []
    try:
        for model in MODELS:
            module = importlib.import_module(f"benchmarks.stores_{model}")
            rows.extend(await module.cases(env))
    finally:
        env.close()
    return rows
