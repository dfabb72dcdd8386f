"""The Smartcar head against a mock Smartcar v2.0 API serving the documented response bodies:
readings and their units and times, commands and their idempotency, every error contract
mapped to its typed error, and bad answers from the cloud turned into typed errors."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from adapters import smartcar
from adapters.smartcar import SmartcarClient, SmartcarWebhooks
from twin.auth import AccountTokens, MemoryTokenStore, RefreshRefused, Token
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

FIXTURES = Path(smartcar.__file__).parent / "fixtures"
T0 = datetime(2026, 1, 12, 18, 0, tzinfo=UTC)
VID = "36ab27d0-fd9d-4455-823a-ce30af709ffc"
ACCOUNT = "acct-1"
AGE_BATTERY = "2026-01-12T17:58:30.000Z"
AGE_CHARGE = "2026-01-12T17:59:10+00:00"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class Clock:
    """A fixed UTC time for the token store (tokens here expire well after it)."""

    start = T0
    seconds = 0.0

    def now(self):
        return T0

    def at(self, seconds):
        return T0 + timedelta(seconds=seconds)

    async def sleep(self, seconds):
        await asyncio.sleep(0)

    def call_later(self, seconds, callback):
        callback()

    def create_future(self):
        return asyncio.get_running_loop().create_future()


class Cloud:
    """A mock Smartcar API: ``on(method, path, ...)`` queues answers (the last one repeats);
    every request is recorded."""

    def __init__(self):
        self.routes: dict[tuple[str, str], list[httpx.Response]] = {}
        self.requests: list[httpx.Request] = []
        self.raise_error: Exception | None = None

    def on(self, method, path, body="command_success.json", status=200, headers=None, raw: bytes | None = None):
        content = raw if raw is not None else fixture(body)
        self.routes.setdefault((method, "/v2.0" + path), []).append(
            httpx.Response(status, content=content, headers={"Content-Type": "application/json", **(headers or {})}))
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.raise_error is not None:
            raise self.raise_error
        if request.method == "POST" and request.url.path.endswith("/batch") \
                and (request.method, request.url.path) not in self.routes:
            return self._batch(request)
        return self._answer(request.method, request.url.path)

    def _answer(self, method, path):
        queue = self.routes.get((method, path))
        if not queue:
            return httpx.Response(404, content=fixture("error_resource_not_found.json"))
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def _batch(self, request):
        """A batch answered from the GET routes of its paths: each answer becomes an item with its
        own code, except what Smartcar answers for the whole request (401, 429, 430, 5xx) and a
        body that is no JSON object, which become the batch's own answer."""
        base = request.url.path.removesuffix("/batch")
        items = []
        for sub in json.loads(request.content)["requests"]:
            answer = self._answer("GET", base + sub["path"])
            try:
                body = json.loads(answer.content)
            except ValueError:
                body = None
            if answer.status_code in (401, 429, 430) or answer.status_code >= 500 or not isinstance(body, dict):
                return answer
            headers = {k: v for k, v in answer.headers.items() if k.lower() not in ("content-type", "content-length")}
            items.append({"path": sub["path"], "code": answer.status_code, "headers": headers, "body": body})
        return httpx.Response(200, content=json.dumps({"responses": items}).encode())

    def readable(self, battery="battery.json", charge="charge_charging.json"):
        self.on("GET", f"/vehicles/{VID}/battery", battery, headers={"sc-data-age": AGE_BATTERY})
        self.on("GET", f"/vehicles/{VID}/charge", charge, headers={"sc-data-age": AGE_CHARGE})
        return self


def make_client(cloud, refresher=None, webhooks=None, vehicles=None):
    store = MemoryTokenStore()
    store.put(ACCOUNT, Token("at-1", "rt-1", T0 + timedelta(hours=2)))

    async def refuse(account, token):
        raise RefreshRefused("invalid_grant")

    tokens = AccountTokens(store, refresher or refuse, Clock())
    return SmartcarClient(tokens, vehicles={VID: ACCOUNT} if vehicles is None else vehicles,
                          transport=httpx.MockTransport(cloud), webhooks=webhooks,
                          api_origin="https://api.smartcar.test")


