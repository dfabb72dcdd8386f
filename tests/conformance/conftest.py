"""Heads the conformance suite runs against: add ``(name, factory)`` pairs for each new head
(its client against its emulator in-process, and over a loopback socket)."""

import pytest

from harness import SimHarness

HEADS = [("simulated", SimHarness)]


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
