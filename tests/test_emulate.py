"""`twin emulate`: one OEM's emulator served on loopback, called with plain HTTP and with the
project's own heads, its webhooks posted to a receiver, its scenario replay, and clear errors."""

import asyncio
import json
import logging
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

import adapters
from adapters.smartcar.head import CLIENT_ID, CLIENT_SECRET, MANAGEMENT_TOKEN
from adapters.smartcar.webhooks import verify_signature
from twin.cli import app as cli
from twin.emulate import EmulatorError, EmulatorThread, ScaledClock, build_emulator, listen
from twin.host.aio import VirtualTimeLoop

runner = CliRunner()
TWIN = Path(sys.executable).parent / "twin"
T0 = datetime(2026, 1, 12, tzinfo=timezone.utc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for(predicate, timeout_s: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# -- the command, as a user runs it --------------------------------------------------------------


def test_twin_emulate_smartcar_serves_the_api_on_loopback(tmp_path):
    port = free_port()
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([str(TWIN), "emulate", "smartcar", "--port", str(port), "--speed", "60"],
                                stdout=stdout, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        def answering():
            if proc.poll() is not None:
                raise AssertionError(f"twin emulate exited with {proc.returncode}: {err.read_text()}")
            try:
                return httpx.get(f"{base}/v2.0/vehicles", timeout=2)
            except httpx.TransportError:
                return None

        anonymous = wait_for(answering, 15, "the emulator to answer")
        assert anonymous.status_code == 401
        assert anonymous.json()["type"] == "AUTHENTICATION"

        text = out.read_text()
        assert f"base URL          {base}" in text
        assert f"API               {base}/v2.0" in text and f"token endpoint    {base}/oauth/token" in text
        assert CLIENT_ID in text and CLIENT_SECRET in text and MANAGEMENT_TOKEN in text
        tokens = dict(re.findall(r"^account (\S+):.*\n  access token +(\S+)", text, re.M))
        refresh = re.findall(r"^  refresh token +(\S+)", text, re.M)
        assert sorted(tokens) == ["acct-1", "acct-2"] and len(refresh) == 2

        with httpx.Client(base_url=base, timeout=10) as http:
            seen = []
            for account, token in tokens.items():
                listed = http.get("/v2.0/vehicles", headers=bearer(token))
                assert listed.status_code == 200
                body = listed.json()
                assert body["paging"] == {"count": 2, "offset": 0}
                seen += body["vehicles"]
            assert sorted(seen) == ["car-1", "car-2", "car-3", "car-4"]

            acct1 = tokens["acct-1"]
            before = http.get("/v2.0/vehicles/car-1/charge", headers=bearer(acct1))
            assert before.status_code == 200 and before.json() == {"isPluggedIn": True, "state": "NOT_CHARGING"}
            battery = http.get("/v2.0/vehicles/car-1/battery", headers=bearer(acct1))
            assert battery.status_code == 200 and battery.json()["percentRemaining"] == pytest.approx(0.3, abs=0.01)
            assert "sc-data-age" in battery.headers

            started = http.post("/v2.0/vehicles/car-1/charge", headers=bearer(acct1), json={"action": "START"})
            assert started.status_code == 200 and started.json()["status"] == "success"
            after = http.get("/v2.0/vehicles/car-1/charge", headers=bearer(acct1))
            assert after.status_code == 200 and after.json() == {"isPluggedIn": True, "state": "CHARGING"}
            # the car next to it does not start by itself
            assert http.get("/v2.0/vehicles/car-2/charge", headers=bearer(acct1)).json()["state"] == "NOT_CHARGING"

            assert http.post("/v2.0/vehicles/car-1/charge", json={"action": "START"}).status_code == 401
            assert http.get("/v2.0/vehicles/car-3/charge", headers=bearer(acct1)).status_code == 401  # not its car

            # the printed refresh token works at the token endpoint, and rotates the grant
            renewed = http.post("/oauth/token", auth=(CLIENT_ID, CLIENT_SECRET),
                                data={"grant_type": "refresh_token", "refresh_token": refresh[0]})
            assert renewed.status_code == 200, renewed.text
            fresh = renewed.json()["access_token"]
            assert fresh != acct1 and renewed.json()["token_type"] == "Bearer"
            assert http.get("/v2.0/vehicles/car-1/charge", headers=bearer(fresh)).json()["state"] == "CHARGING"
            assert http.get("/v2.0/vehicles/car-1/charge", headers=bearer(acct1)).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
            raise
    assert proc.returncode == 0, err.read_text()
    assert "Application shutdown complete" in err.read_text()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/v2.0/vehicles", timeout=2)


# -- in-process, on a real socket ----------------------------------------------------------------


def test_tesla_emulator_with_plain_http_and_the_fleet_client():
    app, info = build_emulator("tesla", speed=100)
    with EmulatorThread(app) as served, httpx.Client(base_url=served.base_url, timeout=10) as http:
        token = info.tokens["acct-1"].access_token
        woken = http.post("/api/1/vehicles/car-1/wake_up", headers=bearer(token))
        assert woken.status_code == 200 and woken.json()["response"]["state"] == "online"
        assert woken.json()["response"]["vin"] == "car-1"

        data = http.get("/api/1/vehicles/car-1/vehicle_data", headers=bearer(token))
        assert data.status_code == 200
        charge = data.json()["response"]["charge_state"]
        assert charge["battery_level"] == 30 and charge["charging_state"] == "Stopped"
        assert charge["charge_limit_soc"] == 90 and charge["charge_current_request_max"] == 32

        started = http.post("/api/1/vehicles/car-1/command/charge_start", headers=bearer(token), json={})
        assert started.status_code == 200 and started.json() == {"response": {"result": True, "reason": ""}}
        amps = http.post("/api/1/vehicles/car-1/command/set_charging_amps", headers=bearer(token),
                         json={"charging_amps": 16})
        assert amps.status_code == 200 and amps.json()["response"]["result"] is True
        charge = http.get("/api/1/vehicles/car-1/vehicle_data", headers=bearer(token)).json()["response"]["charge_state"]
        assert charge["charging_state"] == "Charging" and charge["charge_amps"] == 16
        assert http.get("/api/1/vehicles/car-1/vehicle_data").status_code == 401

        # the project's own Tesla head against the same emulator
        connected = adapters.head("tesla").connect(info.cloud, served.base_url, None, info.clock)
        client = connected.adapter
        assert connected.receive is None

        async def session():
            try:
                found = await client.discover("acct-2")
                await client.wake("car-3")
                before = await client.read("car-3")
                await client.start_charging("car-3", key="emulate-test-1")
                after = await client.read("car-3")
                return [v.vehicle_id for v in found], before, after
            finally:
                await client.aclose()

        found, before, after = asyncio.run(session())
        assert found == ["car-3", "car-4"]
        assert before.soc == 0.6 and before.plugged_in and not before.charging
        assert after.plugged_in and after.charging


def test_tesla_cars_fall_asleep_and_wake_up():
    app, info = build_emulator("tesla", speed=1000)  # 900 s without a call: asleep within a second
    with EmulatorThread(app) as served, httpx.Client(base_url=served.base_url, timeout=10) as http:
        token = info.tokens["acct-1"].access_token
        assert http.post("/api/1/vehicles/car-2/wake_up", headers=bearer(token)).status_code == 200
        assert http.get("/api/1/vehicles/car-2/vehicle_data", headers=bearer(token)).status_code == 200

        def summary_state():  # the vehicle summary is not a call to the car: it does not wake it
            return http.get("/api/1/vehicles/car-2", headers=bearer(token)).json()["response"]["state"] == "asleep"

        wait_for(summary_state, 5, "car-2 to fall asleep")
        asleep = http.get("/api/1/vehicles/car-2/vehicle_data", headers=bearer(token))
        assert asleep.status_code == 408 and "asleep" in asleep.json()["error"]
        woken = http.post("/api/1/vehicles/car-2/wake_up", headers=bearer(token))
        assert woken.status_code == 200 and woken.json()["response"]["state"] == "online"
        assert http.get("/api/1/vehicles/car-2/vehicle_data", headers=bearer(token)).status_code == 200


class _Receiver(BaseHTTPRequestHandler):
    got: "queue.Queue[tuple[str, dict[str, str], bytes]]"

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.got.put((self.path, dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    got: queue.Queue = queue.Queue()
    handler = type("Receiver", (_Receiver,), {"got": got})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks", got
    finally:
        server.shutdown()
        server.server_close()


def test_smartcar_webhook_reaches_a_receiver_signed(receiver):
    url, got = receiver
    app, info = build_emulator("smartcar", speed=100, webhook_url=url)
    with EmulatorThread(app) as served, httpx.Client(base_url=served.base_url, timeout=10) as http:
        token = info.tokens["acct-1"].access_token
        started = http.post("/v2.0/vehicles/car-2/charge", headers=bearer(token), json={"action": "START"})
        assert started.status_code == 200
        path, headers, body = got.get(timeout=5)
    assert path == "/hooks"
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["content-type"] == "application/json"
    assert verify_signature(MANAGEMENT_TOKEN, headers["sc-signature"], body)
    assert not verify_signature(MANAGEMENT_TOKEN, headers["sc-signature"], body + b" ")
    delivery = json.loads(body)
    assert delivery["eventType"] == "VEHICLE_STATE"
    assert delivery["data"]["vehicle"]["id"] == "car-2" and delivery["data"]["user"]["id"] == "acct-1"
    signals = {s["code"]: s["body"]["value"] for s in delivery["data"]["signals"]}
    assert signals["charge-ischarging"] is True and signals["charge-ischargingcableconnected"] is True
    assert info.poster.stats == {"delivered": 1, "failed": 0}


def test_a_failing_webhook_is_logged_and_the_emulator_carries_on(caplog):
    url = f"http://127.0.0.1:{free_port()}/hooks"  # nobody listens there
    app, info = build_emulator("smartcar", speed=100, webhook_url=url)
    with caplog.at_level(logging.WARNING, logger="twin.emulate"), EmulatorThread(app) as served, \
            httpx.Client(base_url=served.base_url, timeout=10) as http:
        token = info.tokens["acct-2"].access_token
        assert http.post("/v2.0/vehicles/car-3/charge", headers=bearer(token), json={"action": "START"}).status_code == 200
        wait_for(lambda: info.poster.stats["failed"] == 1, what="the failed delivery")
        assert http.get("/v2.0/vehicles/car-3/charge", headers=bearer(token)).json()["state"] == "CHARGING"
    assert any(f"webhook delivery to {url} failed" in r.getMessage() for r in caplog.records)


# -- a scenario's cars and sessions --------------------------------------------------------------

REPLAY = {
    "name": "emulate-replay",
    "start": "2026-01-12T00:00:00Z",
    "days": 2,
    "seed": 2,
    "oem_profiles": {
        "sc": {"api": "smartcar", "charge_limit_control": True, "charge_on_plug_in": False},
        "other": {},
    },
    "fleet": [
        {"name": "a", "count": 3, "accounts": 1, "oem": "sc"},
        {"name": "b", "count": 2, "oem": "other"},
    ],
}


def test_scenario_cars_are_served_and_their_sessions_replayed():
    app, info = build_emulator("smartcar", scenario=REPLAY)
    assert info.profile_name == "sc" and info.clock.start == T0
    assert info.accounts == {"a-account-1": ["a-0001", "a-0002", "a-0003"]}
    sessions = info.replay_sessions
    assert sessions >= 2  # a day's sessions of group a's cars only
    token = info.tokens["a-account-1"].access_token
    first = info.first_arrival_s()
    assert first is not None and first > 3600

    loop = VirtualTimeLoop()
    info.clock.begin(loop)

    async def plugged(http) -> dict[str, bool]:
        out = {}
        for vid in info.accounts["a-account-1"]:
            r = await http.get(f"/v2.0/vehicles/{vid}/charge", headers=bearer(token))
            assert r.status_code == 200
            out[vid] = r.json()["isPluggedIn"]
        return out

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://emulator") as http:
            task = asyncio.ensure_future(info.replay())
            assert not any((await plugged(http)).values())
            await asyncio.sleep(first + 1)
            now = await plugged(http)
            battery = await http.get(f"/v2.0/vehicles/{next(v for v, p in now.items() if p)}/battery",
                                     headers=bearer(token))
            await task  # every car has left by the end
            return now, battery, await plugged(http)

    try:
        mid, battery, end = loop.run_until_complete(main())
    finally:
        loop.close()
    assert any(mid.values()) and not any(end.values())
    assert battery.headers["sc-data-age"].startswith("2026-01-12T")  # readings carry the scenario's dates
    kinds = [kind for _, _, kind, _ in info.world.log]
    assert kinds.count("plug_in") == sessions and kinds.count("unplug") == sessions


def test_scaled_clock_runs_emulated_time_faster():
    loop = VirtualTimeLoop()
    clock = ScaledClock(T0, speed=60)
    fired = []

    async def main():
        clock.begin()
        clock.call_later(120, lambda: fired.append(loop.time()))
        await clock.sleep(600)

    loop.run_until_complete(main())
    loop.close()
    assert clock.seconds == pytest.approx(600) and clock.now() == datetime(2026, 1, 12, 0, 10, tzinfo=timezone.utc)
    assert fired == [pytest.approx(2.0)]


# -- bad input -----------------------------------------------------------------------------------


def _error_line(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), res.stderr
    assert "Traceback" not in res.output
    return " ".join(lines)


def test_unknown_oem_names_the_registered_heads():
    line = _error_line(runner.invoke(cli, ["emulate", "nissan", "--port", "0"]))
    assert "no OEM head 'nissan'; the registered heads are smartcar, tesla" in line


def test_webhook_url_for_an_api_without_webhooks():
    line = _error_line(runner.invoke(cli, ["emulate", "tesla", "--port", "0", "--webhook-url", "http://127.0.0.1:9/h"]))
    assert "the tesla API sends no webhooks" in line


def test_scenario_without_a_profile_for_the_api(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("days: 1\nfleet:\n  - name: c\n    count: 2\n")
    line = _error_line(runner.invoke(cli, ["emulate", "smartcar", "--port", "0", "--scenario", str(path)]))
    assert line.startswith(f"error: {path}: no OEM profile with api: smartcar")
    assert "its profiles are default (api: none)" in line and "--profile" in line


def test_scenario_profile_the_head_cannot_serve(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("days: 1\noem_profiles:\n  t: {api: tesla, charge_limit_control: true, soc_step: 0.01}\n"
                    "fleet:\n  - name: c\n    count: 2\n    oem: t\n")
    line = _error_line(runner.invoke(cli, ["emulate", "tesla", "--port", "0", "--scenario", str(path)]))
    assert "oem_profiles.t.push: the Fleet API sends no webhooks" in line


@pytest.mark.parametrize("args, expected", [
    (["--speed", "0"], "--speed must be a positive number"),
    (["--profile", "sc"], "--profile picks an OEM profile of a --scenario"),
    (["--webhook-url", "not a url"], "is not an http(s) URL"),
])
def test_bad_options(args, expected):
    assert expected in _error_line(runner.invoke(cli, ["emulate", "smartcar", "--port", "0", *args]))


def test_a_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(EmulatorError, match="cannot listen on 127.0.0.1:.*pick another --port"):
            listen("127.0.0.1", taken.getsockname()[1])