def run(coro):
    return asyncio.run(coro)


def raises(coro, error_type):
    with pytest.raises(error_type) as info:
        run(coro)
    assert isinstance(info.value, OEMError) and info.value.vehicle_id == VID
    assert "at-1" not in str(info.value) and "rt-1" not in str(info.value)
    return info.value


# -- the protocol ------------------------------------------------------------------------------


def test_the_client_implements_the_adapter_protocol():
    client = make_client(Cloud())
    assert isinstance(client, OEMAdapter)
    assert client.name == "smartcar" and client.rate_limits == ()
    caps = client.capabilities(VID)
    assert caps.can_set_charge_limit and not caps.can_set_current and not caps.needs_wake
    assert not caps.pushes_telemetry  # no webhook receiver: polled
    assert make_client(Cloud(), webhooks=SmartcarWebhooks("amt")).capabilities(VID).pushes_telemetry


# -- reads -------------------------------------------------------------------------------------


def test_a_reading_has_soc_as_a_fraction_plug_and_charging_state_and_when_the_car_measured_it():
    cloud = Cloud().readable()
    reading = run(make_client(cloud).read(VID))
    assert reading.vehicle_id == VID
    assert reading.soc == pytest.approx(0.62)
    assert reading.plugged_in is True and reading.charging is True
    # the older of the two sc-data-age headers
    assert reading.taken_at == datetime(2026, 1, 12, 17, 58, 30, tzinfo=UTC)
    [batch] = cloud.requests  # one call for both
    assert batch.method == "POST" and batch.url.host == "api.smartcar.test"
    assert batch.url.path == f"/v2.0/vehicles/{VID}/batch"
    assert json.loads(batch.content) == {"requests": [{"path": "/battery"}, {"path": "/charge"}]}
    assert batch.headers["authorization"] == "Bearer at-1"


def test_an_error_inside_a_batch_answer_is_typed_by_its_own_code():
    body = {"responses": [
        {"path": "/battery", "code": 200, "headers": {"sc-data-age": AGE_BATTERY}, "body": {"percentRemaining": 0.5}},
        {"path": "/charge", "code": 409, "headers": {},
         "body": json.loads(fixture("error_vehicle_state_asleep.json"))},
    ]}
    cloud = Cloud().on("POST", f"/vehicles/{VID}/batch", raw=json.dumps(body).encode())
    assert type(raises(make_client(cloud).read(VID), VehicleAsleep)) is VehicleAsleep


@pytest.mark.parametrize("body", [
    pytest.param({"responses": {}}, id="responses-not-a-list"),
    pytest.param({"responses": [{"path": "/battery", "code": 200, "headers": {}, "body": {"percentRemaining": 0.5}}]},
                 id="charge-missing"),
    pytest.param({"responses": [{"path": "/battery", "code": "200", "headers": {}, "body": {}},
                                {"path": "/charge", "code": 200, "headers": {}, "body": {}}]}, id="code-a-string"),
    pytest.param({"responses": [{"path": "/battery", "code": 200, "headers": {"sc-data-age": 5}, "body": {}},
                                {"path": "/charge", "code": 200, "headers": {}, "body": {}}]}, id="header-not-text"),
])
def test_a_malformed_batch_answer_is_a_typed_error_never_a_reading(body):
    cloud = Cloud().on("POST", f"/vehicles/{VID}/batch", raw=json.dumps(body).encode())
    assert type(raises(make_client(cloud).read(VID), TransientUpstream)) is TransientUpstream


@pytest.mark.parametrize("fixture_name, plugged, charging", [
    ("charge_charging.json", True, True),
    ("charge_fully_charged.json", True, False),
    ("charge_not_charging.json", False, False),
])
def test_charge_states_map_to_plugged_and_charging(fixture_name, plugged, charging):
    reading = run(make_client(Cloud().readable(charge=fixture_name)).read(VID))
    assert (reading.plugged_in, reading.charging) == (plugged, charging)


