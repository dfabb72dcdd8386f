"""TeslaFleetClient against httpx.MockTransport serving the recorded Fleet API bodies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from adapters.tesla import REGIONS, TeslaFleetClient
from twin.auth import AccountTokens, MemoryTokenStore, RefreshRefused, Token
from twin.host.aio import AsyncClock, VirtualTimeLoop
from twin.oem import (
    AuthExpired,
    CallTimeout,
    CommandRejected,
    OEMAdapter,
    OEMError,
    RateLimited,
    ReauthorizationRequired,
    TransientUpstream,
    UnknownVehicle,
    VehicleAsleep,
    WebhookRejected,
)

FIXTURES = Path(__file__).resolve().parents[3] / "adapters" / "tesla" / "fixtures"
T0 = datetime(2026, 1, 12, tzinfo=UTC)
VIN = "5YJ3E7EB0KF000001"
ACCOUNT = "acct-1"
BASE = REGIONS["eu"]


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


Handler = Callable[[httpx.Request], httpx.Response]


class Cloud:
    """Routes (method, path) to queued responses and records every request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Handler]] = {}
        self.requests: list[httpx.Request] = []
        self.valid_tokens = {"at-1"}

    def on(self, method: str, path: str, *handlers: Handler | httpx.Response) -> None:
        queue = self.routes.setdefault((method, path), [])
        for h in handlers:
            queue.append(h if callable(h) else (lambda _req, r=h: r))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        auth = request.headers.get("authorization", "")
        if auth.removeprefix("Bearer ") not in self.valid_tokens:
            return httpx.Response(401)  # expired token: no body
        queue = self.routes.get((request.method, request.url.path))
        if not queue:
            return httpx.Response(404)
        handler = queue[0] if len(queue) == 1 else queue.pop(0)
        return handler(request)


def body(name: str, status: int = 200, **kw) -> httpx.Response:
    return httpx.Response(status, content=fixture_bytes(name), headers={"content-type": "application/json"}, **kw)


class Setup:
    def __init__(self, refresh=None) -> None:
        self.loop = VirtualTimeLoop()
        self.clock = AsyncClock(T0, self.loop)
        self.cloud = Cloud()
        self.refreshes = 0

        async def default_refresh(account: str, token: Token) -> Token:
            self.refreshes += 1
            self.cloud.valid_tokens = {f"at-{self.refreshes + 1}"}
            return Token(f"at-{self.refreshes + 1}", f"rt-{self.refreshes + 1}", self.clock.now() + timedelta(hours=8))

        self.tokens = AccountTokens(MemoryTokenStore(), refresh or default_refresh, self.clock)
        self.tokens.store.put(ACCOUNT, Token("at-1", "rt-1", T0 + timedelta(hours=8)))
        self.client = TeslaFleetClient(self.tokens, self.clock, region="eu", transport=httpx.MockTransport(self.cloud),
                                       accounts={VIN: ACCOUNT})

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def vpath(self, suffix: str = "") -> str:
        return f"/api/1/vehicles/{VIN}{suffix}"


@pytest.fixture
def s():
    setup = Setup()
    yield setup
    setup.run(setup.client.aclose())
    setup.loop.close()


# -- construction, discovery ----------------------------------------------------------------------


def test_is_an_oem_adapter_with_region_hosts(s):
    assert isinstance(s.client, OEMAdapter)
    assert s.client.base_url == "https://fleet-api.prd.eu.vn.cloud.tesla.com"
    assert REGIONS["na"] == "https://fleet-api.prd.na.vn.cloud.tesla.com"
    assert REGIONS["cn"] == "https://fleet-api.prd.cn.vn.cloud.tesla.cn"
    with pytest.raises(ValueError):
        TeslaFleetClient(s.tokens, s.clock, region="mars")


