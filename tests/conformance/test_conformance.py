"""The behaviour every OEMAdapter must show, whatever cloud it talks to.

Written once, parametrised by head (``conftest.HEADS``): typed errors and nothing else,
Retry-After with its scope, asleep -> wake, token refresh ahead of expiry and once per account,
revoked grants, idempotent commands, webhook parsing with signatures and de-duplication,
capabilities and discovery, charging-current control where the head has it.
"""

import asyncio
from dataclasses import replace

import pytest

from harness import CARS
from twin.oem import (
    Capabilities, CommandRejected, DiscoveredVehicle, OEMAdapter, OEMError, RateLimited, ReauthorizationRequired,
    TransientUpstream, UnknownVehicle, VehicleAsleep, VehicleReading, WebhookRejected,
)


def raises(head, coro, kind):
    """Run ``coro``; it must raise ``kind``, which must be an OEMError (adapters raise nothing else)."""
    with pytest.raises(OEMError) as err:
        head.run(coro)
    assert isinstance(err.value, kind), f"expected {kind.__name__}, got {type(err.value).__name__}: {err.value}"
    return err.value


def test_is_an_oem_adapter_and_reads_a_car(make_head):
    head = make_head()
    a = head.adapter
    assert isinstance(a, OEMAdapter)
    head.plug_in("car-a", soc=0.62)
    r = head.run(a.read("car-a"))
    assert isinstance(r, VehicleReading) and r.vehicle_id == "car-a"
    assert r.soc == pytest.approx(0.62, abs=0.01) and r.plugged_in and not r.charging
    assert r.taken_at.tzinfo is not None and r.taken_at <= head.now()
    assert not head.run(a.read("car-c")).plugged_in


def test_capabilities_and_discovery(make_head):
    probe = make_head()
    features = probe.features  # what the head's API has: the profile asks for exactly that
    profile = {"push": "push" in features}
    if "wake" in features:
        profile["sleep_after_s"] = 600
    if "current" in features:
        profile["current_control"] = {"min_amps": 6, "max_amps": 16, "phases": 3}
    if "charge_limit" in features:
        profile["charge_limit_control"] = True
    head = make_head(**profile)
    caps = head.adapter.capabilities("car-a")
    assert isinstance(caps, Capabilities)
    assert (caps.pushes_telemetry, caps.needs_wake, caps.can_set_current, caps.can_set_charge_limit) == (
        "push" in features, "wake" in features, "current" in features, "charge_limit" in features)
    if "current" in features:
        assert (caps.min_amps, caps.max_amps) == (6, 16) and caps.kw_per_amp() == pytest.approx(0.69)
    found = head.run(head.adapter.discover("acct-1"))
    assert all(isinstance(v, DiscoveredVehicle) for v in found)
    assert sorted(v.vehicle_id for v in found) == sorted(v for v, acct in CARS.items() if acct == "acct-1")
    assert all(v.capabilities == caps for v in found)


def test_start_and_stop_change_what_the_car_does(make_head):
    head = make_head()
    a = head.adapter
    head.plug_in("car-a", soc=0.3)
    head.run(a.start_charging("car-a", key="k1"))
    assert head.charging("car-a")
    head.advance(600)
    assert head.run(a.read("car-a")).charging
    head.run(a.stop_charging("car-a", key="k2"))
    assert not head.charging("car-a")


def test_commands_are_idempotent_per_key(make_head):
    head = make_head()
    a = head.adapter
    head.plug_in("car-a", soc=0.3)
    head.run(a.start_charging("car-a", key="start-1"))
    head.run(a.stop_charging("car-a", key="stop-1"))
    reached = head.commands_reached()
    head.run(a.start_charging("car-a", key="start-1"))  # replayed after a restart: not sent again
    assert not head.charging("car-a") and head.commands_reached() == reached
    head.run(a.start_charging("car-a", key="start-2"))  # a new command is
    assert head.charging("car-a")


def test_a_command_for_an_unplugged_car_is_rejected_with_its_reason(make_head):
    head = make_head()
    err = raises(head, head.adapter.start_charging("car-a", key="k"), CommandRejected)
    assert err.reason == "not_plugged_in" and err.vehicle_id == "car-a"


def test_an_unknown_vehicle_is_a_typed_error(make_head):
    head = make_head()
    raises(head, head.adapter.read("no-such-car"), UnknownVehicle)
    head.forget("car-b")
    raises(head, head.adapter.read("car-b"), UnknownVehicle)