def test_a_reading_without_sc_data_age_is_a_typed_error_not_a_guessed_time():
    cloud = Cloud()
    cloud.on("GET", f"/vehicles/{VID}/battery", "battery.json")
    cloud.on("GET", f"/vehicles/{VID}/charge", "charge_charging.json", headers={"sc-data-age": AGE_CHARGE})
    err = raises(make_client(cloud).read(VID), TransientUpstream)
    assert "sc-data-age" in str(err)


def test_a_malformed_sc_data_age_is_a_typed_error():
    cloud = Cloud()
    cloud.on("GET", f"/vehicles/{VID}/battery", "battery.json", headers={"sc-data-age": "yesterday"})
    cloud.on("GET", f"/vehicles/{VID}/charge", "charge_charging.json", headers={"sc-data-age": AGE_CHARGE})
    raises(make_client(cloud).read(VID), TransientUpstream)


HTML = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@pytest.mark.parametrize("battery, charge", [
    pytest.param(fixture("battery_out_of_range.json"), None, id="soc-62-not-a-fraction"),
    pytest.param(fixture("battery_missing_field.json"), None, id="soc-missing"),
    pytest.param(fixture("battery_wrong_type.json"), None, id="soc-a-string"),
    pytest.param(b'{"percentRemaining": true, "range": 1}', None, id="soc-a-boolean"),
    pytest.param(b'{"percentRemaining": -0.1, "range": 1}', None, id="soc-negative"),
    pytest.param(b'{"percentRemaining": NaN, "range": 1}', None, id="soc-nan"),
    pytest.param(HTML, None, id="html-page-with-200"),
    pytest.param(fixture("battery.json")[:-8], None, id="truncated-json"),
    pytest.param(b"", None, id="empty-body"),
    pytest.param(b"[0.62]", None, id="json-array"),
    pytest.param(None, fixture("charge_wrong_type.json"), id="isPluggedIn-a-string"),
    pytest.param(None, fixture("charge_unknown_state.json"), id="unknown-charge-state"),
    pytest.param(None, b'{"state": "CHARGING"}', id="isPluggedIn-missing"),
    pytest.param(None, fixture("charge_charging.json")[:10], id="charge-truncated"),
])
def test_bad_answers_from_the_cloud_are_typed_errors_never_a_reading(battery, charge):
    cloud = Cloud()
    cloud.on("GET", f"/vehicles/{VID}/battery", raw=fixture("battery.json") if battery is None else battery,
             headers={"sc-data-age": AGE_BATTERY})
    cloud.on("GET", f"/vehicles/{VID}/charge", raw=fixture("charge_charging.json") if charge is None else charge,
             headers={"sc-data-age": AGE_CHARGE})
    err = raises(make_client(cloud).read(VID), TransientUpstream)
    assert type(err) is TransientUpstream


def test_the_charge_limit_is_read_as_a_fraction():
    cloud = Cloud().on("GET", f"/vehicles/{VID}/charge/limit", "charge_limit.json")
    assert run(make_client(cloud).charge_limit(VID)) == pytest.approx(0.8)


def test_a_charge_limit_only_reported_while_plugged_in_is_rejected_with_the_reason():
    cloud = Cloud().on("GET", f"/vehicles/{VID}/charge/limit", "error_vehicle_state_plug_not_connected.json", 409)
    assert raises(make_client(cloud).charge_limit(VID), CommandRejected).reason == "not_plugged_in"


def test_a_charge_limit_out_of_range_is_a_typed_error():
    cloud = Cloud().on("GET", f"/vehicles/{VID}/charge/limit", raw=b'{"limit": 80}')
    raises(make_client(cloud).charge_limit(VID), TransientUpstream)