def test_discover_lists_vehicles_by_vin(s):
    s.cloud.on("GET", "/api/1/vehicles", body("vehicles.json"))
    found = s.run(s.client.discover(ACCOUNT))
    assert [v.vehicle_id for v in found] == ["5YJ3E7EB0KF000001", "5YJYGDEE0LF000002"]
    assert all(v.account_id == ACCOUNT for v in found)
    caps = found[1].capabilities
    assert caps.needs_wake and not caps.pushes_telemetry and caps.can_set_charge_limit
    assert not caps.can_set_current  # unknown until a reading reports charge_current_request_max
    req = s.cloud.requests[0]
    assert req.url.host == "fleet-api.prd.eu.vn.cloud.tesla.com"
    assert req.headers["authorization"] == "Bearer at-1"
    assert req.url.params["page"] == "1"
    assert s.client.account_of("5YJYGDEE0LF000002") == ACCOUNT


def test_discover_rejects_vehicle_without_vin(s):
    data = fixture("vehicles.json")
    del data["response"][0]["vin"]
    s.cloud.on("GET", "/api/1/vehicles", httpx.Response(200, json=data))
    with pytest.raises(TransientUpstream):
        s.run(s.client.discover(ACCOUNT))


def test_unknown_vin_is_unknown_vehicle_without_a_call(s):
    with pytest.raises(UnknownVehicle):
        s.run(s.client.read("NOTAVIN"))
    with pytest.raises(UnknownVehicle):
        s.client.capabilities("NOTAVIN")
    assert s.cloud.requests == []


# -- reading ---------------------------------------------------------------------------------------


def test_read_stopped_charge_state(s):
    s.cloud.on("GET", s.vpath("/vehicle_data"), body("vehicle_data_stopped.json"))
    r = s.run(s.client.read(VIN))
    assert r.vehicle_id == VIN
    assert r.soc == pytest.approx(0.77)
    assert r.plugged_in and not r.charging
    assert r.taken_at == datetime(2024, 1, 19, 23, 38, 40, 649000, tzinfo=UTC)
    assert r.taken_at.tzinfo is not None and r.taken_at.utcoffset() == timedelta(0)
    assert s.cloud.requests[0].url.params["endpoints"] == "charge_state"
    cs = s.client._vehicles[VIN].charge
    assert cs.charge_limit == pytest.approx(0.80)
    assert (cs.charge_current_request, cs.charge_current_request_max) == (16, 16)
    assert cs.charger_phases is None and cs.charger_voltage == 2
    caps = s.client.capabilities(VIN)
    assert caps.can_set_current and (caps.min_amps, caps.max_amps, caps.amps_step) == (5.0, 16.0, 1.0)
    assert (caps.volts, caps.phases) == (230.0, 1)  # idle voltage (2 V) is not the supply's


def test_read_charging_learns_phases_and_voltage(s):
    s.cloud.on("GET", s.vpath("/vehicle_data"), body("vehicle_data_charging.json"))
    r = s.run(s.client.read(VIN))
    assert r.soc == pytest.approx(0.54) and r.plugged_in and r.charging
    caps = s.client.capabilities(VIN)
    assert (caps.volts, caps.phases) == (230.0, 3)
    assert caps.kw_per_amp() == pytest.approx(0.69)


@pytest.mark.parametrize("state, plugged, charging", [
    ("Charging", True, True), ("Stopped", True, False), ("Complete", True, False),
    ("Disconnected", False, False), ("NoPower", True, False), ("Starting", True, False),
])
def test_charging_state_mapping(s, state, plugged, charging):
    data = fixture("vehicle_data_stopped.json")
    data["response"]["charge_state"]["charging_state"] = state
    s.cloud.on("GET", s.vpath("/vehicle_data"), httpx.Response(200, json=data))
    r = s.run(s.client.read(VIN))
    assert (r.plugged_in, r.charging) == (plugged, charging)


def _mutated(change) -> dict:
    data = fixture("vehicle_data_stopped.json")
    change(data["response"]["charge_state"], data)
    return data


