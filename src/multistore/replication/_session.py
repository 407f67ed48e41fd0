"""Sessions: reads that see the session's own writes, through a router."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from multistore.replication._nodes import RoutedTransaction
from multistore.replication._token import CausalToken
from multistore.stores.relational import Params, Row

if TYPE_CHECKING:
    from multistore.replication._router import Router

__all__ = ["Session"]


class Session:
    """Reads that see the session's own writes: the token of each write is kept and
    passed to later reads. ``str(session.token)`` travels in a cookie or header;
    ``router.session(token_string)`` picks it up in another process."""

    def __init__(self, router: Router, token: CausalToken | str | None = None) -> None:
        self.router = router
        self.token = CausalToken.parse(token) if isinstance(token, str) else token

    def _saw(self, token: CausalToken | None) -> None:
        if token is not None:
            self.token = token.later(self.token)

    async def execute(self, sql: str, params: Params | None = None) -> int:
        result = await self.router.execute(sql, params)
        self._saw(result.token)
        return result.rowcount

    async def executemany(self, sql: str, seq_of_params: Sequence[Params]) -> int:
        result = await self.router.executemany(sql, seq_of_params)
        self._saw(result.token)
        return result.rowcount

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[RoutedTransaction]:
        async with self.router.transaction() as tx:
            yield tx
        self._saw(tx.token)

    async def fetch_all(
        self,
        sql: str,
        params: Params | None = None,
        *,
        max_staleness: float | None = None,
        strong: bool = False,
    ) -> list[Row]:
        rows, written = await self.router._read(
            sql, lambda q: q.fetch_all(sql, params), self.token, max_staleness, strong, None
        )
        self._saw(written)
        return rows

    async def fetch_one(
        self,
        sql: str,
        params: Params | None = None,
        *,
        max_staleness: float | None = None,
        strong: bool = False,
    ) -> Row | None:
        row, written = await self.router._read(
            sql, lambda q: q.fetch_one(sql, params), self.token, max_staleness, strong, None
        )
        self._saw(written)
        return row

    async def fetch_val(
        self,
        sql: str,
        params: Params | None = None,
        *,
        max_staleness: float | None = None,
        strong: bool = False,
    ) -> Any:
        row = await self.fetch_one(sql, params, max_staleness=max_staleness, strong=strong)
        return None if row is None else row[0]
