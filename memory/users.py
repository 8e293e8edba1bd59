"""Users: one per API key (only a hash of the key is stored), plus the local user of open mode."""

from __future__ import annotations

import hashlib
import secrets
import time

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.models import AppUser

LOCAL_USER = "local"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


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
    user_id = await session.scalar(select(AppUser.id).where(AppUser.key_hash == key_hash(key)))
    return int(user_id) if user_id is not None else None


async def keys_exist(session: AsyncSession) -> bool:
    return await session.scalar(select(AppUser.id).where(AppUser.key_hash.is_not(None)).limit(1)) is not None


async def create_key(session: AsyncSession, name: str, *, admin: bool = False) -> tuple[int, str]:
    """A new user and its key; the key is returned once and never stored."""
    key = "anima-" + secrets.token_urlsafe(32)
    user = AppUser(name=name, key_hash=key_hash(key), is_admin=admin)
    session.add(user)
    await session.flush()
    return user.id, key


class Users:
    """Resolves API keys to user ids, with a short-lived cache so a request costs no query."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, ttl_s: float = 10.0) -> None:
        self._sessions, self._ttl = sessions, ttl_s
        self._cache: dict[str | None, tuple[float, int | None]] = {}

    async def resolve(self, key: str | None) -> int | None:
        """The user of `key`; in open mode (no keys exist) everyone is the local user. None: unknown key."""
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        async with self._sessions.begin() as session:
            if not await keys_exist(session):
                user: int | None = await local_user(session)
            else:
                user = await user_for_key(session, key) if key else None
        self._cache[key] = (now, user)
        return user

    def forget(self) -> None:
        self._cache.clear()
