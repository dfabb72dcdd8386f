"""OEM heads: one self-contained folder per car maker's cloud API.

Each head (``adapters/<oem>/``) holds its client (the OEM adapter protocol of :mod:`twin.oem`
over HTTP with ``httpx``), its OAuth flow, its emulator (a FastAPI app shaped like the OEM's API
over a simulated cloud), the fixtures its parsers are tested on, and ``head.py``, which tells the
rest of the project what the head can do (:class:`adapters.base.Head`).

Registering a head is the one line per OEM in :data:`HEADS` below; the twin (``oem_transport:
http``), ``twin emulate`` and the adapter conformance suite find it there.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.base import Head

#: OEM API name -> the module whose ``HEAD`` describes its head
HEADS = {
    "smartcar": "adapters.smartcar.head",
    "tesla": "adapters.tesla.head",
}


def head(name: str) -> Head:
    """The registered head called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in HEADS:
        raise ValueError(f"no OEM head {name!r}; the registered heads are {', '.join(sorted(HEADS))}")
    return import_module(HEADS[name]).HEAD