BAD_CHARGE_STATES = {
    "battery_level missing": lambda cs, d: cs.pop("battery_level"),
    "battery_level null": lambda cs, d: cs.update(battery_level=None),
    "battery_level string": lambda cs, d: cs.update(battery_level="77"),
    "battery_level bool": lambda cs, d: cs.update(battery_level=True),
    "battery_level 101": lambda cs, d: cs.update(battery_level=101),
    "battery_level negative": lambda cs, d: cs.update(battery_level=-1),
    "battery_level fraction-scale 7700": lambda cs, d: cs.update(battery_level=7700),
    "charging_state empty": lambda cs, d: cs.update(charging_state=""),
    "charging_state unknown": lambda cs, d: cs.update(charging_state="Plugged"),
    "charging_state missing": lambda cs, d: cs.pop("charging_state"),
    "timestamp missing": lambda cs, d: cs.pop("timestamp"),
    "timestamp string": lambda cs, d: cs.update(timestamp="1705707520649"),
    "timestamp absurd": lambda cs, d: cs.update(timestamp=10**30),
    "charge_limit_soc string": lambda cs, d: cs.update(charge_limit_soc="80"),
    "charge_current_request_max float": lambda cs, d: cs.update(charge_current_request_max=16.5),
    "charger_phases string": lambda cs, d: cs.update(charger_phases="3"),
    "charge_state missing": lambda cs, d: d["response"].pop("charge_state"),
    "charge_state a list": lambda cs, d: d["response"].update(charge_state=[]),
    "response null": lambda cs, d: d.update(response=None),
    "no envelope": lambda cs, d: d.pop("response"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHARGE_STATES))
def test_bad_vehicle_data_is_a_typed_error(s, case):
    s.cloud.on("GET", s.vpath("/vehicle_data"), httpx.Response(200, json=_mutated(BAD_CHARGE_STATES[case])))
    with pytest.raises(TransientUpstream) as err:
        s.run(s.client.read(VIN))
    assert err.value.vehicle_id == VIN
    assert s.client._vehicles[VIN].charge is None  # nothing learned from a bad body


@pytest.mark.parametrize("status, content, ctype", [
    (200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
    (200, fixture_bytes("vehicle_data_stopped.json")[:200], "application/json"),  # truncated
    (200, b"", "application/json"),
    (200, b"\xff\xfe\x00garbage", "application/json"),
    (200, b"[1, 2, 3]", "application/json"),
])
def test_unreadable_bodies_are_transient(s, status, content, ctype):
    s.cloud.on("GET", s.vpath("/vehicle_data"), httpx.Response(status, content=content, headers={"content-type": ctype}))
    with pytest.raises(TransientUpstream) as err:
        s.run(s.client.read(VIN))
    assert type(err.value) is TransientUpstream


def test_html_error_page_with_5xx_is_transient(s):
    s.cloud.on("GET", s.vpath("/vehicle_data"),
               httpx.Response(502, content=b"<html>Bad Gateway</html>", headers={"content-type": "text/html"}))
    with pytest.raises(TransientUpstream, match="HTTP 502"):
        s.run(s.client.read(VIN))


# -- HTTP errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status, name, error", [
    (408, "error_408_asleep.json", VehicleAsleep),
    (408, "error_408_asleep_legacy.json", VehicleAsleep),
    (500, "error_500_proxy_asleep.json", VehicleAsleep),
    (503, "error_503_not_available.json", TransientUpstream),
    (500, "error_500_upstream.json", TransientUpstream),
    (504, "error_504_operation_timedout.json", TransientUpstream),
    (540, "error_540_device.json", TransientUpstream),
    (401, "error_401_mobile_access_disabled.json", UnknownVehicle),
    (403, "error_403_missing_scopes.json", ReauthorizationRequired),
    (406, "error_406_not_a_json_request.json", TransientUpstream),
    (412, "error_412_fleetapi_only.json", TransientUpstream),
])
def test_read_error_fixtures(s, status, name, error):
    s.cloud.on("GET", s.vpath("/vehicle_data"), body(name, status))
    with pytest.raises(error) as err:
        s.run(s.client.read(VIN))
    assert type(err.value) is error
    assert err.value.vehicle_id == VIN
    if error is ReauthorizationRequired:
        assert err.value.account_id == ACCOUNT
    assert s.client.stats["token_retries"] == 0


