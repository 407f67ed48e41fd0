"""The social graph: users follow users; friends of friends, recommendations and
shortest paths are graph queries (the seed's Neo4j example)."""

from __future__ import annotations

from typing import Any, Final

from multistore.errors import InvalidValueError
from multistore.service._accounts import User
from multistore.service._instruments import Instruments
from multistore.stores.graph import GraphStore

__all__ = ["Social"]

LABEL: Final = "User"
FOLLOWS: Final = "FOLLOWS"


def _names(nodes: list[Any]) -> list[str]:
    return sorted(str(node.get("username")) for node in nodes)


class Social:
    def __init__(self, graph: GraphStore, *, instruments: Instruments) -> None:
        self.graph = graph
        self.instruments = instruments

    async def add_user(self, user: User) -> None:
        with self.instruments.store_op("social", "create_node"):
            await self.graph.create_node(LABEL, user.id, {"username": user.username})

    async def follow(self, user: User, other: User) -> None:
        if user.id == other.id:
            raise InvalidValueError("username: a user cannot follow themselves")
        await self.add_user(user)
        await self.add_user(other)
        with self.instruments.store_op("social", "create_relationship"):
            await self.graph.create_relationship(LABEL, user.id, FOLLOWS, LABEL, other.id)

    async def view(self, user: User) -> dict[str, Any]:
        """Whom the user follows, who follows them, friends of friends and
        recommendations (users followed by the people they follow, ranked by how
        many of their connections know them)."""
        await self.add_user(user)
        with self.instruments.store_op("social", "neighbors"):
            following = await self.graph.neighbors(LABEL, user.id, FOLLOWS, "out")
            followers = await self.graph.neighbors(LABEL, user.id, FOLLOWS, "in")
        with self.instruments.store_op("social", "friends_of_friends"):
            fof = await self.graph.friends_of_friends(LABEL, user.id, FOLLOWS)
        with self.instruments.store_op("social", "recommend"):
            recommended = await self.graph.recommend(LABEL, user.id, FOLLOWS, k=5)
        return {
            "following": _names(following),
            "followers": _names(followers),
            "friends_of_friends": _names(fof),
            "recommendations": [
                {"username": str(node.get("username")), "common": count}
                for node, count in recommended
            ],
        }

    async def path(self, user: User, other: User) -> list[str] | None:
        await self.add_user(user)
        await self.add_user(other)
        with self.instruments.store_op("social", "shortest_path"):
            nodes = await self.graph.shortest_path(LABEL, user.id, LABEL, other.id, FOLLOWS)
        return None if nodes is None else [str(node.get("username")) for node in nodes]
