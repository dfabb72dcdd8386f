"""The Smartcar emulator speaks Smartcar's v2.0 API: paths, bodies, status codes, error bodies,
headers, the token endpoint and Connect, and signed webhook deliveries."""

import base64
import hashlib
import hmac
import json
import math
import sys
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from emulated import Emulated  # noqa: E402

from adapters.smartcar.emulator import create_app, percent_of  # noqa: E402
from adapters.smartcar.webhooks import SmartcarWebhooks  # noqa: E402

BASIC = {"Authorization": "Basic " + base64.b64encode(b"id:secret").decode()}


@pytest.fixture
def make():
    made = []

    def make(deliver=None, **profile):
        e = Emulated(create_app, {"charge_limit_control": True, "token_lifetime_s": 7200, **profile},
                     client_id="id", client_secret="secret", management_token="amt", deliver=deliver)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def error(response, status, etype, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["type"], body["code"], body["statusCode"]) == (etype, code, status)
    assert body["requestId"] and body["description"] and body["docURL"].startswith("https://smartcar.com/docs/")
    return body


def test_vehicles_are_listed_per_account_with_paging(make):
    e = make()
    r = e.request("GET", "/v2.0/vehicles", headers=e.auth())
    assert r.status_code == 200 and r.json() == {"vehicles": ["car-a", "car-b"], "paging": {"count": 2, "offset": 0}}
    page = e.request("GET", "/v2.0/vehicles", params={"limit": 1, "offset": 1}, headers=e.auth()).json()
    assert page == {"vehicles": ["car-b"], "paging": {"count": 2, "offset": 1}}
    assert e.request("GET", "/v2.0/vehicles", headers=e.auth("acct-2")).json()["vehicles"] == ["car-c"]
    attrs = e.request("GET", "/v2.0/vehicles/car-a", headers=e.auth()).json()
    assert set(attrs) == {"id", "make", "model", "year"} and attrs["id"] == "car-a"
    error(e.request("GET", "/v2.0/vehicles", params={"limit": 500}, headers=e.auth()), 400, "VALIDATION", "PARAMETER")


def test_reads_have_the_documented_bodies_and_the_data_age_header(make):
    e = make()
    e.plug_in("car-a", soc=0.62)
    battery = e.request("GET", "/v2.0/vehicles/car-a/battery", headers=e.auth())
    assert battery.status_code == 200 and battery.json()["percentRemaining"] == 0.62
    age = battery.headers["sc-data-age"]
    assert age.endswith("Z") and datetime.fromisoformat(age) <= e.clock.now()
    assert battery.headers["sc-request-id"]
    assert e.request("GET", "/v2.0/vehicles/car-a/charge", headers=e.auth()).json() == {
        "isPluggedIn": True, "state": "NOT_CHARGING"}
    assert e.request("GET", "/v2.0/vehicles/car-b/charge", headers=e.auth()).json()["isPluggedIn"] is False
    assert e.request("GET", "/v2.0/vehicles/car-a/charge/limit", headers=e.auth()).json() == {"limit": 0.9}
    batch = e.request("POST", "/v2.0/vehicles/car-a/batch", headers=e.auth(),
                      json={"requests": [{"path": "/battery"}, {"path": "/charge"}]}).json()
    assert [(i["path"], i["code"]) for i in batch["responses"]] == [("/battery", 200), ("/charge", 200)]
    assert all("sc-data-age" in i["headers"] for i in batch["responses"])
    error(e.request("POST", "/v2.0/vehicles/car-a/batch", headers=e.auth(), json={"requests": [{"path": "/odometer"}]}),
          400, "VALIDATION", "PARAMETER")


def test_start_stop_and_limit_commands_and_their_refusals(make):
    e = make()
    error(e.request("POST", "/v2.0/vehicles/car-a/charge", headers=e.auth(), json={"action": "START"}),
          409, "VEHICLE_STATE", "CHARGING_PLUG_NOT_CONNECTED")
    e.plug_in("car-a", soc=0.3)
    ok = e.request("POST", "/v2.0/vehicles/car-a/charge", headers=e.auth(), json={"action": "START"})
    assert ok.status_code == 200 and ok.json()["status"] == "success"
    assert e.cars["car-a"].charging
    error(e.request("POST", "/v2.0/vehicles/car-a/charge", headers=e.auth(), json={"action": "PAUSE"}),
          400, "VALIDATION", "PARAMETER")
    error(e.request("POST", "/v2.0/vehicles/car-a/charge", headers=e.auth(), content=b"<xml/>"),
          400, "VALIDATION", "PARAMETER")
    assert e.request("POST", "/v2.0/vehicles/car-a/charge/limit", headers=e.auth(), json={"limit": 0.7}).status_code == 200
    assert e.cars["car-a"].limit == 0.7
    error(e.request("POST", "/v2.0/vehicles/car-a/charge/limit", headers=e.auth(), json={"limit": 0.4}),
          400, "VALIDATION", "PARAMETER")
    e.request("POST", "/v2.0/vehicles/car-a/charge", headers=e.auth(), json={"action": "STOP"})
    assert not e.cars["car-a"].charging
    e.world.unplug(e.cars["car-a"], e.clock.seconds)
    error(e.request("POST", "/v2.0/vehicles/car-a/charge", headers=e.auth(), json={"action": "STOP"}),
          409, "VEHICLE_STATE", "CHARGING_PLUG_NOT_CONNECTED")