def test_404_is_unknown_vehicle(s):
    s.cloud.on("GET", s.vpath("/vehicle_data"), httpx.Response(404))
    with pytest.raises(UnknownVehicle):
        s.run(s.client.read(VIN))


@pytest.mark.parametrize("headers, after", [
    ({"Retry-After": "37", "RateLimit-Limit": "200", "RateLimit-Remaining": "0", "RateLimit-Reset": "37"}, 37.0),
    ({"RateLimit-Reset": "12"}, 12.0),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 60.0),
    ({}, 60.0),
])
def test_429_is_rate_limited_with_retry_after_and_scope(s, headers, after):
    s.cloud.on("GET", s.vpath("/vehicle_data"), httpx.Response(429, headers=headers))
    with pytest.raises(RateLimited) as err:
        s.run(s.client.read(VIN))
    assert err.value.retry_after_s == after
    assert err.value.scope == "vehicle"


def test_429_on_discovery_is_account_scoped(s):
    s.cloud.on("GET", "/api/1/vehicles", httpx.Response(429, headers={"Retry-After": "5"}))
    with pytest.raises(RateLimited) as err:
        s.run(s.client.discover(ACCOUNT))
    assert (err.value.scope, err.value.retry_after_s) == ("account", 5.0)


def test_timeout_is_call_timeout(s):
    def hang(request):
        raise httpx.ReadTimeout("timed out", request=request)

    s.cloud.on("GET", s.vpath("/vehicle_data"), hang)
    with pytest.raises(CallTimeout):
        s.run(s.client.read(VIN))


def test_connection_error_is_transient(s):
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    s.cloud.on("GET", s.vpath("/vehicle_data"), refuse)
    with pytest.raises(TransientUpstream) as err:
        s.run(s.client.read(VIN))
    assert type(err.value) is TransientUpstream


# -- tokens ----------------------------------------------------------------------------------------


def test_401_refreshes_once_and_retries(s):
    s.cloud.valid_tokens = set()  # the cloud no longer accepts at-1; the refresh makes at-2 valid
    s.cloud.on("GET", s.vpath("/vehicle_data"), body("vehicle_data_stopped.json"))
    r = s.run(s.client.read(VIN))
    assert r.soc == pytest.approx(0.77)
    assert s.refreshes == 1
    assert [q.headers["authorization"] for q in s.cloud.requests] == ["Bearer at-1", "Bearer at-2"]
    assert s.tokens.store.get(ACCOUNT).refresh_token == "rt-2"


def test_401_after_refresh_is_auth_expired(s):
    async def refresh(account, token):
        return Token("at-9", "rt-9", T0 + timedelta(hours=8))  # still rejected by the cloud

    setup = Setup(refresh)
    setup.cloud.valid_tokens = set()
    with pytest.raises(AuthExpired):
        setup.run(setup.client.read(VIN))
    assert len(setup.cloud.requests) == 2
    setup.run(setup.client.aclose())


def test_refused_refresh_is_reauthorization_required(s):
    async def refresh(account, token):
        raise RefreshRefused("login_required")

    setup = Setup(refresh)
    setup.cloud.valid_tokens = set()
    with pytest.raises(ReauthorizationRequired) as err:
        setup.run(setup.client.read(VIN))
    assert err.value.account_id == ACCOUNT
    setup.run(setup.client.aclose())


def test_token_is_refreshed_ahead_of_expiry(s):
    s.tokens.store.put(ACCOUNT, Token("at-1", "rt-1", T0 + timedelta(seconds=30)))
    s.cloud.valid_tokens = {"at-2"}
    s.cloud.on("GET", s.vpath("/vehicle_data"), body("vehicle_data_stopped.json"))
    s.run(s.client.read(VIN))
    assert s.refreshes == 1 and len(s.cloud.requests) == 1
    assert s.cloud.requests[0].headers["authorization"] == "Bearer at-2"


