"""The demo's multi-master cart scenario, resolved by each conflict strategy."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from multistore.service import partitioned_carts


def test_demo_reports_lww_merge_and_siblings(tmp_path: Path) -> None:
    report = asyncio.run(partitioned_carts(tmp_path / "demo"))
    a_edit = {"items": {"apple": 1, "pear": 2}}
    b_edit = {"items": {"apple": 3, "milk": 1}}
    assert all(report[s]["converged"] for s in ("lww", "merge", "siblings", "crdt_cart"))
    assert report["lww"]["kept"] in ([a_edit], [b_edit])
    assert len(report["lww"]["lost_versions"]) == 1
    assert report["merge"]["kept"] == [{"items": {"apple": 3, "milk": 1, "pear": 2}}]
    assert sorted(report["siblings"]["kept"], key=json.dumps) == sorted(
        [a_edit, b_edit], key=json.dumps
    )
    assert report["crdt_cart"]["kept"] == [{"apple": 3, "milk": 1, "pear": 2}]
    json.dumps(report)
