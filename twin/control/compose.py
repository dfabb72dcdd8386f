"""Build a running controller from cars, preferences, settings, a policy and OEM heads.

:func:`build_controller` is the one composition both worlds call: :func:`twin.sim.run.build`
for a twin run and the live server (and ``tests/test_compose.py``'s asyncio example) for real
cars. It resolves the policy, registers every car with the capabilities its head reports and
hands the controller each head's call budgets; with a ``snapshot`` it restores a controller
instead of starting a fresh one.

Action ids come from the host: :class:`SeededIds` in the twin (reproducible for a seed),
:func:`uuid_ids` live.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from twin.control.config import ControlSettings
from twin.control.controller import Controller
from twin.control.policies import Optimal, Policy, make_policy
from twin.control.track import ManagedVehicle
from twin.domain import Preferences
from twin.oem import OEMAdapter

__all__ = ["build_controller", "SeededIds", "uuid_ids"]


class SeededIds:
    """Action ids for the twin: UUID-shaped (version 4), a prefix drawn from ``seed`` and a
    counter, so the same run gives the same ids. ``issued`` counts the ids handed out."""

    def __init__(self, seed: int | np.random.SeedSequence, issued: int = 0) -> None:
        prefix = uuid.UUID(bytes=np.random.default_rng(seed).bytes(16), version=4).hex[:20]
        self._prefix = f"{prefix[:8]}-{prefix[8:12]}-{prefix[12:16]}-{prefix[16:20]}-"
        self.issued = issued

    def __call__(self) -> str:
        # one string format per action: the twin issues hundreds of thousands of them
        self.issued += 1
        return f"{self._prefix}{self.issued:012x}"


def uuid_ids() -> str:
    """A fresh random UUID (live)."""
    return str(uuid.uuid4())


def build_controller(
    vehicles: Sequence[ManagedVehicle],
    preferences: Mapping[str, Preferences],
    settings: ControlSettings,
    policy: str | Policy,
    adapters: Mapping[str, OEMAdapter],
    *,
    new_id: Callable[[], str] = uuid_ids,
    optimal: Optimal | None = None,
    snapshot: Mapping[str, Any] | None = None,
    resend_pending: bool = True,
) -> Controller:
    """A controller for ``vehicles``, each reached through ``adapters[vehicle_id]``.

    Parameters
    ----------
    vehicles : the cars, with their curves and accounts; ``caps`` are taken from each car's head
        (``adapter.capabilities``), and ``oem`` from the head's name.
    preferences : each car's driver preferences (vehicle id -> Preferences; default Preferences()).
    settings : loop tunables, objective, slot length and feeder limit.
    policy : a policy name (``uncontrolled``, ``edf``, ``smart``, ``smart_onoff``, ``optimal``) or object.
    adapters : vehicle id -> its OEM head.
    new_id : supplies action ids (idempotency keys).
    optimal : the perfect-foresight policy, needed for ``policy="optimal"`` (twin only).
    snapshot : a :meth:`Controller.snapshot` to restore instead of starting fresh.
    resend_pending : with a snapshot, send the calls that were in flight again (see
        :meth:`Controller.restore`).
    """
    if isinstance(policy, str):
        policy = make_policy(policy, settings, optimal=optimal)
    missing = [v.vehicle_id for v in vehicles if v.vehicle_id not in adapters]
    if missing:
        raise ValueError(f"no OEM adapter for vehicles {', '.join(missing[:5])}")
    heads = {}
    registered = []
    for v in vehicles:
        head = adapters[v.vehicle_id]
        heads[head.name] = head
        registered.append(ManagedVehicle(v.vehicle_id, v.curve, head.capabilities(v.vehicle_id), v.account_id,
                                         head.name))
    limits = {name: tuple(head.rate_limits) for name, head in heads.items()}
    if snapshot is not None:
        ctl = Controller.restore(snapshot, policy=policy, vehicles=registered, new_id=new_id, config=settings.config,
                                 rate_limits=limits, resend_pending=resend_pending, site_kw=settings.feeder_kw)
        return ctl
    ctl = Controller(policy, settings.config, new_id=new_id, site_kw=settings.feeder_kw)
    for name, budgets in limits.items():
        ctl.set_rate_limits(name, budgets)
    for v in registered:
        ctl.register(v, preferences.get(v.vehicle_id, Preferences()))
    return ctl
