"""Users: one per API key (only a SHA-256 of the key is stored), plus the local user of open mode.

Keys are 256-bit random tokens, so a fast hash is enough (no password stretching needed); the first
characters are kept as a prefix so `anima keys list` can tell keys apart without revealing them.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.models import AppUser

log = logging.getLogger("anima.users")

LOCAL_USER = "local"
KEY_PREFIX = "anima-"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class User:
    """Who a request is: the key's user, whether it may use admin routes, and its own limits."""

    id: int
    name: str
    admin: bool = False
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    local: bool = False  # the user of open mode (no keys exist)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    name: str
    prefix: str | None
    admin: bool
    revoked: bool
    requests_per_minute: int | None
    tokens_per_minute: int | None
    created_at: datetime


def _user(row: AppUser, *, local: bool = False) -> User:
    return User(row.id, row.name, row.is_admin, row.requests_per_minute, row.tokens_per_minute, local)


def _active_keys() -> object:
    return AppUser.key_hash.is_not(None) & AppUser.revoked.is_(False)


async def local_user(session: AsyncSession) -> int:
    """The single user of open mode (no keys configured), created on first use."""
    user_id = await session.scalar(
        select(AppUser.id).where(AppUser.key_hash.is_(None), AppUser.name == LOCAL_USER)
    )
    if user_id is None:
        user = AppUser(name=LOCAL_USER)
        session.add(user)
        await session.flush()
        user_id = user.id
    return int(user_id)


async def user_for_key(session: AsyncSession, key: str) -> int | None:
    user_id = await session.scalar(
        select(AppUser.id).where(AppUser.key_hash == key_hash(key), AppUser.revoked.is_(False))
    )
    return int(user_id) if user_id is not None else None


async def keys_exist(session: AsyncSession) -> bool:
    return await session.scalar(select(AppUser.id).where(_active_keys()).limit(1)) is not None  # type: ignore[arg-type]


async def create_key(
    session: AsyncSession,
    name: str,
    *,
    admin: bool = False,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> tuple[int, str]:
    """A new user and its key; the key is returned once and never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    user = AppUser(
        name=name,
        key_hash=key_hash(key),
        key_prefix=key[: len(KEY_PREFIX) + 6],
        is_admin=admin,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
    )
    session.add(user)
    await session.flush()
    return user.id, key


async def list_keys(session: AsyncSession) -> list[KeyInfo]:
    rows = (
        await session.scalars(select(AppUser).where(AppUser.key_hash.is_not(None)).order_by(AppUser.id))
    ).all()
    return [
        KeyInfo(
            r.id,
            r.name,
            r.key_prefix,
            r.is_admin,
            r.revoked,
            r.requests_per_minute,
            r.tokens_per_minute,
            r.created_at,
        )
        for r in rows
    ]


async def revoke_key(session: AsyncSession, who: str) -> int:
    """Revoke by id or by name (every key of that name); the user's data stays. Returns keys revoked."""
    match = AppUser.id == int(who) if who.isdigit() else AppUser.name == who
    result = await session.execute(
        update(AppUser)
        .where(match, AppUser.key_hash.is_not(None), AppUser.revoked.is_(False))
        .values(revoked=True)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def delete_user(session: AsyncSession, user_id: int) -> None:
    """The user and everything it owns (conversations, messages, personas, ...: ON DELETE CASCADE)."""
    await session.execute(delete(AppUser).where(AppUser.id == user_id))


class Users:
    """Resolves API keys to users, with a short-lived cache so a request costs no query.

    Open mode (no keys: everyone is the local user) is decided once, by `start()`, and can only end:
    a server that started with keys, or on an interface where open mode is not allowed, never opens,
    even when its last key is revoked; an open server closes for good when its first key appears.

    When the database is unreachable, a key seen before keeps resolving to its last known user
    (stale-if-error), so a Postgres outage does not lock out the clients it should keep serving.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, ttl_s: float = 10.0) -> None:
        self._sessions, self._ttl = sessions, ttl_s
        self._cache: dict[str | None, tuple[float, User | None]] = {}
        self._open = False  # closed until start() decides otherwise

    async def start(self, *, open_allowed: bool) -> bool:
        """Decide open mode for this process's lifetime: allowed here (loopback, or forced) and no keys."""
        async with self._sessions() as session:
            self._open = open_allowed and not await keys_exist(session)
        self.forget()
        return self._open

    @property
    def is_open(self) -> bool:
        return self._open

    async def identify(self, key: str | None) -> User | None:
        """The user of `key`; in open mode everyone is the local user. None: unknown or missing key."""
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        try:
            user = await self._lookup(key)
        except Exception:
            if cached is not None:
                log.warning("database unreachable: using the last known identity of this key")
                return cached[1]
            raise
        self._cache[key] = (now, user)
        return user

    async def _lookup(self, key: str | None) -> User | None:
        async with self._sessions.begin() as session:
            if self._open and await keys_exist(session):
                self._open = False  # the first key closes an open server, for good
                self._cache.clear()
                log.warning("an API key exists now: open mode is over, every request needs a key")
            if self._open:
                local = await session.get(AppUser, await local_user(session))
                assert local is not None
                return _user(local, local=True)
            if not key:
                return None
            row = await session.scalar(
                select(AppUser).where(AppUser.key_hash == key_hash(key), AppUser.revoked.is_(False))
            )
            return _user(row) if row is not None else None

    async def keys_exist(self) -> bool:
        async with self._sessions() as session:
            return await keys_exist(session)

    def forget(self) -> None:
        self._cache.clear()
