"""Run ``multistore quorum add-node`` (the command's own code) on a ``quorum://`` URL and
SIGKILL this process once nodes have forgotten COUNT records of ranges they lost (the
join's cleanup, after the ring switched).

Usage: ``python -m tests.replication.quorum_join_kill_script URL COUNT``. Prints what
the command prints until it is killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from multistore.cli._quorum import run_membership
from multistore.replication._qnodes import SQLiteNode

_remove = SQLiteNode.remove


_removed = [0]


async def _remove_then_die(self: SQLiteNode, *args: Any, **kwargs: Any) -> bool:
    removed = await _remove(self, *args, **kwargs)
    _removed[0] += removed
    if _removed[0] >= int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    return removed


if __name__ == "__main__":
    SQLiteNode.remove = _remove_then_die  # type: ignore[method-assign]
    asyncio.run(
        run_membership(None, url=sys.argv[1], action="add", name=None, node_url=None, quiet=False)
    )