# -- errors of reads ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, status, error_type", [
    ("error_vehicle_state_asleep.json", 409, VehicleAsleep),
    ("error_vehicle_state_unreachable.json", 409, VehicleAsleep),
    ("error_server_internal.json", 500, TransientUpstream),
    ("error_upstream_no_response.json", 502, TransientUpstream),
    ("error_resource_not_found.json", 404, UnknownVehicle),
    ("error_connected_services_vehicle_missing.json", 400, UnknownVehicle),
    ("error_compatibility_vehicle_not_capable.json", 501, CommandRejected),
])
def test_read_errors_are_typed(name, status, error_type):
    cloud = Cloud().on("GET", f"/vehicles/{VID}/battery", name, status)
    err = raises(make_client(cloud).read(VID), error_type)
    assert type(err) is error_type
    if error_type is CommandRejected:
        assert err.reason == "not_capable"
    else:
        assert "5dea93a1" in str(err)  # the requestId, for support tickets


@pytest.mark.parametrize("name, status", [
    ("error_permission.json", 403),
    ("error_connected_services_subscription.json", 400),
])
def test_account_level_errors_require_the_driver_to_link_again(name, status):
    cloud = Cloud().on("GET", f"/vehicles/{VID}/battery", name, status)
    err = raises(make_client(cloud).read(VID), ReauthorizationRequired)
    assert err.account_id == ACCOUNT


@pytest.mark.parametrize("name, status, headers, retry_after, scope", [
    ("error_rate_limit_vehicle.json", 429, {"Retry-After": "17"}, 17.0, "vehicle"),
    ("error_rate_limit_vehicle.json", 429, {}, 60.0, "vehicle"),
    ("error_rate_limit_smartcar_api.json", 429, {"Retry-After": "5"}, 5.0, "application"),
    ("error_rate_limit_smartcar_api.json", 429, {}, 60.0, "application"),
    ("error_upstream_rate_limit.json", 502, {}, 900.0, "account"),
    ("error_billing_vehicle_request_limit.json", 430, {}, 3600.0, "vehicle"),
    ("error_billing_account_suspended.json", 430, {}, 3600.0, "application"),
])
def test_throttling_says_when_to_retry_and_which_scope(name, status, headers, retry_after, scope):
    cloud = Cloud().on("GET", f"/vehicles/{VID}/battery", name, status, headers=headers)
    err = raises(make_client(cloud).read(VID), RateLimited)
    assert err.retry_after_s == retry_after and err.scope == scope


def test_a_retry_after_given_as_an_http_date_is_converted_to_seconds():
    when = datetime.now(UTC) + timedelta(seconds=120)
    cloud = Cloud().on("GET", f"/vehicles/{VID}/battery", "error_rate_limit_vehicle.json", 429,
                       headers={"Retry-After": when.strftime("%a, %d %b %Y %H:%M:%S GMT")})
    err = raises(make_client(cloud).read(VID), RateLimited)
    assert 100 < err.retry_after_s <= 120


@pytest.mark.parametrize("status, raw", [
    (502, HTML), (504, b""), (503, b"Service Unavailable"), (500, b'{"type": "SERVER", "code": "INT'),
    (409, b"{}"),
])
def test_errors_without_a_smartcar_error_body_are_transient(status, raw):
    cloud = Cloud().on("GET", f"/vehicles/{VID}/battery", raw=raw, status=status)
    assert type(raises(make_client(cloud).read(VID), TransientUpstream)) is TransientUpstream


def test_a_429_without_an_error_body_is_still_rate_limited():
    cloud = Cloud().on("GET", f"/vehicles/{VID}/battery", raw=HTML, status=429, headers={"Retry-After": "30"})
    err = raises(make_client(cloud).read(VID), RateLimited)
    assert err.retry_after_s == 30 and err.scope == "vehicle"


def test_a_timeout_is_a_call_timeout_and_a_connection_failure_is_transient():
    cloud = Cloud().readable()
    cloud.raise_error = httpx.ReadTimeout("read timed out")
    raises(make_client(cloud).read(VID), CallTimeout)
    cloud.raise_error = httpx.ConnectError("connection refused")
    err = raises(make_client(cloud).read(VID), TransientUpstream)
    assert not isinstance(err, CallTimeout)


