"""What each OEM head tells the rest of the project (:class:`Head`), and the pieces every head
needs to stand up against its emulator.

A head's ``head.py`` builds one :class:`Head`:

* ``features``: which of the protocol's optional parts its API has (``push``: webhooks;
  ``wake``; ``current``: the charging current can be set; ``charge_limit``);
* ``base_profile``: the profile settings the API always has (a Tesla reports whole percent and
  is polled), from which emulators for tests and ``twin emulate`` start;
* ``problems(profile)``: what of a simulated cloud's behaviour (:class:`twin.scenario.OEMProfile`)
  its API cannot carry, so that the twin over HTTP would not be the same cloud (e.g. a wake on
  an API without one); empty when the profile can be served;
* ``emulator(cloud, deliver)``: its FastAPI emulator over a :class:`twin.sim.oem.SimulatedOEM`;
  ``deliver(headers, body)`` takes the emulator's signed webhook deliveries;
* ``connect(cloud, base_url, transport, clock)``: its client pointed at an emulator of ``cloud``
  (tokens as linked, refreshed through the emulator's token endpoint, the cloud's quotas as the
  client's known rate limits), and a function that takes a webhook delivery the way the head's
  web route would (``None`` when the API has no webhooks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Connected", "Deliver", "Head"]

#: takes one webhook delivery (headers, raw body)
Deliver = Callable[[dict[str, str], bytes], Any]


@dataclass(frozen=True)
class Connected:
    """A head's client connected to an emulator: the adapter, and its webhook receiver."""

    adapter: Any
    receive: Deliver | None


@dataclass(frozen=True)
class Head:
    name: str
    features: frozenset[str]
    problems: Callable[[Any], list[str]]
    emulator: Callable[..., Any]
    connect: Callable[..., Connected]
    #: the path of the token endpoint on the emulator (for people pointing their own client at it)
    token_path: str
    #: the path prefix of the vehicles API on the emulator
    api_path: str
    #: the OEM profile settings this API always has (what ``problems`` asks of every profile)
    base_profile: dict[str, Any] = field(default_factory=dict)