def test_token_not_in_error_messages(s):
    s.cloud.on("GET", s.vpath("/vehicle_data"), body("error_500_upstream.json", 500))
    with pytest.raises(OEMError) as err:
        s.run(s.client.read(VIN))
    assert "at-1" not in str(err.value) and "at-1" not in repr(err.value)


# -- wake ------------------------------------------------------------------------------------------


def test_wake_polls_summary_until_online(s):
    s.cloud.on("POST", s.vpath("/wake_up"), body("wake_up.json"))
    s.cloud.on("GET", s.vpath(), body("vehicle_summary_asleep.json"), body("vehicle_summary_offline.json"),
               body("vehicle_summary_online.json"))
    s.run(s.client.wake(VIN))
    assert [(q.method, q.url.path) for q in s.cloud.requests] == [
        ("POST", s.vpath("/wake_up")), ("GET", s.vpath()), ("GET", s.vpath()), ("GET", s.vpath())]
    # 2 s, then 2.3 s, then 2.645 s between polls
    assert s.clock.seconds == pytest.approx(2 + 2.3 + 2.645)
    assert s.client._vehicles[VIN].state == "online"


def test_wake_already_online_makes_one_call(s):
    s.cloud.on("POST", s.vpath("/wake_up"), body("vehicle_summary_online.json"))
    s.run(s.client.wake(VIN))
    assert len(s.cloud.requests) == 1 and s.clock.seconds == 0


def test_wake_that_never_completes_is_vehicle_asleep(s):
    s.cloud.on("POST", s.vpath("/wake_up"), body("wake_up.json"))
    s.cloud.on("GET", s.vpath(), body("vehicle_summary_asleep.json"))
    with pytest.raises(VehicleAsleep, match="did not wake"):
        s.run(s.client.wake(VIN))
    assert s.clock.seconds == pytest.approx(60.0)
    assert 5 < len(s.cloud.requests) < 30


def test_wake_with_bad_body_is_transient(s):
    s.cloud.on("POST", s.vpath("/wake_up"), httpx.Response(200, json={"response": {"id": 1}}))
    with pytest.raises(TransientUpstream):
        s.run(s.client.wake(VIN))


def test_command_on_sleeping_car_is_vehicle_asleep(s):
    s.cloud.on("POST", s.vpath("/command/charge_start"), body("error_408_asleep.json", 408))
    with pytest.raises(VehicleAsleep):
        s.run(s.client.start_charging(VIN, key="a1"))
    # not acknowledged: the same key is sent again after a wake
    s.cloud.routes[("POST", s.vpath("/command/charge_start"))] = [lambda r: body("command_ok.json")]
    s.run(s.client.start_charging(VIN, key="a1"))
    assert len(s.cloud.requests) == 2


# -- commands --------------------------------------------------------------------------------------


def _read_first(s):
    s.cloud.on("GET", s.vpath("/vehicle_data"), body("vehicle_data_stopped.json"))
    s.run(s.client.read(VIN))
    s.cloud.requests.clear()


def test_start_and_stop_send_empty_json_bodies(s):
    s.cloud.on("POST", s.vpath("/command/charge_start"), body("command_ok.json"))
    s.cloud.on("POST", s.vpath("/command/charge_stop"), body("command_ok.json"))
    s.run(s.client.start_charging(VIN, key="k1"))
    s.run(s.client.stop_charging(VIN, key="k2"))
    assert [json.loads(q.content) for q in s.cloud.requests] == [{}, {}]
    assert all(q.headers["content-type"] == "application/json" for q in s.cloud.requests)


