"""OAuth tokens per OEM account: stored atomically, refreshed ahead of expiry, single-flight.

One OAuth grant covers every car of an account (a household, a fleet). Refreshing it per car
would burn one refresh per car and, with rotating refresh tokens (Smartcar invalidates a used
refresh token a minute after use; Tesla's are single-use outright), concurrent refreshes of the
same grant invalidate each other. :class:`AccountTokens` therefore

* refreshes **ahead of expiry** (``refresh_ahead_s`` before ``expires_at``), so calls do not
  fail once per token lifetime to find out;
* refreshes **once per account**: the first caller performs the refresh, every caller that
  arrives meanwhile awaits the same outcome;
* stores the new access token, its expiry and the rotated refresh token in one
  :meth:`TokenStore.put`, so a crash never leaves a new access token beside a dead refresh token;
* turns a refused refresh (revoked grant, expired refresh token) into
  :class:`~twin.oem.ReauthorizationRequired` for the calling car; the controller then stops
  calling the account's cars and asks the driver to link it again.

Tokens are secrets: :class:`Token` never shows them in ``repr``, and nothing here logs them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from twin.clock import Clock, Future
from twin.oem import ReauthorizationRequired, TransientUpstream

__all__ = ["Token", "TokenStore", "MemoryTokenStore", "AccountTokens", "RefreshRefused", "RefreshFailed"]

# Refresh this long before the access token expires: longer than any single call takes (the
# Smartcar SDK allows 310 s), so a token fetched for a call is still valid when the call lands.
DEFAULT_REFRESH_AHEAD_S = 600.0


@dataclass(frozen=True)
class Token:
    """An account's OAuth tokens. ``expires_at``: when the access token expires (UTC)."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: datetime

    def __repr__(self) -> str:
        return f"Token(expires_at={self.expires_at.isoformat()}, access_token=<redacted>)"


class RefreshRefused(Exception):
    """The auth server refused the refresh token (revoked, expired, already used)."""


class RefreshFailed(Exception):
    """The auth server could not be reached or failed; the refresh may be tried again."""


class TokenStore(Protocol):
    """Where an account's tokens live (memory in the twin; the server's database live)."""

    def get(self, account_id: str) -> Token | None: ...

    def put(self, account_id: str, token: Token) -> None:
        """Replace the account's tokens in one atomic write."""
        ...

    def delete(self, account_id: str) -> None: ...


class MemoryTokenStore:
    """A :class:`TokenStore` in a dict (one assignment per put: atomic)."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}

    def get(self, account_id: str) -> Token | None:
        return self._tokens.get(account_id)

    def put(self, account_id: str, token: Token) -> None:
        self._tokens[account_id] = token

    def delete(self, account_id: str) -> None:
        self._tokens.pop(account_id, None)


#: refresh(account_id, current token) -> new token; raises RefreshRefused or RefreshFailed
Refresher = Callable[[str, Token], Awaitable[Token]]


class AccountTokens:
    """Access tokens for a head's accounts (see the module docstring)."""

    def __init__(self, store: TokenStore, refresh: Refresher, clock: Clock, *,
                 refresh_ahead_s: float = DEFAULT_REFRESH_AHEAD_S) -> None:
        self.store = store
        self._refresh_fn = refresh
        self._clock = clock
        self.refresh_ahead_s = refresh_ahead_s
        #: accounts with a refresh in flight -> futures of the callers waiting for it
        self._waiting: dict[str, list[Future]] = {}
        #: refreshes performed, and refused (for KPIs and tests)
        self.stats = {"refreshes": 0, "refused": 0, "failed": 0}

    async def access_token(self, account_id: str, vehicle_id: str) -> str:
        """A valid access token for ``account_id``, refreshed first if it expires soon."""
        token = self.store.get(account_id)
        if token is None:
            raise ReauthorizationRequired(vehicle_id, account_id, f"account {account_id} is not linked")
        if (token.expires_at - self._clock.now()).total_seconds() > self.refresh_ahead_s:
            return token.access_token
        return (await self._refresh(account_id, vehicle_id)).access_token

    async def after_rejection(self, account_id: str, vehicle_id: str, rejected: str) -> str:
        """A new access token after the cloud rejected ``rejected`` (refreshed unless another
        call already replaced it)."""
        token = self.store.get(account_id)
        if token is not None and token.access_token != rejected:
            return token.access_token
        return (await self._refresh(account_id, vehicle_id)).access_token

    async def _refresh(self, account_id: str, vehicle_id: str) -> Token:
        waiting = self._waiting.get(account_id)
        if waiting is not None:  # a refresh is in flight: share its outcome
            future = self._clock.create_future()
            waiting.append(future)
            outcome = await future
        else:
            self._waiting[account_id] = waiting = []
            outcome: Token | tuple[bool, str] = (False, f"token refresh for account {account_id} was interrupted")
            try:
                outcome = await self._perform(account_id)
            finally:  # also when this caller is cancelled (a call timeout): never strand waiters
                del self._waiting[account_id]
                for future in waiting:
                    future.set_result(outcome)
        if isinstance(outcome, Token):
            return outcome
        refused, message = outcome
        if refused:
            raise ReauthorizationRequired(vehicle_id, account_id, message)
        raise TransientUpstream(vehicle_id, message)

    async def _perform(self, account_id: str) -> Token | tuple[bool, str]:
        """Refresh once; returns the new token or (refused, message). Never raises, so that the
        waiters are always released."""
        token = self.store.get(account_id)
        if token is None or token.refresh_token is None:
            self.stats["refused"] += 1
            return True, f"account {account_id} has no refresh token"
        try:
            new = await self._refresh_fn(account_id, token)
        except RefreshRefused as exc:
            self.stats["refused"] += 1
            return True, f"refresh refused for account {account_id}: {exc}"
        except RefreshFailed as exc:
            self.stats["failed"] += 1
            return False, f"token refresh failed for account {account_id}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a head's bug must not strand the account's cars
            self.stats["failed"] += 1
            return False, f"token refresh failed for account {account_id}: {type(exc).__name__}: {exc}"
        self.store.put(account_id, new)
        self.stats["refreshes"] += 1
        return new
