"""`twin serve`: the demo as a real process on a real socket (127.0.0.1 only), its restart on
the same database, and the refusal to start outside the demo without the secrets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from twin.cli import app

TWIN = Path(sys.executable).parent / "twin"
DEMO_USER = {"username": "demo@chargetwin.local", "password": "demo-password"}
runner = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any CHARGETWIN_ setting of the developer's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGETWIN_")}
    env.update(extra)
    return env


class Served:
    """`twin serve --demo` running in ``cwd`` (its chargetwin.db lands there)."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd / f"serve-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([str(TWIN), "serve", "--port", str(self.port), *args], cwd=cwd,
                                     env=clean_env(CHARGETWIN_DEMO_SPEED="600"), stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=10.0)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_healthy(self, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"twin serve exited with code {self.proc.returncode} before answering:\n{self.log()}")
            try:
                r = self.http.get("/health", timeout=1.0)
                if r.status_code == 200:
                    return r.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"no answer from /health within {timeout:g} s:\n{self.log()}")

    def sign_in(self, username: str, password: str) -> dict[str, str]:
        r = self.http.post("/auth/token", data={"username": username, "password": password})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_type"] == "bearer" and body["access_token"] and body["expires_in"] > 0
        return {"Authorization": f"Bearer {body['access_token']}"}

    def interrupt(self, timeout: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"twin serve still running {timeout:g} s after SIGINT:\n{self.log()}")

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The demo started once in a fresh directory, shared by the tests of one session and of a
    restart (a start costs seconds): whichever runs first stops it with SIGINT."""
    cwd = tmp_path_factory.mktemp("demo")
    s = Served(cwd, "--demo")
    s.cwd = cwd
    s.health = s.wait_healthy()
    s.demo = s.sign_in(**DEMO_USER)
    s.vehicles = s.http.get("/vehicles", headers=s.demo).json()
    s.exit_code = None
    yield s
    s.close()


def stop(s: Served) -> int:
    if s.exit_code is None:
        s.exit_code = s.interrupt()
    return s.exit_code


def test_demo_serves_plans_isolates_users_and_stops_on_sigint(first_run):
    s = first_run
    if s.exit_code is not None:
        pytest.skip("the shared demo was already stopped (the restart test ran first)")
    assert s.health["status"] == "ok" and s.health["demo"] is True
    assert (s.cwd / "chargetwin.db").exists()

    assert s.http.get("/vehicles").status_code == 401  # not signed in
    demo = s.demo
    cars = s.vehicles
    assert len(cars) == 4, cars
    assert sorted(c["oem"] for c in cars) == ["smartcar", "smartcar", "tesla", "tesla"]

    # the cars plug in during the first emulated minutes (600x: a few wall seconds) and the
    # plan at plug-in names when charging starts
    deadline, planned = time.monotonic() + 10.0, []
    while time.monotonic() < deadline and not planned:
        r = s.http.get("/notifications", headers=demo)
        assert r.status_code == 200, r.text
        planned = [n for n in r.json() if n.get("charge_start_at")]
        if not planned:
            time.sleep(0.25)
    assert planned, f"no notification with charge_start_at within 10 s:\n{s.log()}"
    assert {n["vehicle"] for n in planned} <= {c["id"] for c in cars}

    status = s.http.get(f"/vehicles/{cars[0]['id']}/status", headers=demo)
    assert status.status_code == 200 and status.json()["controlled"] is True, status.text

    # another user sees none of it: the demo's cars are 404 to them, not 403
    r = s.http.post("/auth/signup", json={"email": "Other@Example.org", "password": "another-password"})
    assert r.status_code == 201, r.text
    assert r.json()["email"] == "other@example.org"
    assert s.http.post("/auth/signup", json={"email": "other@example.org",
                                              "password": "another-password"}).status_code == 409
    other = s.sign_in("other@example.org", "another-password")
    assert s.http.get("/vehicles", headers=other).json() == []
    for path in ("/status", "/plan", "/preferences", ""):
        r = s.http.get(f"/vehicles/{cars[0]['id']}{path}", headers=other)
        assert r.status_code == 404, (path, r.text)
    assert s.http.get("/notifications", headers=other).json() == []

    assert stop(s) == 0, s.log()


def test_demo_restarted_on_its_database_keeps_its_vehicles(first_run):
    before = sorted(c["id"] for c in first_run.vehicles)
    assert len(before) == 4
    assert stop(first_run) == 0, first_run.log()

    again = Served(first_run.cwd, "--demo")
    try:
        health = again.wait_healthy()
        assert health["vehicles_controlled"] == 4, again.log()
        demo = again.sign_in(**DEMO_USER)
        after = sorted(c["id"] for c in again.http.get("/vehicles", headers=demo).json())
        assert after == before, "the restarted demo registered its cars again instead of keeping them"
        status = again.http.get(f"/vehicles/{after[0]}/status", headers=demo)
        assert status.status_code == 200 and status.json()["controlled"] is True, status.text
        assert again.interrupt() == 0, again.log()
    finally:
        again.close()


# -- outside the demo ---------------------------------------------------------------------------


@pytest.fixture
def no_chargetwin_env(tmp_path, monkeypatch):
    """A working directory without a .env file and no CHARGETWIN_ variables."""
    for name in list(os.environ):
        if name.startswith("CHARGETWIN_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_serve_without_secrets_refuses_to_start(no_chargetwin_env, monkeypatch):
    import uvicorn

    def not_expected(*args, **kwargs):
        raise AssertionError("uvicorn.run was reached without the secrets")

    monkeypatch.setattr(uvicorn, "run", not_expected)
    res = runner.invoke(app, ["serve", "--port", str(free_port())])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "CHARGETWIN_TOKEN_KEY" in lines[0] and "CHARGETWIN_JWT_SECRET" in lines[0]
    assert "Traceback" not in res.output
    assert not (no_chargetwin_env / "chargetwin.db").exists()


def test_serve_with_a_short_jwt_secret_names_only_that(no_chargetwin_env, monkeypatch):
    from cryptography.fernet import Fernet

    monkeypatch.setenv("CHARGETWIN_TOKEN_KEY", Fernet.generate_key().decode())
    monkeypatch.setenv("CHARGETWIN_JWT_SECRET", "x" * 31)
    res = runner.invoke(app, ["serve", "--port", str(free_port())])
    assert res.exit_code == 2, res.output
    assert "CHARGETWIN_JWT_SECRET" in res.stderr and "CHARGETWIN_TOKEN_KEY" not in res.stderr


def test_create_app_with_secrets_builds_and_starts(no_chargetwin_env):
    from cryptography.fernet import Fernet
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings, SettingsError

    db = no_chargetwin_env / "live.db"
    settings = Settings(token_key=Fernet.generate_key().decode(), jwt_secret="s" * 32,
                        database_url=f"sqlite+aiosqlite:///{db}")
    application = create_app(settings)
    paths = set(application.openapi()["paths"])
    assert {"/health", "/auth/signup", "/auth/token", "/vehicles", "/notifications/stream",
            "/oem/{oem}/connect", "/webhooks/{oem}"} <= paths
    assert not any(getattr(r, "path", "").startswith("/demo") for r in application.routes)
    with TestClient(application) as client:  # runs the lifespan: migrations, bus, controller
        assert client.get("/health").json()["demo"] is False
        assert db.exists()
        r = client.post("/auth/signup", json={"email": "a@example.org", "password": "long-enough-pw"})
        assert r.status_code == 201, r.text
        token = client.post("/auth/token", data={"username": "a@example.org", "password": "long-enough-pw"})
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        # no OEM application configured: linking one is a clear 404
        r = client.get("/oem/smartcar/connect", headers=headers)
        assert r.status_code == 404 and "no OEM 'smartcar' configured" in r.text

    with pytest.raises(SettingsError, match="CHARGETWIN_JWT_SECRET"):
        create_app(Settings(token_key=Fernet.generate_key().decode(), jwt_secret="short"))
    with pytest.raises(ValueError, match="not a valid Fernet key"):
        create_app(Settings(token_key="not-a-key", jwt_secret="s" * 32, database_url=f"sqlite+aiosqlite:///{db}"))