def test_set_charging_amps_payload(s):
    _read_first(s)
    s.cloud.on("POST", s.vpath("/command/set_charging_amps"), body("command_ok.json"))
    s.run(s.client.set_charging_current(VIN, 12.0, key="amps-1"))
    (req,) = s.cloud.requests
    assert req.url.path == s.vpath("/command/set_charging_amps")
    assert json.loads(req.content) == {"charging_amps": 12}
    assert isinstance(json.loads(req.content)["charging_amps"], int)


@pytest.mark.parametrize("amps", [4.0, 17.0, 10.5, float("nan")])
def test_set_charging_amps_out_of_range_is_rejected_locally(s, amps):
    _read_first(s)
    with pytest.raises(CommandRejected) as err:
        s.run(s.client.set_charging_current(VIN, amps, key="amps"))
    assert err.value.reason == "out_of_range"
    assert s.cloud.requests == []


def test_set_charging_amps_before_any_reading_is_not_capable(s):
    with pytest.raises(CommandRejected) as err:
        s.run(s.client.set_charging_current(VIN, 10, key="amps"))
    assert err.value.reason == "not_capable"


def test_set_charge_limit_payload_and_bounds(s):
    _read_first(s)
    s.cloud.on("POST", s.vpath("/command/set_charge_limit"), body("command_ok.json"))
    s.run(s.client.set_charge_limit(VIN, 0.9, key="lim-1"))
    assert json.loads(s.cloud.requests[0].content) == {"percent": 90}
    for soc in (0.4, 1.01):
        with pytest.raises(CommandRejected) as err:
            s.run(s.client.set_charge_limit(VIN, soc, key=f"lim-{soc}"))
        assert err.value.reason == "out_of_range"
    assert len(s.cloud.requests) == 1


@pytest.mark.parametrize("name, reason", [
    ("command_is_charging.json", "already_charging"),
    ("command_not_charging.json", "not_charging"),
    ("command_complete.json", "fully_charged"),
    ("command_disconnected.json", "not_plugged_in"),
    ("command_unsigned_cmds_hardlocked.json", "not_capable"),
])
def test_command_result_false_is_rejected_with_reason(s, name, reason):
    s.cloud.on("POST", s.vpath("/command/charge_start"), body(name))
    with pytest.raises(CommandRejected) as err:
        s.run(s.client.start_charging(VIN, key="k"))
    assert err.value.reason == reason
    assert err.value.vehicle_id == VIN


def test_unknown_reason_is_other(s):
    s.cloud.on("POST", s.vpath("/command/charge_stop"),
               httpx.Response(200, json={"response": {"result": False, "reason": "something_new"}}))
    with pytest.raises(CommandRejected, match="something_new") as err:
        s.run(s.client.stop_charging(VIN, key="k"))
    assert err.value.reason == "other"


def test_already_set_is_success_and_acknowledged(s):
    _read_first(s)
    s.cloud.on("POST", s.vpath("/command/set_charging_amps"), body("command_already_set.json"))
    s.run(s.client.set_charging_current(VIN, 16, key="same"))
    s.run(s.client.set_charging_current(VIN, 16, key="same"))
    assert len(s.cloud.requests) == 1


@pytest.mark.parametrize("status, name, reason", [
    (403, "error_403_vcp_required.json", "not_capable"),
    (500, "error_500_proxy_unpaired.json", "not_capable"),
    (400, "error_400_invalid_command.json", "not_capable"),
    (400, "error_400_invalid_field.json", "out_of_range"),
    (412, "error_412_fleetapi_only.json", "not_capable"),
    (422, "error_422_invalid_resource.json", "not_capable"),
])
def test_command_http_refusals_are_rejections(s, status, name, reason):
    s.cloud.on("POST", s.vpath("/command/charge_start"), body(name, status))
    with pytest.raises(CommandRejected) as err:
        s.run(s.client.start_charging(VIN, key="k"))
    assert err.value.reason == reason


