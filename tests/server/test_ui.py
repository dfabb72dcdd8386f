"""The driver's status page (server.ui), served for real on 127.0.0.1 with the demo fleet.

One demo server for the module (uvicorn on a background thread, lifespan on): the first test
drives the sign-in and the page over HTTP, the second renders the page in Debian's headless
Chromium (signed in through a one-time magic link) and checks that plotly drew every chart.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import httpx
import pytest

from server.app import create_app
from server.demo import DEMO_EMAIL, DEMO_PASSWORD, FLEET
from server.settings import Settings
from server.ui import COOKIE
from twin.emulate import EmulatorThread

DEMO_IDS = [vid for _, (_, cars) in FLEET.items() for vid, _, _ in cars]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tmp_path_factory.mktemp("ui")
    app = create_app(Settings(demo=True, database_url=f"sqlite+aiosqlite:///{path}/server.db", demo_speed=600))
    with EmulatorThread(app) as thread:
        yield thread


def bearer(c: httpx.Client, email: str, password: str) -> dict[str, str]:
    got = c.post("/auth/token", data={"username": email, "password": password})
    assert got.status_code == 200, got.text
    return {"Authorization": f"Bearer {got.json()['access_token']}"}


def wait_for_plans(c: httpx.Client, headers: dict[str, str], timeout_s: float = 15.0) -> None:
    """Until every demo car has a plan (they plug in within 0.4 s of wall time at speed 600)."""
    deadline = time.monotonic() + timeout_s
    vehicles = c.get("/vehicles", headers=headers).json()
    assert sorted(v["oem_vehicle_id"] for v in vehicles) == sorted(DEMO_IDS)
    while True:
        plans = [c.get(f"/vehicles/{v['id']}/plan", headers=headers).json()["slots"] for v in vehicles]
        if all(any(s["kw"] > 0 for s in p) for p in plans):
            return
        assert time.monotonic() < deadline, f"not every demo car was planned: {plans}"
        time.sleep(0.2)


def get_as(served, path: str, session: str) -> httpx.Response:
    """``path`` requested by a browser holding only the session cookie ``session``."""
    with httpx.Client(base_url=served.base_url, timeout=30, cookies={COOKIE: session}) as c:
        return c.get(path)


def test_sign_in_sets_an_httponly_cookie_and_the_page_shows_only_the_users_cars(served):
    with httpx.Client(base_url=served.base_url, timeout=30) as c:
        # not signed in: to the login form
        r = c.get("/ui")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        form = c.get("/ui/login")
        assert form.status_code == 200 and 'name="password"' in form.text
        # a forged or garbage cookie is no session either
        r = get_as(served, "/ui", "not-a-token")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"

        wrong = c.post("/ui/login", data={"email": DEMO_EMAIL, "password": "not-the-password"})
        assert wrong.status_code == 401
        assert "Wrong email or password" in wrong.text
        assert COOKIE not in wrong.headers.get("set-cookie", "")
        hostile = c.post("/ui/login", data={"email": '"><script>alert(1)</script>', "password": "x"})
        assert hostile.status_code == 401 and "<script>alert(1)" not in hostile.text
        assert "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in hostile.text  # escaped, kept in the form
        unknown = c.post("/ui/login", data={"email": "nobody@example.com", "password": DEMO_PASSWORD})
        assert unknown.status_code == 401 and "Wrong email or password" in unknown.text

        ok = c.post("/ui/login", data={"email": DEMO_EMAIL.upper(), "password": DEMO_PASSWORD})
        c.cookies.clear()
        assert ok.status_code == 303 and ok.headers["location"] == "/ui"
        cookie = ok.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
        session = ok.cookies[COOKIE]

        page = get_as(served, "/ui", session)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        for vid in DEMO_IDS:
            assert f'data-vehicle="{vid}"' in page.text
        assert page.text.count("* plotly.js v") == 1  # inlined once, not per chart
        assert not re.search(r"<script[^>]+src=", page.text)  # no external scripts: works offline

        # another user, signed in with their own cookie, sees none of the demo cars
        other = c.post("/auth/signup", json={"email": "other@example.com", "password": "another-password"})
        assert other.status_code == 201, other.text
        theirs = c.post("/ui/login", data={"email": "other@example.com", "password": "another-password"})
        c.cookies.clear()
        assert theirs.status_code == 303
        page = get_as(served, "/ui", theirs.cookies[COOKIE])
        assert page.status_code == 200 and "other@example.com" in page.text
        for vid in DEMO_IDS:
            assert vid not in page.text
        assert DEMO_EMAIL not in page.text
        assert "No cars linked yet" in page.text

        # sign out: the cookie is cleared
        c.cookies.clear()
        c.cookies.set(COOKIE, session)
        out = c.post("/ui/logout")
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        assert re.search(rf'{COOKIE}=("")?;', out.headers["set-cookie"])


def test_a_magic_link_works_once_and_only_with_the_api_sign_in(served):
    with httpx.Client(base_url=served.base_url, timeout=30) as c:
        assert c.post("/ui/magic-link").status_code == 401
        # the session cookie does not mint links (another site's page could make a browser ask)
        ok = c.post("/ui/login", data={"email": DEMO_EMAIL, "password": DEMO_PASSWORD})
        assert ok.status_code == 303 and COOKIE in c.cookies
        assert c.post("/ui/magic-link").status_code == 401
        c.cookies.clear()
        link = c.post("/ui/magic-link", headers=bearer(c, DEMO_EMAIL, DEMO_PASSWORD))
        assert link.status_code == 200 and link.json()["expires_in"] == 60
        first = c.get(link.json()["url"])
        assert first.status_code == 303 and first.headers["location"] == "/ui"
        assert "httponly" in first.headers["set-cookie"].lower()
        c.cookies.clear()
        again = c.get(link.json()["url"])
        assert again.status_code == 401 and "invalid, used or expired" in again.text
        assert c.get("/ui/magic?code=guess").status_code == 401


def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_the_page_renders_every_plan_chart_in_headless_chromium(served, tmp_path):
    browser = _chromium()
    if browser is None:
        reason = "chromium not installed (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must provide it")
        pytest.skip(reason)
    with httpx.Client(base_url=served.base_url, timeout=30) as c:
        headers = bearer(c, DEMO_EMAIL, DEMO_PASSWORD)
        wait_for_plans(c, headers)
        url = c.post("/ui/magic-link", headers=headers).json()["url"]
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=5000", "--dump-dom", f"{served.base_url}{url}",
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    dom = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Uncaught" not in proc.stderr, proc.stderr[-2000:]
    # the magic link signed the browser in and redirected to the page
    assert "Your cars" in dom and "demo@chargetwin.local" in dom, dom[:2000]
    cards = re.split(r'<section class="card vehicle" ', dom)[1:]
    assert sorted(re.match(r'data-vehicle="([^"]+)"', card).group(1) for card in cards) == sorted(DEMO_IDS)
    for card in cards:
        assert 'class="plot-container plotly"' in card and 'class="main-svg"' in card, card[:300]
        # both axes drawn: kW on the left, GBP/kWh on the right
        assert re.search(r'class="ytitle"[^>]*>kW<', card) and re.search(r'class="y2title"[^>]*>GBP/kWh<', card)
        assert 'class="trace bars"' in card  # the plan's kW bars
        assert "No charging plan yet" not in card
        assert re.search(r"State of charge</dt><dd>\d+ %", card)
    visible = re.sub(r"<script\b.*?</script>", "", dom, flags=re.DOTALL)  # plotly.js itself says undefined/NaN
    text = re.sub(r"<[^>]*>", " ", visible)  # what is read (plotly's markup has class="legendundefined")
    for bad in ("undefined", "NaN", "None", "null", "nan"):
        assert not re.search(rf"\b{bad}\b", text), text[max(0, text.find(bad) - 300):text.find(bad) + 100]
    # nothing drawn at NaN coordinates either (paths, positions)
    assert "NaN" not in visible, visible[max(0, visible.find("NaN") - 300):visible.find("NaN") + 100]


def test_what_the_page_shows_is_escaped_and_charts_carry_no_text_from_the_cars():
    from types import SimpleNamespace

    from server.ui import _chart, _render, _status_view

    hostile = "<img src=x onerror=alert(1)>"
    v = SimpleNamespace(oem="smartcar", oem_vehicle_id=hostile, model=hostile)
    status = _status_view({"soc": 0.5, "soc_age_s": 30, "plugged_in": True, "charging": False,
                           "last_command": {"command": hostile, "outcome": "OEMError", "error": hostile,
                                            "sent_at": "2026-01-01T00:00:00+00:00"}, "escalated": True})
    html = _render("status.html", email=hostile, now="now", plotlyjs="",
                   cards=[{"v": v, "status": status, "has_plan": False, "chart": ""}]).body.decode()
    assert "<img" not in html and html.count("&lt;img src=x onerror=alert(1)&gt;") >= 5
    assert "needs attention" in html and "OEMError" in html
    # a chart without a plan: the price alone, on the second axis
    import pandas as pd

    prices = pd.Series([0.1, 0.2], index=pd.date_range("2026-01-01", periods=2, freq="30min", tz="UTC"))
    fragment = _chart([], prices, pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime(), "c")
    assert '"yaxis":"y2"' in fragment and "plan (kW)" not in fragment