def test_an_asleep_car_answers_after_a_wake(make_head):
    head = make_head(sleep_after_s=600, wake_latency={"median_s": 20, "p95_s": 20})
    a = head.adapter
    head.plug_in("car-a")
    head.advance(700)
    raises(head, a.read("car-a"), VehicleAsleep)
    head.run(a.wake("car-a"))
    assert head.run(a.read("car-a")).plugged_in


def test_a_throttled_call_says_when_to_retry_and_which_scope(make_head):
    head = make_head(calls_per_vehicle_per_hour=2)
    a = head.adapter
    assert any(b.scope == "vehicle" and b.calls == 2 for b in a.rate_limits)
    head.run(a.read("car-a"))
    head.run(a.read("car-a"))
    err = raises(head, a.read("car-a"), RateLimited)
    assert err.scope == "vehicle" and 0 < err.retry_after_s <= 3600
    head.run(a.read("car-b"))  # another car's budget is its own
    head.advance(err.retry_after_s)
    head.run(a.read("car-a"))


def test_upstream_failures_are_transient(make_head):
    head = make_head(failure_rate=0.95)
    seen = set()
    for _ in range(20):
        try:
            head.run(head.adapter.read("car-a"))
        except OEMError as exc:
            seen.add(type(exc))
    assert seen == {TransientUpstream}


def test_tokens_are_refreshed_ahead_of_expiry_once_per_account(make_head):
    head = make_head(token_lifetime_s=3600, read_latency={"median_s": 1, "p95_s": 1})
    a = head.adapter
    head.advance(3700)  # every account's access token has expired

    async def both():
        return await asyncio.gather(a.read("car-a"), a.read("car-b"))

    head.run(both())  # no AuthExpired reaches the caller
    assert head.token_refreshes() == 1  # one refresh for the two cars of acct-1
    head.run(a.read("car-c"))
    assert head.token_refreshes() == 2
    head.advance(600)
    head.run(a.read("car-a"))  # still fresh: no refresh
    assert head.token_refreshes() == 2


def test_a_revoked_grant_needs_reauthorisation(make_head):
    head = make_head(token_lifetime_s=3600)
    head.revoke("acct-1")
    err = raises(head, head.adapter.read("car-b"), ReauthorizationRequired)
    assert err.account_id == "acct-1"
    head.run(head.adapter.read("car-c"))  # other accounts are unaffected


def test_webhooks_are_verified_and_deduplicated(make_head):
    head = make_head()
    a = head.adapter
    reading = VehicleReading("car-a", head.now().replace(microsecond=0), 0.55, True, False)  # clouds send ms
    headers, body = head.webhook([reading])
    [got] = a.parse_webhook(headers, body)
    assert (got.vehicle_id, got.soc, got.plugged_in, got.charging, got.taken_at) == (
        "car-a", 0.55, True, False, reading.taken_at)
    assert a.parse_webhook(headers, body) == []  # the same delivery again
    middle = len(body) // 2
    with pytest.raises(WebhookRejected):  # one bit changed: the signature no longer matches
        a.parse_webhook(headers, body[:middle] + bytes([body[middle] ^ 1]) + body[middle + 1:])
    with pytest.raises(WebhookRejected):
        a.parse_webhook({}, body)


def test_charging_current_is_set_within_the_cars_range(make_head):
    head = make_head(current_control={"min_amps": 6, "max_amps": 32})
    a = head.adapter
    head.plug_in("car-a", soc=0.3)
    head.run(a.set_charging_current("car-a", 8, key="c1"))
    head.run(a.start_charging("car-a", key="c2"))
    before = head.run(a.read("car-a")).soc
    head.advance(3600)
    # 8 A x 230 V = 1.84 kW for an hour into 60 kWh at 90 %
    assert head.run(a.read("car-a")).soc - before == pytest.approx(1.84 * 0.9 / 60, abs=0.011)
    err = raises(head, a.set_charging_current("car-a", 64, key="c3"), CommandRejected)
    assert err.reason == "out_of_range"
    plain = make_head()
    assert not plain.adapter.capabilities("car-a").can_set_current
    err = raises(plain, plain.adapter.set_charging_current("car-a", 8, key="c4"), CommandRejected)
    assert err.reason == "not_capable"
    caps = replace(Capabilities(min_amps=6, max_amps=32), amps_step=2)
    assert (caps.amps_for(3.0), caps.amps_for(3.4), caps.amps_for(1.3), caps.amps_for(99)) == (12, 14, 0, 32)
