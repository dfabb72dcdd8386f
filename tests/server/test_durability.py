"""End to end over real HTTP, and a crash: the server (``twin serve``) and both OEM emulators
(``twin emulate``) run as separate processes on 127.0.0.1. A user links an emulated Smartcar and
an emulated Tesla account through their consent pages, asks for charge now, the cars charge;
the server is killed with SIGKILL and started again: the cars, preferences and commands are all
still there, control resumes, and no start command reached a car twice."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.fernet import Fernet

TWIN = str(Path(sys.executable).parent / "twin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} ({last})")


class Process:
    def __init__(self, args, log: Path, env=None, cwd=None):
        self.log = log
        self.handle = open(log, "ab")
        self.proc = subprocess.Popen(args, stdout=self.handle, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    def text(self) -> str:
        self.handle.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig=signal.SIGINT, timeout=15.0):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.handle.close()


@pytest.fixture
def world(tmp_path):
    ports = {"smartcar": free_port(), "tesla": free_port(), "server": free_port()}
    base = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
    unbuffered = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the access logs are what the test counts
    emulators = {oem: Process([TWIN, "emulate", oem, "--port", str(ports[oem])], tmp_path / f"{oem}.log",
                              env=unbuffered) for oem in ("smartcar", "tesla")}
    env = {**os.environ,
           "CHARGETWIN_TOKEN_KEY": Fernet.generate_key().decode(), "CHARGETWIN_JWT_SECRET": "s" * 40,
           "CHARGETWIN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/server.db",
           "CHARGETWIN_PUBLIC_URL": base["server"], "CHARGETWIN_SNAPSHOT_INTERVAL_S": "0.5",
           "CHARGETWIN_SMARTCAR_CLIENT_ID": "emulator-client-id",
           "CHARGETWIN_SMARTCAR_CLIENT_SECRET": "emulator-client-secret",
           "CHARGETWIN_SMARTCAR_MANAGEMENT_TOKEN": "emulator-amt",
           "CHARGETWIN_SMARTCAR_API_URL": base["smartcar"],
           "CHARGETWIN_SMARTCAR_TOKEN_URL": f"{base['smartcar']}/oauth/token",
           "CHARGETWIN_SMARTCAR_CONNECT_URL": f"{base['smartcar']}/oauth/authorize",
           "CHARGETWIN_TESLA_CLIENT_ID": "emulator-client-id", "CHARGETWIN_TESLA_CLIENT_SECRET": "emulator-client-secret",
           "CHARGETWIN_TESLA_API_URL": base["tesla"],
           "CHARGETWIN_TESLA_TOKEN_URL": f"{base['tesla']}/oauth2/v3/token",
           "CHARGETWIN_TESLA_AUTHORIZE_URL": f"{base['tesla']}/oauth2/v3/authorize"}
    for oem in ("smartcar", "tesla"):
        wait_until(lambda o=oem: emulators[o].proc.poll() is None and httpx.get(
            f"{base[o]}/docs", timeout=1).status_code == 200, 20, f"the {oem} emulator")

    def serve():
        p = Process([TWIN, "serve", "--port", str(ports["server"])], tmp_path / "server.log", env=env, cwd=tmp_path)
        wait_until(lambda: p.proc.poll() is None and httpx.get(f"{base['server']}/health", timeout=1).json(), 30,
                   "the server")
        return p

    made = []
    yield base, emulators, lambda: made.append(serve()) or made[-1]
    for p in made:
        p.stop()
    for e in emulators.values():
        e.stop()


def starts(log: str, oem: str, vehicle: str) -> int:
    """Start commands the emulator received for ``vehicle`` (its access log)."""
    pattern = {"smartcar": rf'"POST /v2\.0/vehicles/{vehicle}/charge HTTP', "tesla":
               rf'"POST /api/1/vehicles/{vehicle}/command/charge_start HTTP'}[oem]
    return len(re.findall(pattern, log))


def test_link_charge_crash_and_resume_without_a_command_sent_twice(world):
    base, emulators, serve = world
    server = serve()
    c = httpx.Client(base_url=base["server"], timeout=20)
    assert c.post("/auth/signup", json={"email": "driver@example.org", "password": "a long password"}).status_code == 201
    token = c.post("/auth/token", data={"username": "driver@example.org", "password": "a long password"}).json()
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    linked = {}
    for oem in ("smartcar", "tesla"):
        url = c.get(f"/oem/{oem}/connect", params={"redirect": "false"}, headers=auth).json()["authorize_url"]
        assert url.startswith(base[oem])
        consent = httpx.get(url)  # the driver approves on the OEM's page, which redirects back
        assert consent.status_code == 302 and consent.headers["location"].startswith(f"{base['server']}/oem/{oem}/callback")
        back = urlsplit(consent.headers["location"])
        answer = c.get(f"{back.path}?{back.query}")
        assert answer.status_code == 200, answer.text
        linked[oem] = answer.json()["vehicles"]
    cars = [v for vs in linked.values() for v in vs]
    assert sorted(v["oem"] for v in cars) == ["smartcar", "smartcar", "tesla", "tesla"]
    now_please = {"default": {"ready_by": "07:00", "target_soc": 0.95}, "min_soc": 0.95}
    for v in cars:
        assert c.put(f"/vehicles/{v['id']}/preferences", headers=auth, json=now_please).status_code == 200

    def all_charging():
        status = [c.get(f"/vehicles/{v['id']}/status", headers=auth).json() for v in cars]
        return all((s.get("last_command") or {}).get("command") == "start" and
                   (s["last_command"].get("outcome") == "ok") for s in status)

    wait_until(all_charging, 60, "every car's start command to land")
    time.sleep(1.5)  # a snapshot after the starts
    server.stop(signal.SIGKILL)

    server = serve()
    token = c.post("/auth/token", data={"username": "driver@example.org", "password": "a long password"}).json()
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    after = c.get("/vehicles", headers=auth).json()
    assert sorted(v["id"] for v in after) == sorted(v["id"] for v in cars)  # no car lost
    for v in cars:
        prefs = c.get(f"/vehicles/{v['id']}/preferences", headers=auth).json()
        assert prefs["min_soc"] == 0.95  # no preference lost
    wait_until(lambda: all(c.get(f"/vehicles/{v['id']}/status", headers=auth).json()["controlled"] for v in cars),
               20, "control to resume")
    time.sleep(3)  # the restored controller runs on
    for v in cars:
        log = emulators[v["oem"]].text()
        assert starts(log, v["oem"], v["oem_vehicle_id"]) == 1, (v["oem_vehicle_id"], log[-2000:])
    status = [c.get(f"/vehicles/{v['id']}/status", headers=auth).json() for v in cars]
    assert all(s["plugged_in"] for s in status)
