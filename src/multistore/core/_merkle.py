"""Merkle trees over ranges of the token ring, for anti-entropy.

The ring's 2**64 positions are cut into ``2**depth`` equal leaf ranges (a leaf is
the top ``depth`` bits of a token). A leaf's hash covers the keys in its range
and a digest of each stored record; a parent's hash covers its two children.
Two replicas with equal roots hold the same data; otherwise comparing the trees
from the root down finds the differing leaves while skipping every equal
subtree, and only those leaves' keys need to be exchanged. Cassandra uses a
fixed 2**15 leaves per range; here ``depth`` is chosen per repair, so a small
difference in a large range can be narrowed down to few keys.

Trees are sparse: an empty leaf (or subtree) has the empty hash ``""``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Final

from multistore.errors import InvalidValueError

__all__ = ["EMPTY", "MerkleTree", "leaf_hash", "leaf_of"]

EMPTY: Final = ""
_TOKEN_BITS: Final = 64


def leaf_of(token: int, depth: int) -> int:
    """The leaf (0 .. 2**depth - 1) that holds a token."""
    return token >> (_TOKEN_BITS - depth) if depth else 0


def leaf_hash(entries: Iterable[tuple[str, str]]) -> str:
    """Hash of a leaf from its ``(entry name, record digest)`` pairs in entry order.

    The same text is hashed by the Redis nodes' Lua script:
    ``sha1(name .. "=" .. digest .. "\\n" for each entry)``.
    """
    sha = hashlib.sha1(usedforsecurity=False)
    empty = True
    for name, digest in entries:
        sha.update(f"{name}={digest}\n".encode())
        empty = False
    return EMPTY if empty else sha.hexdigest()


def _combine(left: str, right: str) -> str:
    if not left and not right:
        return EMPTY
    return hashlib.sha1(f"{left}|{right}".encode(), usedforsecurity=False).hexdigest()


class MerkleTree:
    """A binary hash tree over ``2**depth`` leaves, built from the non-empty leaves."""

    __slots__ = ("_depth", "_levels")

    def __init__(self, depth: int, leaves: Mapping[int, str]) -> None:
        if type(depth) is not int or not 0 <= depth <= 24:
            raise InvalidValueError(f"a Merkle tree depth must be an int in [0, 24], got {depth!r}")
        level: dict[int, str] = {}
        for index, digest in leaves.items():
            if type(index) is not int or not 0 <= index < 2**depth:
                raise InvalidValueError(f"leaf {index!r} is outside a tree of depth {depth}")
            if digest:
                level[index] = digest
        levels = [level]
        for _ in range(depth):
            parents: dict[int, str] = {}
            for index in {i >> 1 for i in level}:
                digest = _combine(level.get(2 * index, EMPTY), level.get(2 * index + 1, EMPTY))
                if digest:
                    parents[index] = digest
            level = parents
            levels.append(level)
        levels.reverse()  # levels[0] is the root level, levels[depth] the leaves
        self._depth = depth
        self._levels = levels

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def root(self) -> str:
        return self._levels[0].get(0, EMPTY)

    def node(self, level: int, index: int) -> str:
        """The hash at ``level`` (0 = root) and ``index``; ``""`` for an empty subtree."""
        return self._levels[level].get(index, EMPTY)

    def leaves(self) -> dict[int, str]:
        return dict(self._levels[self._depth])

    def diff(self, other: MerkleTree) -> list[int]:
        """The leaves whose hashes differ, found top-down (equal subtrees are skipped)."""
        if other.depth != self._depth:
            raise InvalidValueError(
                f"cannot compare Merkle trees of depth {self._depth} and {other.depth}"
            )
        frontier = [0] if self.root != other.root else []
        for level in range(1, self._depth + 1):
            children = [child for index in frontier for child in (2 * index, 2 * index + 1)]
            frontier = [c for c in children if self.node(level, c) != other.node(level, c)]
        return sorted(frontier)

    def __repr__(self) -> str:
        return f"MerkleTree(depth={self._depth}, root={self.root[:12]!r})"
