"""Call budgets per rate-limit scope: stay inside an OEM's quotas instead of learning them from 429s.

Each OEM head declares the budgets it knows (:attr:`twin.oem.OEMAdapter.rate_limits`): so many
calls per period per vehicle, per account, or for the whole application. :class:`Budgets` keeps
a sliding window of the calls made in each scope and says when the next call for a car may go
out. A 429 for a wider scope (account, application) blocks every car in it until Retry-After.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta
from typing import Any

from twin.oem import RateBudget

__all__ = ["Budgets"]


class Budgets:
    """Sliding-window call counts per (scope, key), and scope-wide blocks after a 429."""

    def __init__(self) -> None:
        self._limits: dict[str, tuple[RateBudget, ...]] = {}
        self._calls: dict[str, deque[datetime]] = {}
        self._blocked: dict[str, datetime] = {}

    def set_limits(self, oem: str, budgets: tuple[RateBudget, ...]) -> None:
        if budgets:
            self._limits[oem] = tuple(budgets)
        else:
            self._limits.pop(oem, None)

    @staticmethod
    def _key(scope: str, vehicle_id: str, account_id: str, oem: str) -> str:
        name = {"vehicle": vehicle_id, "account": account_id, "application": oem}[scope]
        return f"{oem}|{scope}|{name}"

    def next_call(self, now: datetime, vehicle_id: str, account_id: str, oem: str) -> datetime | None:
        """When a call for this car may go out (None: now)."""
        if not self._blocked and oem not in self._limits:
            return None  # the common case: a head without budgets and no 429 in force
        wait: datetime | None = None
        for scope in ("vehicle", "account", "application"):
            until = self._blocked.get(self._key(scope, vehicle_id, account_id, oem))
            if until is not None and until > now:
                wait = until if wait is None else max(wait, until)
        for b in self._limits.get(oem, ()):
            calls = self._calls.get(self._key(b.scope, vehicle_id, account_id, oem))
            if not calls:
                continue
            period = timedelta(seconds=b.period_s)
            while calls and calls[0] <= now - period:
                calls.popleft()
            if len(calls) >= b.calls:
                free = calls[len(calls) - b.calls] + period
                wait = free if wait is None else max(wait, free)
        return wait

    def spend(self, now: datetime, vehicle_id: str, account_id: str, oem: str) -> None:
        """Record a call that went out now."""
        if oem not in self._limits:
            return
        for b in self._limits[oem]:
            self._calls.setdefault(self._key(b.scope, vehicle_id, account_id, oem), deque()).append(now)

    def block(self, scope: str, until: datetime, vehicle_id: str, account_id: str, oem: str) -> None:
        """No call in ``scope`` (of this car) before ``until``: the cloud said so with a 429."""
        key = self._key(scope, vehicle_id, account_id, oem)
        if key not in self._blocked or self._blocked[key] < until:
            self._blocked[key] = until

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": {k: [t.isoformat() for t in v] for k, v in sorted(self._calls.items()) if v},
            "blocked": {k: v.isoformat() for k, v in sorted(self._blocked.items())},
        }

    def load_json(self, data: dict[str, Any]) -> None:
        self._calls = {k: deque(datetime.fromisoformat(t) for t in v) for k, v in data["calls"].items()}
        self._blocked = {k: datetime.fromisoformat(v) for k, v in data["blocked"].items()}
