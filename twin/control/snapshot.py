"""Persistable controller state: :func:`take` a snapshot as plain JSON data, :func:`restore` it.

A snapshot holds every car's track (session, plan, pending call, back-off, verification,
escalation, the current it was set to), the timers, the cars waiting to be planned, the call
budgets, the revoked accounts, the counters and the policy's own state (the smart policy's
forecasts). What is not in it comes from the registrations when restoring: the cars' charging
curves, capabilities, accounts and heads. A live server writes a snapshot after each step (or
every few) and restores the latest one at start-up; ``json.dumps(snapshot, allow_nan=False)``
is its text.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from twin.control.config import ControllerConfig
from twin.control.policies import Policy
from twin.control.track import ManagedVehicle
from twin.domain import Preferences
from twin.oem import RateBudget

if TYPE_CHECKING:
    from twin.control.controller import Controller

__all__ = ["SNAPSHOT_VERSION", "take", "restore"]

#: format of :func:`take`'s output; :func:`restore` refuses other versions
SNAPSHOT_VERSION = 1


def take(ctl: Controller) -> dict[str, Any]:
    """``ctl``'s whole state as plain JSON-serialisable data.

    Cars waiting for the answer of a planning job in flight are recorded as waiting to be
    planned: a restored controller plans them again.
    """
    waiting = {vid for vid, t in ctl.tracks.items() if t.awaiting_plan is not None}
    nb = ctl._plan_not_before
    return {
        "version": SNAPSHOT_VERSION,
        "policy": ctl.policy.name,
        "policy_state": ctl.policy.snapshot(),
        "tracks": {vid: t.to_json() for vid, t in sorted(ctl.tracks.items())},
        "timers": [[when.isoformat(), seq, vid] for when, seq, vid in sorted(ctl._timers)],
        "seq": ctl._seq,
        "dirty": sorted(ctl._dirty | ctl._held),
        "plugged": sorted(ctl._plugged),
        "to_plan": sorted(ctl._to_plan | waiting),
        "replan_all": ctl._replan_all,
        "plan_not_before": None if nb is None else nb.isoformat(),
        "escalations": list(ctl._escalations),
        "revoked": sorted(ctl._revoked),
        "budgets": ctl._budgets.to_json(),
        "stats": dict(ctl.stats),
    }


def restore(cls: type[Controller], snapshot: Mapping[str, Any], *, policy: Policy,
            vehicles: Iterable[ManagedVehicle], new_id: Callable[[], str], config: ControllerConfig | None = None,
            rate_limits: Mapping[str, tuple[RateBudget, ...]] | None = None,
            resend_pending: bool = True, site_kw: float | None = None) -> Controller:
    """A controller of class ``cls`` in the state ``snapshot`` recorded.

    ``vehicles`` are the registrations and must be the snapshot's cars; ``policy`` a fresh policy
    of the snapshot's kind (its state is restored into it). With ``resend_pending`` the calls
    that were in flight are sent again first, with their original ids as idempotency keys (a
    restart lost their outcomes); without it the host will still deliver those outcomes (the
    same host kept running, as in the twin's restarts).
    """
    if snapshot.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"snapshot version {snapshot.get('version')!r} is not {SNAPSHOT_VERSION}")
    if snapshot.get("policy") != policy.name:
        raise ValueError(f"snapshot is of a '{snapshot.get('policy')}' controller, not '{policy.name}'")
    ctl = cls(policy, config, new_id=new_id, site_kw=site_kw)
    for oem, budgets in (rate_limits or {}).items():
        ctl.set_rate_limits(oem, budgets)
    states = snapshot["tracks"]
    registered = {v.vehicle_id: v for v in vehicles}
    if set(registered) != set(states):
        missing, extra = sorted(set(states) - set(registered)), sorted(set(registered) - set(states))
        raise ValueError(f"snapshot cars differ from the registrations: not registered {missing[:5]}, "
                         f"not in the snapshot {extra[:5]}")
    for vid in sorted(states):
        ctl.register(registered[vid], Preferences())
        track = ctl.tracks[vid]
        track.load_json(states[vid])
        track.awaiting_plan = None
        if track.pending is not None and resend_pending:
            ctl._resend.append(track.pending)
    ctl._timers = [(datetime.fromisoformat(w), s, v) for w, s, v in snapshot["timers"]]
    heapq.heapify(ctl._timers)
    ctl._seq = snapshot["seq"]
    ctl._dirty = set(snapshot["dirty"])
    ctl._plugged = set(snapshot["plugged"])
    ctl._to_plan = set(snapshot["to_plan"])
    ctl._replan_all = snapshot["replan_all"]
    nb = snapshot["plan_not_before"]
    ctl._plan_not_before = None if nb is None else datetime.fromisoformat(nb)
    ctl._escalations = list(snapshot["escalations"])
    ctl._revoked = set(snapshot["revoked"])
    ctl._budgets.load_json(snapshot["budgets"])
    ctl.stats.update(snapshot["stats"])
    policy.restore(snapshot["policy_state"])
    return ctl