@pytest.mark.parametrize("payload", [
    {"response": {"reason": ""}},
    {"response": {"result": "true", "reason": ""}},
    {"response": None},
])
def test_malformed_command_result_is_transient_and_not_acknowledged(s, payload):
    s.cloud.on("POST", s.vpath("/command/charge_start"), httpx.Response(200, json=payload))
    with pytest.raises(TransientUpstream):
        s.run(s.client.start_charging(VIN, key="k"))
    s.cloud.routes[("POST", s.vpath("/command/charge_start"))] = [lambda r: body("command_ok.json")]
    s.run(s.client.start_charging(VIN, key="k"))
    assert len(s.cloud.requests) == 2


def test_same_key_sends_the_command_once(s):
    s.cloud.on("POST", s.vpath("/command/charge_start"), body("command_ok.json"))
    s.run(s.client.start_charging(VIN, key="action-7"))
    s.run(s.client.start_charging(VIN, key="action-7"))
    assert len(s.cloud.requests) == 1
    assert s.client.stats["duplicates"] == 1
    s.run(s.client.start_charging(VIN, key="action-8"))
    assert len(s.cloud.requests) == 2


def _slow(name: str):
    """A handler that answers after 5 s of (virtual) time, so calls overlap."""
    async def handler(request):
        await asyncio.sleep(5)
        return body(name)
    return handler


def test_concurrent_calls_with_one_key_share_one_request(s):
    s.cloud.on("POST", s.vpath("/command/charge_stop"), _slow("command_ok.json"))

    async def both():
        await asyncio.gather(s.client.stop_charging(VIN, key="dup"), s.client.stop_charging(VIN, key="dup"))

    s.run(both())
    assert len(s.cloud.requests) == 1
    assert s.client.stats["duplicates"] == 1


def test_concurrent_duplicate_shares_the_failure(s):
    s.cloud.on("POST", s.vpath("/command/charge_stop"), _slow("command_not_charging.json"))

    async def both():
        return await asyncio.gather(s.client.stop_charging(VIN, key="dup"), s.client.stop_charging(VIN, key="dup"),
                                    return_exceptions=True)

    outcomes = s.run(both())
    assert [type(o) for o in outcomes] == [CommandRejected, CommandRejected]
    assert len(s.cloud.requests) == 1


def test_a_caller_that_gives_up_does_not_cancel_the_command_and_a_retry_joins_it(s):
    s.cloud.on("POST", s.vpath("/command/charge_start"), _slow("command_ok.json"))

    async def scenario():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(s.client.start_charging(VIN, key="k"), 1)
        await s.client.start_charging(VIN, key="k")  # the host's retry after its timeout joins the call
        await s.client.start_charging(VIN, key="k")  # and once it landed, it is remembered

    s.run(scenario())
    assert len(s.cloud.requests) == 1 and s.client.stats["duplicates"] == 2


def test_before_a_reading_the_configured_charger_rating_stands_in():
    setup = Setup()
    client = TeslaFleetClient(setup.tokens, setup.clock, region="eu", transport=httpx.MockTransport(setup.cloud),
                              accounts={VIN: ACCOUNT}, min_amps=6, max_amps=16, volts=230, phases=3)
    caps = client.capabilities(VIN)
    assert (caps.min_amps, caps.max_amps, caps.phases) == (6, 16, 3) and caps.kw_per_amp() == pytest.approx(0.69)
    assert not setup.client.capabilities(VIN).can_set_current  # without a rating: not until a reading
    setup.run(client.aclose())
    setup.run(setup.client.aclose())
    setup.loop.close()


def test_rejected_command_is_not_remembered(s):
    s.cloud.on("POST", s.vpath("/command/charge_start"), body("command_disconnected.json"), body("command_ok.json"))
    with pytest.raises(CommandRejected):
        s.run(s.client.start_charging(VIN, key="k"))
    s.run(s.client.start_charging(VIN, key="k"))
    assert len(s.cloud.requests) == 2


# -- no push ---------------------------------------------------------------------------------------


def test_no_webhooks(s):
    s.client.subscribe(lambda r: pytest.fail("never called"))
    with pytest.raises(WebhookRejected):
        s.client.parse_webhook({}, b"{}")