def test_a_vehicle_no_account_knows_is_unknown_without_a_call():
    cloud = Cloud().readable()
    client = make_client(cloud)
    with pytest.raises(UnknownVehicle):
        run(client.read("not-a-smartcar-vehicle"))
    with pytest.raises(UnknownVehicle):
        run(client.start_charging("not-a-smartcar-vehicle", key="k"))
    assert cloud.requests == []


# -- tokens ------------------------------------------------------------------------------------


def test_a_rejected_token_is_refreshed_once_and_the_call_retried():
    cloud = Cloud()
    cloud.on("GET", f"/vehicles/{VID}/battery", "error_authentication.json", 401)
    cloud.on("GET", f"/vehicles/{VID}/battery", "battery.json", headers={"sc-data-age": AGE_BATTERY})
    cloud.on("GET", f"/vehicles/{VID}/charge", "charge_charging.json", headers={"sc-data-age": AGE_CHARGE})
    refreshed = []

    async def refresh(account, token):
        refreshed.append((account, token.refresh_token))
        return Token("at-2", "rt-2", T0 + timedelta(hours=2))

    client = make_client(cloud, refresher=refresh)
    assert run(client.read(VID)).soc == pytest.approx(0.62)
    assert refreshed == [(ACCOUNT, "rt-1")]
    assert [r.headers["authorization"] for r in cloud.requests] == ["Bearer at-1", "Bearer at-2"]
    assert client.tokens.store.get(ACCOUNT).refresh_token == "rt-2"  # the rotated one is kept


def test_a_token_rejected_again_after_the_refresh_is_auth_expired():
    cloud = Cloud().on("GET", f"/vehicles/{VID}/battery", "error_authentication.json", 401)

    async def refresh(account, token):
        return Token("at-2", "rt-2", T0 + timedelta(hours=2))

    raises(make_client(cloud, refresher=refresh).read(VID), AuthExpired)
    assert len(cloud.requests) == 2


def test_a_refused_refresh_requires_reauthorization():
    cloud = Cloud().on("GET", f"/vehicles/{VID}/battery", "error_authentication.json", 401)
    err = raises(make_client(cloud).read(VID), ReauthorizationRequired)
    assert err.account_id == ACCOUNT and len(cloud.requests) == 1


# -- commands ----------------------------------------------------------------------------------


def test_start_and_stop_post_the_documented_action():
    cloud = Cloud().on("POST", f"/vehicles/{VID}/charge", "command_success.json")
    client = make_client(cloud)
    run(client.start_charging(VID, key="a1"))
    run(client.stop_charging(VID, key="a2"))
    assert [json.loads(r.content) for r in cloud.requests] == [{"action": "START"}, {"action": "STOP"}]
    assert all(r.method == "POST" and r.url.path == f"/v2.0/vehicles/{VID}/charge" for r in cloud.requests)
    assert "sc-unit-system" not in cloud.requests[0].headers


def test_a_command_repeated_with_the_same_key_is_sent_once():
    cloud = Cloud().on("POST", f"/vehicles/{VID}/charge", "command_success.json")
    client = make_client(cloud)
    run(client.start_charging(VID, key="start-1"))
    run(client.start_charging(VID, key="start-1"))
    assert len(cloud.requests) == 1
    run(client.start_charging(VID, key="start-2"))  # a new command is sent
    assert len(cloud.requests) == 2


def test_concurrent_calls_with_the_same_key_share_one_request():
    cloud = Cloud().on("POST", f"/vehicles/{VID}/charge", "command_success.json")
    client = make_client(cloud)

    async def both():
        await asyncio.gather(client.start_charging(VID, key="k"), client.start_charging(VID, key="k"))

    run(both())
    assert len(cloud.requests) == 1


def test_a_caller_that_gives_up_does_not_cancel_the_command_and_a_retry_joins_it():
    requests = []

    async def slow(request):
        requests.append(request)
        await asyncio.sleep(0.05)
        return httpx.Response(200, content=fixture("command_success.json"))

    client = make_client(slow)

    async def scenario():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.start_charging(VID, key="k"), 0.01)
        await client.start_charging(VID, key="k")  # the retry of the host after its timeout
        await client.start_charging(VID, key="k")

    run(scenario())
    assert len(requests) == 1


