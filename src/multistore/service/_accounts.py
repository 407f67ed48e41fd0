"""Users, sessions and profiles.

- Users (name, password hash, role) live in the orders database: the seed puts
  user auth in the relational store. Passwords are hashed with scrypt and a salt.
- Sessions live in the key-value store as the seed's example does
  (``session:<id>`` with a one-hour TTL); the key is a hash of the token, so the
  store never holds a token a reader could use.
- Profiles are documents of varying shape (collection ``profiles``, ``_id`` the
  user id), updated with Mongo-style operators and queried with Mongo-style filters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from multistore.errors import InvalidValueError
from multistore.service._errors import LoginFailedError, UsernameTakenError
from multistore.service._instruments import Instruments
from multistore.stores.document import DocumentStore
from multistore.stores.kv import KeyValueStore
from multistore.stores.relational import RelationalStore

__all__ = ["Accounts", "SessionInfo", "User"]

PROFILES: Final = "profiles"
_USERNAME: Final = re.compile(r"[a-z][a-z0-9_.-]{1,31}")
_SCRYPT: Final = {"n": 2**14, "r": 8, "p": 1}
_UPDATE_OPERATORS: Final = frozenset({"$set", "$unset", "$inc", "$push"})
_FIXED: Final = frozenset({"_id", "username", "user_id"})


@dataclass(frozen=True)
class User:
    """An authenticated user, as a session names it."""

    id: str
    username: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class SessionInfo:
    token: str
    user: User
    expires_in: float


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def _password_matches(password: str, stored: str) -> bool:
    try:
        _, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), **_SCRYPT)
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def check_username(name: str) -> str:
    if not _USERNAME.fullmatch(name):
        raise InvalidValueError(
            "username: 2 to 32 characters, a lower-case letter first, then lower-case "
            "letters, digits, '_', '.' or '-'"
        )
    return name


def _session_key(token: str) -> str:
    return "session:" + hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    """Users in ``users_db``, sessions in ``sessions``, profiles in ``profiles``."""

    def __init__(
        self,
        users_db: RelationalStore,
        sessions: KeyValueStore,
        profiles: DocumentStore,
        *,
        session_ttl: float,
        instruments: Instruments,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.users_db = users_db
        self.sessions = sessions
        self.profiles = profiles
        self.session_ttl = session_ttl
        self.instruments = instruments
        self.clock = clock

    async def setup(self) -> None:
        if PROFILES not in await self.profiles.collections():
            await self.profiles.create_collection(PROFILES)

    # -- users -------------------------------------------------------------------------

    async def register(
        self, username: str, password: str, profile: Mapping[str, Any], *, role: str = "user"
    ) -> User:
        """Create a user and their profile; :class:`UsernameTakenError` if the name is taken."""
        check_username(username)
        user = User("usr_" + uuid.uuid4().hex[:16], username, role)
        hashed = hash_password(password)
        with self.instruments.store_op("orders", "create_user"):
            async with self.users_db.transaction() as tx:
                if await tx.fetch_one(
                    "SELECT 1 FROM shop_users WHERE username = :name", {"name": username}
                ):
                    raise UsernameTakenError(f"username: {username!r} is taken")
                await tx.execute(
                    "INSERT INTO shop_users (id, username, password_hash, role, created_at) "
                    "VALUES (:id, :name, :hash, :role, :now)",
                    {
                        "id": user.id,
                        "name": username,
                        "hash": hashed,
                        "role": role,
                        "now": self.clock(),
                    },
                )
        document = {k: v for k, v in profile.items() if k not in _FIXED}
        with self.instruments.store_op("profiles", "insert"):
            await self.profiles.insert(PROFILES, {**document, "_id": user.id, "username": username})
        return user

    async def ensure_admin(self, username: str, password: str) -> None:
        """Create the admin user, or set its password and role if it exists."""
        row = await self.users_db.fetch_one(
            "SELECT id FROM shop_users WHERE username = :name", {"name": username}
        )
        if row is None:
            await self.register(username, password, {"display_name": "Operator"}, role="admin")
            return
        await self.users_db.execute(
            "UPDATE shop_users SET password_hash = :hash, role = 'admin' WHERE id = :id",
            {"hash": hash_password(password), "id": row["id"]},
        )

    async def has_admin(self) -> bool:
        return bool(
            await self.users_db.fetch_val("SELECT COUNT(*) FROM shop_users WHERE role = 'admin'")
        )

    async def user_named(self, username: str) -> User | None:
        with self.instruments.store_op("orders", "get_user"):
            row = await self.users_db.fetch_one(
                "SELECT id, username, role FROM shop_users WHERE username = :name",
                {"name": username},
            )
        return None if row is None else User(row["id"], row["username"], row["role"])

    # -- sessions ----------------------------------------------------------------------

    async def login(self, username: str, password: str) -> SessionInfo:
        with self.instruments.store_op("orders", "get_user"):
            row = await self.users_db.fetch_one(
                "SELECT id, username, role, password_hash FROM shop_users WHERE username = :name",
                {"name": username},
            )
        if row is None or not _password_matches(password, row["password_hash"]):
            raise LoginFailedError("unknown username or wrong password")
        user = User(row["id"], row["username"], row["role"])
        token = secrets.token_urlsafe(32)
        session = {"user_id": user.id, "username": user.username, "roles": [user.role]}
        with self.instruments.store_op("sessions", "set"):
            await self.sessions.set_json(_session_key(token), session, ttl=self.session_ttl)
        return SessionInfo(token, user, self.session_ttl)

    async def session(self, token: str) -> User | None:
        """The user of a live session, or None."""
        with self.instruments.store_op("sessions", "get"):
            data = await self.sessions.get_json(_session_key(token))
        if not isinstance(data, dict):
            return None
        return User(str(data["user_id"]), str(data["username"]), str(data["roles"][0]))

    async def session_ttl_left(self, token: str) -> float | None:
        with self.instruments.store_op("sessions", "ttl"):
            return await self.sessions.ttl(_session_key(token))

    async def logout(self, token: str) -> bool:
        with self.instruments.store_op("sessions", "delete"):
            return bool(await self.sessions.delete(_session_key(token)))

    # -- profiles ----------------------------------------------------------------------

    async def profile(self, user_id: str) -> dict[str, Any] | None:
        with self.instruments.store_op("profiles", "get"):
            return await self.profiles.get(PROFILES, user_id)

    async def update_profile(self, user_id: str, update: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a Mongo-style update (``$set``, ``$unset``, ``$inc``, ``$push``); the
        user id and name cannot be changed."""
        for op, fields in update.items():
            if op not in _UPDATE_OPERATORS:
                raise InvalidValueError(
                    f"update.{op}: use one of {', '.join(sorted(_UPDATE_OPERATORS))}"
                )
            if not isinstance(fields, Mapping):
                raise InvalidValueError(f"update.{op}: a mapping of field paths to values")
            for path in fields:
                if str(path).split(".")[0] in _FIXED:
                    raise InvalidValueError(f"update.{op}.{path}: this field cannot be changed")
        with self.instruments.store_op("profiles", "update"):
            await self.profiles.update(PROFILES, user_id, update)
            found = await self.profiles.get(PROFILES, user_id)
        assert found is not None
        return found

    async def find_profiles(
        self, filter: Mapping[str, Any], *, sort: Sequence[tuple[str, int]] | None, limit: int
    ) -> list[dict[str, Any]]:
        with self.instruments.store_op("profiles", "find"):
            return await self.profiles.find(PROFILES, filter, sort=sort, limit=limit)