def test_the_error_contract(make):
    e = make(calls_per_vehicle_per_hour=1)
    error(e.request("GET", "/v2.0/vehicles/car-a/battery"), 401, "AUTHENTICATION", None)
    error(e.request("GET", "/v2.0/vehicles/nope/battery", headers=e.auth()), 404, "RESOURCE_NOT_FOUND", "PATH")
    assert e.request("GET", "/v2.0/vehicles/car-a/battery", headers=e.auth()).status_code == 200
    limited = e.request("GET", "/v2.0/vehicles/car-a/battery", headers=e.auth())
    body = error(limited, 429, "RATE_LIMIT", "VEHICLE")
    assert 0 < int(limited.headers["Retry-After"]) <= 3600 and body["resolution"]["type"] == "RETRY_LATER"
    e.advance(7300)  # the linked access token has expired
    error(e.request("GET", "/v2.0/vehicles/car-b/battery", headers=e.auth()), 401, "AUTHENTICATION", None)
    failing = make(failure_rate=0.95)
    codes = {failing.request("GET", "/v2.0/vehicles/car-a/battery", headers=failing.auth()).status_code
             for _ in range(10)}
    assert 502 in codes and codes <= {200, 502}


def test_the_token_endpoint_rotates_refresh_tokens(make):
    e = make()
    first = e.cloud.linked_token("acct-1")
    r = e.request("POST", "/oauth/token", headers=BASIC,
                  data={"grant_type": "refresh_token", "refresh_token": first.refresh_token})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 7200 and body["refresh_token"] != first.refresh_token
    assert e.request("GET", "/v2.0/vehicles", headers={"Authorization": f"Bearer {body['access_token']}"}).status_code == 200
    e.advance(61)  # the used refresh token dies a minute after use
    again = e.request("POST", "/oauth/token", headers=BASIC,
                      data={"grant_type": "refresh_token", "refresh_token": first.refresh_token})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    bad = e.request("POST", "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": "x"},
                    headers={"Authorization": "Basic " + base64.b64encode(b"id:wrong").decode()})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"


def test_connect_redirects_with_a_code_that_is_exchanged_once(make):
    e = make()
    r = e.request("GET", "/oauth/authorize", params={"response_type": "code", "client_id": "id", "user": "acct-2",
                                                     "redirect_uri": "https://app.example/cb", "state": "s-42"})
    assert r.status_code == 302
    query = parse_qs(urlparse(r.headers["location"]).query)
    assert query["state"] == ["s-42"] and r.headers["location"].startswith("https://app.example/cb?")
    form = {"grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": "https://app.example/cb"}
    tokens = e.request("POST", "/oauth/token", headers=BASIC, data=form).json()
    listed = e.request("GET", "/v2.0/vehicles", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert listed.json()["vehicles"] == ["car-c"]
    assert e.request("POST", "/oauth/token", headers=BASIC, data=form).json()["error"] == "invalid_grant"
    assert e.request("GET", "/oauth/authorize", params={"client_id": "other"}).status_code == 400


def test_changes_are_pushed_as_signed_deliveries_a_head_accepts(make):
    deliveries = []
    e = make(deliver=lambda headers, body: deliveries.append((headers, body)), push=True)
    e.plug_in("car-a", soc=0.3)
    e.request("POST", "/v2.0/vehicles/car-a/charge", headers=e.auth(), json={"action": "START"})
    e.advance(1)
    assert len(deliveries) == 2  # plug-in, then charging started
    receiver = SmartcarWebhooks("amt")
    readings = [r for headers, body in deliveries for r in receiver.parse(headers, body)]
    assert [(r.vehicle_id, r.plugged_in, r.charging, r.soc) for r in readings] == [
        ("car-a", True, False, 0.3), ("car-a", True, True, 0.3)]
    headers, body = deliveries[0]
    assert headers["SC-Signature"] == hmac.new(b"amt", body, hashlib.sha256).hexdigest()
    assert json.loads(body)["eventType"] == "VEHICLE_STATE"
    assert receiver.parse(headers, body) == []  # a redelivery


def test_a_pushed_soc_reaches_the_head_unchanged_when_it_is_whole_hundredths_and_within_a_bit_otherwise():
    assert all(percent_of(k / 100) / 100.0 == k / 100 for k in range(101))  # clouds report whole percent
    for soc in (1 / 3, 0.123456789, 2 / 7):
        assert abs(percent_of(soc) / 100.0 - soc) <= math.ulp(soc)
