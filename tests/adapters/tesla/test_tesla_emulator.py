"""The Tesla emulator speaks the Fleet API: the /api/1 paths, the response envelope, 408 for a
sleeping car and wake_up, command results, 429 headers, and the token endpoint with PKCE and
single-use refresh tokens."""

import base64
import hashlib
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from emulated import Emulated  # noqa: E402

from adapters.tesla.client import parse_charge_state  # noqa: E402
from adapters.tesla.emulator import create_app  # noqa: E402

PROFILE = {"push": False, "charge_limit_control": True, "soc_step": 0.01, "token_lifetime_s": 28800,
           "current_control": {"min_amps": 5, "max_amps": 32, "volts": 230, "phases": 3}}


@pytest.fixture
def make():
    made = []

    def make(**profile):
        e = Emulated(create_app, {**PROFILE, **profile}, client_id="id", client_secret="secret")
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def data(e, vin="car-a"):
    return e.request("GET", f"/api/1/vehicles/{vin}/vehicle_data", params={"endpoints": "charge_state"},
                     headers=e.auth())


def command(e, name, body=None, vin="car-a"):
    return e.request("POST", f"/api/1/vehicles/{vin}/command/{name}", headers=e.auth(), json=body or {})


def test_vehicles_summary_and_charge_state_in_the_envelope(make):
    e = make()
    listed = e.request("GET", "/api/1/vehicles", headers=e.auth()).json()
    assert listed["count"] == 2 and [v["vin"] for v in listed["response"]] == ["car-a", "car-b"]
    assert all(v["state"] == "online" and isinstance(v["id"], int) for v in listed["response"])
    e.plug_in("car-a", soc=0.62)
    body = data(e).json()
    cs = body["response"]["charge_state"]
    assert (cs["battery_level"], cs["charging_state"], cs["charge_limit_soc"]) == (62, "Stopped", 90)
    assert cs["charge_current_request_max"] == 32 and isinstance(cs["timestamp"], int)
    state = parse_charge_state("car-a", body["response"])  # what the head makes of it
    assert (state.soc, state.plugged_in, state.charging) == (0.62, True, False)
    assert data(e, "car-b").json()["response"]["charge_state"]["charging_state"] == "Disconnected"
    assert e.request("GET", "/status").text == "ok"


def test_a_sleeping_car_answers_408_until_woken(make):
    e = make(sleep_after_s=600, wake_latency={"median_s": 20, "p95_s": 20})
    e.plug_in("car-a")
    e.advance(700)
    assert e.request("GET", "/api/1/vehicles/car-a", headers=e.auth()).json()["response"]["state"] == "asleep"
    asleep = data(e)
    assert asleep.status_code == 408
    assert asleep.json() == {"response": None, "error": "vehicle unavailable: vehicle is offline or asleep",
                             "error_description": ""}
    assert command(e, "charge_start").status_code == 408
    t = e.clock.seconds
    woke = e.request("POST", "/api/1/vehicles/car-a/wake_up", headers=e.auth())
    assert woke.status_code == 200 and woke.json()["response"]["state"] == "online"
    assert e.clock.seconds - t == pytest.approx(20)  # answered once the car is awake
    assert data(e).status_code == 200


def test_commands_and_their_results(make):
    e = make()
    assert command(e, "charge_start").json() == {"response": {"result": False, "reason": "disconnected"}}
    e.plug_in("car-a", soc=0.3)
    assert command(e, "set_charging_amps", {"charging_amps": 10}).json()["response"]["result"] is True
    assert command(e, "charge_start").json()["response"] == {"result": True, "reason": ""}
    cs = data(e).json()["response"]["charge_state"]
    assert cs["charging_state"] == "Charging" and cs["charge_current_request"] == 10
    assert (cs["charger_voltage"], cs["charger_phases"]) == (230, 3)
    assert e.cars["car-a"].cap_kw == pytest.approx(10 * 230 * 3 / 1000)
    assert command(e, "set_charge_limit", {"percent": 80}).json()["response"]["result"] is True
    assert e.cars["car-a"].limit == 0.8
    assert command(e, "charge_stop").json()["response"]["result"] is True and not e.cars["car-a"].charging
    # what the API refuses, in its words
    assert command(e, "set_charging_amps", {"charging_amps": "ten"}).json()["error"] == "invalid_field"
    assert command(e, "set_charging_amps", {"charging_amps": 64}).json()["error"] == "invalid_field"
    assert command(e, "set_charge_limit", {"percent": 20}).status_code == 400
    assert command(e, "honk_horn").json()["error"] == "invalid_command"
    not_json = e.request("POST", "/api/1/vehicles/car-a/command/charge_start", headers=e.auth(), content=b"x")
    assert not_json.status_code == 406 and not_json.json()["error"] == "not_a_JSON_request"


def test_the_error_contract(make):
    e = make(calls_per_vehicle_per_hour=1)
    unauthenticated = e.request("GET", "/api/1/vehicles/car-a/vehicle_data")
    assert unauthenticated.status_code == 401 and unauthenticated.content == b""
    assert data(e, "no-such-vin").status_code == 404
    assert data(e).status_code == 200
    limited = data(e)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0 and limited.headers["RateLimit-Limit"] == "1"
    assert limited.headers["RateLimit-Remaining"] == "0"
    failing = make(failure_rate=0.95)
    answers = [data(failing) for _ in range(10)]
    assert {a.status_code for a in answers} <= {200, 500} and any(
        a.json()["error"] == "upstream internal error" for a in answers if a.status_code == 500)


def test_the_auth_server_with_pkce_and_single_use_refresh_tokens(make):
    e = make()
    verifier = "v" * 64
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    r = e.request("GET", "/oauth2/v3/authorize", params={
        "response_type": "code", "client_id": "id", "redirect_uri": "https://app.example/cb", "state": "st",
        "code_challenge": challenge, "code_challenge_method": "S256", "login_hint": "acct-2"})
    assert r.status_code == 302
    code = parse_qs(urlparse(r.headers["location"]).query)["code"][0]
    form = {"grant_type": "authorization_code", "client_id": "id", "client_secret": "secret", "code": code,
            "redirect_uri": "https://app.example/cb", "code_verifier": "wrong" * 10}
    assert e.request("POST", "/oauth2/v3/token", data=form).json()["error"] == "invalid_auth_code"
    r = e.request("GET", "/oauth2/v3/authorize", params={
        "response_type": "code", "client_id": "id", "redirect_uri": "https://app.example/cb",
        "code_challenge": challenge, "code_challenge_method": "S256", "login_hint": "acct-2"})
    form["code"], form["code_verifier"] = parse_qs(urlparse(r.headers["location"]).query)["code"][0], verifier
    tokens = e.request("POST", "/oauth2/v3/token", data=form).json()
    assert tokens["expires_in"] == 28800 and tokens["token_type"] == "Bearer" and tokens["refresh_token"]
    cars = e.request("GET", "/api/1/vehicles", headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
    assert [v["vin"] for v in cars["response"]] == ["car-c"]
    refresh = {"grant_type": "refresh_token", "client_id": "id", "refresh_token": tokens["refresh_token"]}
    assert e.request("POST", "/oauth2/v3/token", data=refresh).status_code == 200
    e.advance(61)
    reused = e.request("POST", "/oauth2/v3/token", data=refresh)
    assert reused.status_code == 401 and reused.json()["error"] == "login_required"
    plain = e.request("GET", "/oauth2/v3/authorize", params={"response_type": "code", "client_id": "id",
                                                              "redirect_uri": "https://app.example/cb"})
    assert plain.status_code == 400  # PKCE is required
