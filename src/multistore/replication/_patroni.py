"""The router following Patroni: PostgreSQL high availability that Patroni decides.

:class:`PatroniRouter` is a :class:`~multistore.replication.Router` whose topology
comes from Patroni's REST API (``GET /cluster`` on any member) instead of our own
failover: Patroni (with etcd) detects a dead leader, elects and promotes another and
rejoins the old one as a replica; the router only follows.

- At open, the members Patroni lists become the router's nodes (named as in
  Patroni), the leader first; the URL given is the template for user, password,
  database and options, its host is replaced by each member's.
- Every probe round (``RouterConfig.probe_interval``) asks Patroni who leads. When
  the leader changed and has left the old PostgreSQL timeline, the router adopts it:
  the new leader is the primary, its timeline history is read from it, the others
  (the former leader too) go out of rotation until a probe shows them replaying
  again. A write that was running on the former leader fails with
  :class:`~multistore.replication.FailoverError` (indeterminate), as after our own
  failover. The router's own automatic failover is off: Patroni decides.
- Read-your-writes across a failover: causal tokens carry the PostgreSQL timeline, as
  with our own failover. A token of the old timeline at or before the position where
  the new timeline forked off names a write the new leader has, and reads wait for it
  as usual; a token past it names a write the new leader may not have (acknowledged
  by the old leader, never replicated), so the read raises
  :class:`~multistore.replication.ForkedTokenError` instead of answering without it.
  In Patroni's synchronous mode that cannot happen to an acknowledged write.
- :meth:`PatroniRouter.failover` asks Patroni for a switchover (``POST
  /switchover``) and waits until the new leader is adopted.

Our own ``_failover.py`` stays for plain streaming replicas without Patroni.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Self

from multistore._http import HttpError, http_json
from multistore.errors import (
    InvalidURLError,
    MultistoreError,
    Outcome,
    StoreUnavailableError,
    UsageError,
)
from multistore.replication._config import RouterConfig, bounded
from multistore.replication._errors import FailoverFailedError
from multistore.replication._nodes import Role
from multistore.replication._policies import ReadPolicy
from multistore.replication._router import Router
from multistore.urls import parse_url

__all__ = ["PatroniRouter", "PatroniSource"]


class PatroniSource:
    """Patroni's REST API on several members: each call goes to the first that answers."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 2.0) -> None:
        if not endpoints:
            raise UsageError("following Patroni needs at least one REST API endpoint")
        self.endpoints = list(endpoints)
        self.timeout = timeout

    async def _ask(
        self, method: str, path: str, body: Any = None, *, deadline: float | None = None
    ) -> tuple[str, int, Any]:
        """The first answer of the endpoints, in order. A request that may have reached
        one (no answer in time) is not sent to the next: a ``POST`` is not idempotent
        (a switchover done, its answer lost, is refused by the new leader)."""
        errors = []
        for address in self.endpoints:
            try:
                status, reply = await http_json(
                    method, address, path, body, deadline=deadline or self.timeout
                )
            except HttpError as exc:
                if exc.sent and method != "GET":
                    raise StoreUnavailableError(
                        f"Patroni {method} {path} on {address}: {exc}",
                        outcome=Outcome.INDETERMINATE,
                    ) from exc
                errors.append(str(exc))
                continue
            return address, status, reply
        raise StoreUnavailableError(
            f"no Patroni REST API answered: {'; '.join(errors)}", outcome=Outcome.DEFINITE
        )

    async def members(self) -> list[dict[str, Any]]:
        """``GET /cluster``'s members (name, role, state, host, port, timeline, …)."""
        _, status, reply = await self._ask("GET", "/cluster")
        if status != 200 or not isinstance(reply, dict):
            raise StoreUnavailableError(f"Patroni GET /cluster answered {status}")
        members = reply.get("members", [])
        return [m for m in members if isinstance(m, dict) and "name" in m]

    async def switchover(self, leader: str, candidate: str | None) -> None:
        body: dict[str, Any] = {"leader": leader}
        if candidate is not None:
            body["candidate"] = candidate
        # Patroni answers once the new leader runs: seconds, more under load.
        _, status, reply = await self._ask("POST", "/switchover", body, deadline=60.0)
        if status != 200:
            raise FailoverFailedError(f"Patroni refused the switchover ({status}): {reply}")


def _leader(members: list[dict[str, Any]]) -> dict[str, Any] | None:
    for member in members:
        if member.get("role") == "leader" and member.get("state") == "running":
            return member
    return None


