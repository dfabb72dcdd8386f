"""The API in the loop: a twin run whose every OEM call goes through the real heads (the
Smartcar and Tesla Fleet HTTP clients) to their emulators sends the commands the direct run
sends, at the same times, with the same outcomes and the same KPIs; and a cloud that answers
garbage never crashes the host nor feeds the controller a reading the cloud did not produce."""

import copy
import dataclasses
import itertools
import math
import re
from pathlib import Path

import pytest
import yaml

import twin
from adapters.tesla import head as tesla_head
from adapters.tesla.client import TeslaFleetClient
from twin.scenario import ScenarioError, parse_scenario
from twin.sim.oem import SimulatedOEM

SCENARIO = Path(__file__).parent.parent / "scenarios" / "api_in_the_loop.yaml"
_OUTCOME = re.compile(r"^(\w+ (?:ok|failed: \w+))")


def loaded():
    return yaml.safe_load(SCENARIO.read_text())


def calls(result):
    """Commands as sent, and each call's outcome as the controller saw it (ok, or the typed
    error's class; the messages differ by head), times to the millisecond."""
    ev = result.events[result.events["kind"].isin(["command", "result", "notification", "telemetry", "auth"])]
    t = (ev["time"] - result.events["time"].iloc[0]).dt.total_seconds().round(3)
    detail = ev["detail"].where(ev["kind"] != "result", ev["detail"].str.extract(_OUTCOME, expand=False))
    detail = detail.str.replace(r"(T\d\d:\d\d:\d\d\.\d{3})\d{3}", r"\1", regex=True)
    return list(zip(t, ev["vehicle_id"], ev["kind"], detail))


def test_the_twin_over_http_sends_the_commands_the_direct_run_sends():
    raw = loaded()
    assert raw["oem_transport"] == "http" and {p["api"] for p in raw["oem_profiles"].values()} == {"smartcar", "tesla"}
    direct = copy.deepcopy(raw)
    direct["oem_transport"] = "direct"
    a = twin.simulate(direct, "smart")
    b = twin.simulate(raw, "smart")
    rows_a, rows_b = calls(a), calls(b)
    kinds = {d.split()[0] for _, _, k, d in rows_a if k == "command"}
    assert kinds >= {"read", "start", "stop", "wake", "set_current"}  # every call the run needs, both APIs
    outcomes = {d for _, _, k, d in rows_a if k == "result"}
    assert {"read failed: TransientUpstream", "read failed: VehicleAsleep", "read failed: RateLimited"} <= outcomes
    assert sum(k == "telemetry" for _, _, k, _ in rows_a) > 100  # Smartcar webhooks, delivered and verified
    assert len(rows_a) > 50_000
    assert rows_a == rows_b
    keys = set(a.kpis) - {"wall_seconds"}
    assert keys == set(b.kpis) - {"wall_seconds"}
    differ = {k: (a.kpis[k], b.kpis[k]) for k in keys
              if not (a.kpis[k] == b.kpis[k] or (isinstance(a.kpis[k], float) and math.isnan(a.kpis[k])
                                                 and math.isnan(b.kpis[k])))}
    assert differ == {}
    assert a.kpis["stops_ignored"] > 0 and a.kpis["cars_escalated"] > 0


def test_a_profile_the_api_cannot_serve_is_refused_when_the_scenario_is_loaded():
    raw = loaded()
    raw["oem_profiles"]["smartcar"]["sleep_after_s"] = 600  # Smartcar has no wake-up
    raw["oem_profiles"]["tesla"]["push"] = True  # nor does the Fleet API push
    with pytest.raises(ScenarioError) as err:
        parse_scenario(raw)
    text = str(err.value)
    assert "oem_profiles.smartcar.sleep_after_s" in text and "no wake-up" in text
    assert "oem_profiles.tesla.push" in text and "no webhooks" in text

    raw = loaded()
    del raw["oem_profiles"]["tesla"]["api"]
    with pytest.raises(ScenarioError, match=r"oem_profiles\.tesla\.api: name the OEM API"):
        parse_scenario(raw)
    raw = loaded()
    raw["oem_profiles"]["tesla"]["api"] = "rivian"
    with pytest.raises(ScenarioError, match=r"unknown OEM API 'rivian'.*smartcar, tesla"):
        parse_scenario(raw)
    raw = loaded()
    raw["oem_transport"] = "carrier-pigeon"
    with pytest.raises(ScenarioError, match="oem_transport"):
        parse_scenario(raw)
    raw = loaded()
    raw["oem_transport"] = "direct"
    raw["oem_profiles"]["smartcar"]["sleep_after_s"] = 600  # direct: any behaviour may be simulated
    parse_scenario(raw)


