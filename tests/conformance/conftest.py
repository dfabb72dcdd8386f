"""Heads the conformance suite runs against: the simulated cloud, and each registered HTTP head
(``adapters.HEADS``) against its emulator, in-process (``httpx.ASGITransport``, virtual time) and
over a loopback socket (uvicorn on 127.0.0.1). A new head registered there is checked here
without a change to this file."""

from functools import partial

import pytest

import adapters
from harness import AsgiHarness, SimHarness, SocketHarness

HEADS = [("simulated", SimHarness)]
for _name in sorted(adapters.HEADS):
    HEADS += [(f"{_name}-asgi", partial(AsgiHarness, _name)), (f"{_name}-socket", partial(SocketHarness, _name))]


@pytest.fixture(params=[factory for _, factory in HEADS], ids=[name for name, _ in HEADS])
def make_head(request):
    made = []

    def make(**profile):
        h = request.param(profile)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