class PatroniRouter(Router):
    """A :class:`Router` over a Patroni cluster. Open with :meth:`open_patroni`."""

    patroni: PatroniSource | None = None

    @classmethod
    async def open_patroni(
        cls,
        endpoints: Sequence[str],
        url: str,
        *,
        policy: ReadPolicy | None = None,
        config: RouterConfig | None = None,
        patroni_timeout: float = 2.0,
    ) -> Self:
        """A router over the members Patroni lists. ``endpoints``: ``host:port`` of
        Patroni REST APIs (any, several for safety); ``url``: a ``postgresql://`` URL
        whose user, password, database and options every member's connection takes;
        ``patroni_timeout``: seconds for each REST call."""
        template = parse_url(url)
        if template.scheme != "postgresql":
            raise InvalidURLError(f"a Patroni router takes a postgresql:// URL, not {url!r}")
        source = PatroniSource(endpoints, timeout=patroni_timeout)
        members = await source.members()
        leader = _leader(members)
        if leader is None:
            raise StoreUnavailableError("Patroni names no running leader; retry when it has one")
        ordered = sorted(members, key=lambda m: m["name"] != leader["name"])
        urls = [
            parse_url(template, hosts=[(str(m["host"]), int(m["port"]))]).render(
                hide_password=False
            )
            for m in ordered
        ]
        config = dataclasses.replace(config or RouterConfig(), auto_failover=False)
        router = await cls.open(
            urls[0], urls[1:], policy=policy, config=config, names=[m["name"] for m in ordered]
        )
        router.patroni = source
        return router

    # -- following -------------------------------------------------------------------

    async def refresh(self, *, initial: bool = False) -> None:
        if self.patroni is not None and not initial and not self.failing_over:
            with contextlib.suppress(StoreUnavailableError):
                await self.follow()
        await super().refresh(initial=initial)

    async def follow(self) -> bool:
        """Ask Patroni who leads and adopt a new leader once it runs on a new timeline;
        True when the leader changed."""
        assert self.patroni is not None
        member = _leader(await self.patroni.members())
        current = next((n for n in self.nodes if n.role is Role.PRIMARY), None)
        if member is None or (current is not None and current.name == member["name"]):
            return False
        leader = str(member["name"])
        try:
            new = self.node(leader)
        except UsageError:
            return False  # a member added after open: not ours to route to
        try:
            history = await bounded(self.backend.timeline(new), self.config.probe_timeout)
        except (MultistoreError, TimeoutError):
            return False  # not answering yet: adopt it next round
        if history.id <= self.history.id:
            return False  # Patroni named it, its promotion has not finished: next round
        async with self.failover_lock:
            now = time.monotonic()
            if current is not None:
                current.role = Role.REPLICA  # Patroni rejoins it (pg_rewind) as a replica
                current.health.eject(f"no longer Patroni's leader ({leader} is)", now)
            new.role = Role.PRIMARY
            new.health.admit()
            new.timeline = history.id
            self.history = history
            self.history_pending = None
            for node in self.replicas:
                if node.health.in_rotation:
                    node.health.suspend()  # until a probe shows it follows the new leader
            self.tracker.reset()
            self.primary_failures = 0
        return True

    async def failover(self, candidate: str | None = None, *, within: float = 60.0) -> str:
        """A planned switchover through Patroni (``POST /switchover``), optionally to
        ``candidate``; waits until the router has adopted the new leader; its name.
        When ``candidate`` leads already (the leader Patroni names is adopted first),
        nothing is asked of Patroni and its name is returned."""
        assert self.patroni is not None
        # The leader Patroni names now: an earlier switchover whose answer was an error
        # (503 under load) may have run all the same, and Patroni refuses (412) one
        # that names a member that is no longer the leader.
        with contextlib.suppress(StoreUnavailableError):
            await self.follow()
        old = self.primary.name
        if candidate is not None and candidate == old:
            # Leads already (a retry after such a switchover): Patroni would refuse one
            # from a member to itself.
            return old
        try:
            await self.patroni.switchover(old, candidate)
        except StoreUnavailableError as exc:
            if exc.definite:
                raise
            # Sent, its answer lost: Patroni may be switching over; the wait below tells.
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(StoreUnavailableError):
                if await self.follow():
                    break
            if time.monotonic() > deadline:
                raise FailoverFailedError(f"Patroni named no new leader within {within:g} s")
            await asyncio.sleep(0.1)
        return self.primary.name