def test_a_vehicle_list_that_never_ends_is_a_typed_error():
    cloud = Cloud().on("GET", "/vehicles", raw=b'{"vehicles": ["v1"], "paging": {"count": 1000000000, "offset": 0}}')
    with pytest.raises(TransientUpstream, match="did not end"):
        run(make_client(cloud, vehicles={}).discover(ACCOUNT))


def test_a_failed_command_is_sent_again_under_the_same_key():
    cloud = Cloud()
    cloud.on("POST", f"/vehicles/{VID}/charge", "error_server_internal.json", 500)
    cloud.on("POST", f"/vehicles/{VID}/charge", "command_success.json")
    client = make_client(cloud)
    raises(client.start_charging(VID, key="k"), TransientUpstream)
    run(client.start_charging(VID, key="k"))
    run(client.start_charging(VID, key="k"))
    assert len(cloud.requests) == 2


def test_a_command_answered_without_success_is_transient_and_not_remembered():
    cloud = Cloud()
    cloud.on("POST", f"/vehicles/{VID}/charge", raw=b'{"message": "queued"}')
    cloud.on("POST", f"/vehicles/{VID}/charge", raw=HTML)
    cloud.on("POST", f"/vehicles/{VID}/charge", "command_success.json")
    client = make_client(cloud)
    raises(client.start_charging(VID, key="k"), TransientUpstream)
    raises(client.start_charging(VID, key="k"), TransientUpstream)
    run(client.start_charging(VID, key="k"))
    assert len(cloud.requests) == 3


@pytest.mark.parametrize("name, status, reason", [
    ("error_vehicle_state_plug_not_connected.json", 409, "not_plugged_in"),
    ("error_vehicle_state_charging_in_progress.json", 409, "already_charging"),
    ("error_vehicle_state_not_charging.json", 409, "not_charging"),
    ("error_vehicle_state_fully_charged.json", 409, "fully_charged"),
    ("error_vehicle_state_door_open.json", 409, "other"),
    ("error_compatibility_vehicle_not_capable.json", 501, "not_capable"),
    ("error_validation_parameter.json", 400, "other"),
])
def test_a_refused_command_carries_its_reason(name, status, reason):
    cloud = Cloud().on("POST", f"/vehicles/{VID}/charge", name, status)
    assert raises(make_client(cloud).start_charging(VID, key="k"), CommandRejected).reason == reason


@pytest.mark.parametrize("name, status, error_type", [
    ("error_vehicle_state_asleep.json", 409, VehicleAsleep),
    ("error_rate_limit_vehicle.json", 429, RateLimited),
    ("error_upstream_no_response.json", 502, TransientUpstream),
    ("error_resource_not_found.json", 404, UnknownVehicle),
])
def test_command_errors_are_typed(name, status, error_type):
    cloud = Cloud().on("POST", f"/vehicles/{VID}/charge", name, status)
    assert type(raises(make_client(cloud).stop_charging(VID, key="k"), error_type)) is error_type


def test_set_charge_limit_posts_the_fraction_once_per_key():
    cloud = Cloud().on("POST", f"/vehicles/{VID}/charge/limit", "command_success.json")
    client = make_client(cloud)
    run(client.set_charge_limit(VID, 0.8, key="lim-1"))
    run(client.set_charge_limit(VID, 0.8, key="lim-1"))
    assert len(cloud.requests) == 1 and json.loads(cloud.requests[0].content) == {"limit": 0.8}


@pytest.mark.parametrize("soc", [0.49, 1.01, 80])
def test_a_charge_limit_smartcar_does_not_accept_is_rejected_without_a_call(soc):
    cloud = Cloud()
    assert raises(make_client(cloud).set_charge_limit(VID, soc, key="k"), CommandRejected).reason == "out_of_range"
    assert cloud.requests == []


