"""OEM tokens for the heads, kept in memory and written through to the database encrypted.

The heads' :class:`twin.auth.AccountTokens` read and store tokens synchronously (one assignment
per rotation, so a rotated refresh token is never half-stored). :class:`PersistentTokenStore`
keeps them in a dict and hands every change to ``persist(account_id, token | None)``, which the
server runs as a task writing the encrypted tokens to ``oem_accounts``; at start the server
loads every linked account's tokens into it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from twin.auth import Token

__all__ = ["PersistentTokenStore"]

log = logging.getLogger("server.tokens")

Persist = Callable[[str, Token | None], Awaitable[None]]


class PersistentTokenStore:
    """A :class:`twin.auth.TokenStore` whose changes are persisted in the background."""

    def __init__(self, persist: Persist) -> None:
        self._tokens: dict[str, Token] = {}
        self._persist = persist
        self._writes: set[asyncio.Task] = set()

    def load(self, account_id: str, token: Token) -> None:
        """A token read from the database at start (not written back)."""
        self._tokens[account_id] = token

    def get(self, account_id: str) -> Token | None:
        return self._tokens.get(account_id)

    def put(self, account_id: str, token: Token) -> None:
        self._tokens[account_id] = token
        self._write(account_id, token)

    def delete(self, account_id: str) -> None:
        self._tokens.pop(account_id, None)
        self._write(account_id, None)

    def _write(self, account_id: str, token: Token | None) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test filling the store): nothing to persist to
            return
        task = loop.create_task(self._persist(account_id, token))
        self._writes.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("OEM tokens of an account could not be stored: %s", task.exception())

    async def flush(self) -> None:
        """Wait until every change so far is written."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)