SMALL = {
    "name": "garbage-cloud", "days": 1, "seed": 3, "oem_transport": "http",
    "fleet": [{"name": "t", "count": 12, "accounts": 4, "oem": "tesla"}],
    "oem_profiles": {"tesla": {
        "api": "tesla", "push": False, "charge_on_plug_in": False, "soc_step": 0.01, "charge_limit_control": True,
        "read_latency": {"median_s": 2, "p95_s": 5}, "command_latency": {"median_s": 3, "p95_s": 8},
        "sleep_after_s": 1800, "wake_latency": {"median_s": 10, "p95_s": 20},
    }},
}


def corrupting(app, every=3):
    """``app`` with every ``every``-th vehicle_data answer broken, in turn: an HTML page with a
    200, a truncated body, the SoC as a string, the SoC missing, the SoC in 0..1 not percent."""
    count = itertools.count()
    broken = []

    async def wrapped(scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith("/vehicle_data"):
            return await app(scope, receive, send)
        n = next(count)
        if n % every:
            return await app(scope, receive, send)
        messages = []

        async def keep(message):
            messages.append(message)

        await app(scope, receive, keep)
        start, body = messages[0], b"".join(m.get("body", b"") for m in messages[1:])
        if start["status"] == 200:
            kind = len(broken) % 5
            body = [
                b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                body[: len(body) // 2],
                re.sub(rb'"battery_level":(\d+)', rb'"battery_level":"\1"', body),
                re.sub(rb'"battery_level":\d+,', b"", body),
                re.sub(rb'"battery_level":(\d+)', rb'"battery_level":1000', body),
            ][kind]
            broken.append(kind)
        headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    wrapped.broken = broken
    return wrapped


def test_garbage_from_the_cloud_is_a_typed_error_never_a_crash_or_a_wrong_soc(monkeypatch):
    apps = []
    original = tesla_head.HEAD

    def emulator(cloud, deliver=None, **options):
        app = corrupting(original.emulator(cloud, deliver, **options))
        apps.append(app)
        return app

    monkeypatch.setattr(tesla_head, "HEAD", dataclasses.replace(original, emulator=emulator))
    served, seen = set(), []
    serve_read, read = SimulatedOEM.serve_read, TeslaFleetClient.read

    async def recording_serve(self, vehicle_id, token):
        reading = await serve_read(self, vehicle_id, token)
        served.add((reading.vehicle_id, reading.taken_at, reading.soc, reading.plugged_in, reading.charging))
        return reading

    async def recording_read(self, vehicle_id):
        reading = await read(self, vehicle_id)
        seen.append((reading.vehicle_id, reading.taken_at, reading.soc, reading.plugged_in, reading.charging))
        return reading

    monkeypatch.setattr(SimulatedOEM, "serve_read", recording_serve)
    monkeypatch.setattr(TeslaFleetClient, "read", recording_read)
    result = twin.simulate(SMALL, "smart")  # completes: the host never crashed
    [app] = apps
    assert set(app.broken) == {0, 1, 2, 3, 4} and len(app.broken) > 20
    # every reading the controller got is one the cloud produced, unchanged
    assert seen and all(r in served for r in seen)
    failed = result.events["detail"].str.contains("read failed: TransientUpstream.*unreadable Tesla response")
    assert failed.sum() == len(app.broken)
    assert result.kpis["energy_delivered_kwh"] > 0 and result.kpis["ready_by_met_share_reachable"] > 0.9