def test_a_charge_limit_refused_by_validation_is_out_of_range():
    cloud = Cloud().on("POST", f"/vehicles/{VID}/charge/limit", "error_validation_parameter.json", 400)
    assert raises(make_client(cloud).set_charge_limit(VID, 0.9, key="k"), CommandRejected).reason == "out_of_range"


def test_wake_and_charging_current_are_not_offered_and_make_no_call():
    cloud = Cloud()
    client = make_client(cloud)
    assert raises(client.wake(VID), CommandRejected).reason == "not_capable"
    assert raises(client.set_charging_current(VID, 16, key="k"), CommandRejected).reason == "not_capable"
    assert cloud.requests == []


# -- discovery ---------------------------------------------------------------------------------


def test_discovery_walks_every_page_and_reads_attributes():
    cloud = Cloud()
    cloud.on("GET", "/vehicles", "vehicles_page1.json")
    cloud.on("GET", "/vehicles", "vehicles_page2.json")
    ids = json.loads(fixture("vehicles_page1.json"))["vehicles"] + json.loads(fixture("vehicles_page2.json"))["vehicles"]
    for vid in ids:
        attrs = json.loads(fixture("attributes.json")) | {"id": vid}
        cloud.on("GET", f"/vehicles/{vid}", raw=json.dumps(attrs).encode())
    cloud.readable()
    client = make_client(cloud, vehicles={})
    found = run(client.discover(ACCOUNT))
    assert [v.vehicle_id for v in found] == ids
    assert all(v.account_id == ACCOUNT and v.model == "TESLA Model 3 2021" for v in found)
    pages = [r for r in cloud.requests if r.url.path == "/v2.0/vehicles"]
    assert [(r.url.params["limit"], r.url.params["offset"]) for r in pages] == [("50", "0"), ("50", "2")]
    assert run(client.read(VID)).soc == pytest.approx(0.62)  # discovered cars are readable


def test_a_malformed_vehicle_list_is_a_typed_error():
    cloud = Cloud().on("GET", "/vehicles", raw=b'{"vehicles": "36ab27d0", "paging": {"count": 1, "offset": 0}}')
    with pytest.raises(TransientUpstream):
        run(make_client(cloud, vehicles={}).discover(ACCOUNT))


def test_discovery_of_an_account_that_is_not_linked_requires_authorization():
    with pytest.raises(ReauthorizationRequired) as info:
        run(make_client(Cloud(), vehicles={}).discover("acct-unknown"))
    assert info.value.account_id == "acct-unknown"


def test_discovery_errors_are_typed():
    cloud = Cloud().on("GET", "/vehicles", "error_rate_limit_smartcar_api.json", 429, headers={"Retry-After": "9"})
    with pytest.raises(RateLimited) as info:
        run(make_client(cloud, vehicles={}).discover(ACCOUNT))
    assert info.value.scope == "application" and info.value.retry_after_s == 9


# -- webhook deliveries through the head ---------------------------------------------------------


def test_a_delivery_feeds_the_sinks_once_and_a_bad_one_is_rejected_with_a_log_line(caplog):
    import hashlib
    import hmac
    import logging

    client = make_client(Cloud(), webhooks=SmartcarWebhooks("amt"))
    got = []
    client.subscribe(got.append)
    body = fixture("webhook_vehicle_state.json")
    signed = {"SC-Signature": hmac.new(b"amt", body, hashlib.sha256).hexdigest()}
    [reading] = client.receive(signed, body)
    assert got == [reading] and reading.soc == 0.75 and reading.charging
    assert client.receive(signed, body) == [] and len(got) == 1  # replayed: dropped, nothing fed
    caplog.set_level(logging.WARNING, logger="adapters.smartcar.client")
    for headers, content in [({"SC-Signature": "00" * 32}, body), ({}, body), (signed, body[:-20])]:
        with pytest.raises(WebhookRejected):
            client.receive(headers, content)
    assert len(got) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all(line.startswith("Smartcar webhook rejected") for line in lines)
    assert "does not match" in lines[0] and "without SC-Signature" in lines[1]
