"""The driver's status page: server-rendered HTML under ``/ui``.

* ``GET /ui/login`` shows the sign-in form; ``POST /ui/login`` checks the password as
  ``/auth/token`` does and sets the session cookie ``chargetwin_session`` (an access token,
  HttpOnly, SameSite=Lax, Secure when the server's public URL is https), then 303s to ``/ui``.
  ``POST /ui/logout`` clears it.
* ``GET /ui``: the signed-in user's cars, each with its status as the controller knows it and a
  chart of its plan (kW per slot) against the price forecast (GBP/kWh, on its own axis).
  Without a valid cookie: 303 to ``/ui/login``.
* ``POST /ui/magic-link`` (Bearer token or ``X-API-Key``) → a one-time sign-in link
  ``/ui/magic?code=...``, valid for :data:`MAGIC_TTL_S` seconds of wall time and usable once;
  opening it sets the session cookie and 303s to ``/ui`` (how a script or a headless browser
  gets a session without typing a password).

Magic codes live in memory only (:class:`MagicCodes`, at ``router.magic_codes``): 32 random
bytes each, stored as their SHA-256 with the user, the app that issued them and the expiry. A
restart forgets them (they last a minute anyway), and with several server processes a code
works only on the process that issued it.

Everything rendered goes through Jinja2 with autoescape on; the charts hold numbers and fixed
labels only (plotly's JSON escapes ``<`` too). plotly.js is inlined once per page: no CDN.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import jinja2
import pandas as pd
import plotly.graph_objects as go
from fastapi import APIRouter, Depends, Form, Header, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.security import OAuth2PasswordBearer

from server import db as store
from server.security import (
    InvalidCredentials,
    issue_access_token,
    user_from_access_token,
    verify_password,
)

__all__ = ["COOKIE", "MAGIC_TTL_S", "MagicCodes", "router"]

COOKIE = "chargetwin_session"
#: how long a magic sign-in code is valid (wall-clock seconds)
MAGIC_TTL_S = 60.0
#: the most unused codes kept at once (older ones are dropped first)
MAGIC_MAX = 10_000

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined)
_oauth2 = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)
_plotlyjs: str | None = None


class MagicCodes:
    """One-time sign-in codes: ``issue`` gives a code for a user, ``redeem`` gives the user
    once, within ``ttl_s`` seconds, on the app that issued it."""

    def __init__(self, ttl_s: float = MAGIC_TTL_S, max_codes: int = MAGIC_MAX) -> None:
        self.ttl_s = ttl_s
        self.max_codes = max_codes
        self._codes: dict[str, tuple[str, int, float]] = {}  # sha256(code) -> (user, id(app), expiry)
        self._lock = threading.Lock()

    @staticmethod
    def _key(code: str) -> str:
        return hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()

    def issue(self, user_id: str, app: object) -> str:
        code = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            for key in [k for k, (_, _, exp) in self._codes.items() if exp <= now]:
                del self._codes[key]
            while len(self._codes) >= self.max_codes:  # insertion order: the oldest first
                del self._codes[next(iter(self._codes))]
            self._codes[self._key(code)] = (user_id, id(app), now + self.ttl_s)
        return code

    def redeem(self, code: str, app: object) -> str | None:
        with self._lock:
            entry = self._codes.pop(self._key(code), None)
        if entry is None:
            return None
        user_id, app_id, expiry = entry
        if app_id != id(app) or time.monotonic() >= expiry:
            return None
        return user_id

    def __len__(self) -> int:
        return len(self._codes)


router = APIRouter(prefix="/ui", tags=["ui"], include_in_schema=False)
router.magic_codes = MagicCodes()  # type: ignore[attr-defined]


def _server(request: Request):
    return request.app.state.server


def _render(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})


def _set_session(response, server, user_id: str) -> None:
    ttl = server.settings.access_token_ttl_s
    response.set_cookie(COOKIE, issue_access_token(user_id, server.jwt_secret, ttl), max_age=ttl, path="/",
                        httponly=True, samesite="lax", secure=server.settings.public_url.startswith("https://"))


def _to_login() -> RedirectResponse:
    response = RedirectResponse("/ui/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, path="/")
    return response


async def _api_user(request: Request, token: Annotated[str | None, Depends(_oauth2)],
                    x_api_key: Annotated[str | None, Header()] = None) -> str:
    """The API's sign-in (Bearer token or X-API-Key), never the cookie: a page of another site
    cannot make a signed-in browser mint a link."""
    from server.app import (
        current_user,  # here: server.app includes this module's router
    )

    return await current_user(request, token, x_api_key)


# -- signing in and out -----------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request):
    return _render("login.html", email="", error=None)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, email: Annotated[str, Form()] = "", password: Annotated[str, Form()] = ""):
    server = _server(request)
    from server.app import _DUMMY_HASH

    async with server.db.session() as s:
        user = await store.user_by_email(s, email.strip().lower()) if email.strip() else None
    # scrypt for unknown emails too, off the event loop (as /auth/token does)
    encoded = user.password_hash if user is not None else _DUMMY_HASH
    if not await asyncio.to_thread(verify_password, password, encoded) or user is None:
        return _render("login.html", status_code=status.HTTP_401_UNAUTHORIZED, email=email,
                       error="Wrong email or password.")
    response = RedirectResponse("/ui", status_code=status.HTTP_303_SEE_OTHER)
    _set_session(response, server, user.id)
    return response


@router.post("/logout")
async def logout():
    return _to_login()


@router.post("/magic-link")
async def magic_link(request: Request, user: Annotated[str, Depends(_api_user)]):
    """A one-time sign-in link for the caller, valid for a minute."""
    code = router.magic_codes.issue(user, request.app)  # type: ignore[attr-defined]
    return {"url": f"/ui/magic?code={code}", "code": code, "expires_in": int(MAGIC_TTL_S)}


@router.get("/magic")
async def magic(request: Request, code: str = ""):
    user = router.magic_codes.redeem(code, request.app) if code else None  # type: ignore[attr-defined]
    if user is None:
        return _render("login.html", status_code=status.HTTP_401_UNAUTHORIZED, email="",
                       error="This sign-in link is invalid, used or expired: sign in with your password.")
    response = RedirectResponse("/ui", status_code=status.HTTP_303_SEE_OTHER)
    _set_session(response, _server(request), user)
    return response


# -- the status page --------------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
async def status_page(request: Request):
    server = _server(request)
    token = request.cookies.get(COOKIE)
    if not token:
        return _to_login()
    try:
        user_id = user_from_access_token(token, server.jwt_secret)
    except InvalidCredentials:
        return _to_login()
    async with server.db.session() as s:
        user = await store.user_by_id(s, user_id)
        vehicles = await store.vehicles_of(s, user_id) if user is not None else []
    if user is None:  # a token of a user since deleted
        return _to_login()
    now = server.clock.now() if server.clock is not None else datetime.now(UTC)
    try:
        from server.forecasts import forecast_frame

        prices = forecast_frame(server.settings, now)["price_gbp_per_kwh"]
    except Exception:  # noqa: BLE001 - the page shows the cars without the price line
        prices = None
    cards = []
    for i, v in enumerate(vehicles):
        known = server.control.status(v.oem, v.oem_vehicle_id) if server.control is not None else None
        slots = (server.control.plan(v.oem, v.oem_vehicle_id) or []) if server.control is not None else []
        cards.append({"v": v, "status": _status_view(known), "has_plan": bool(slots),
                      "chart": _chart(slots, prices, now, f"chart-{i}")})
    global _plotlyjs
    if _plotlyjs is None and cards:
        from plotly.offline import get_plotlyjs

        _plotlyjs = get_plotlyjs()
    return _render("status.html", email=user.email, cards=cards, now=_when(now.isoformat()),
                   plotlyjs=_plotlyjs if cards else "")


def _when(iso: str | None) -> str:
    if not iso:
        return "—"
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%a %d %b %H:%M UTC")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * float(x):.0f} %"


def _yes_no(x: bool | None) -> str:
    return "—" if x is None else ("yes" if x else "no")


def _status_view(known: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the page shows of :meth:`ControlService.status` (None: not controlled yet)."""
    if known is None:
        return None
    soc, estimated = known.get("soc"), False
    if soc is None and known.get("soc_estimate") is not None:
        soc, estimated = known["soc_estimate"], True
    last = known.get("last_command")
    command = None
    if last:
        outcome = last.get("outcome")
        command = {"what": last.get("command") or "—", "sent": _when(last.get("sent_at")),
                   "outcome": "pending" if outcome is None else outcome, "ok": outcome == "ok",
                   "error": last.get("error"), "verified": last.get("verified")}
    estimate = known.get("soc_estimate")
    return {
        "soc": _pct(soc) + (" (estimated)" if estimated else ""),
        "soc_now": _pct(estimate) if estimate is not None and not estimated and soc is not None
        and abs(float(estimate) - float(soc)) >= 0.005 else None,
        "soc_age": _age(known.get("soc_age_s")),
        "plugged_in": _yes_no(known.get("plugged_in")),
        "charging": _yes_no(known.get("charging")),
        "session": known.get("session") or "—",
        "ready_by": _when(known.get("ready_by")),
        "target_soc": _pct(known.get("target_soc")),
        "next_charge_start": _when(known.get("next_charge_start")),
        "expected_soc": _pct(known.get("expected_soc_at_ready_by")),
        "command": command,
        "escalated": bool(known.get("escalated")),
        "disobeyed_stops": known.get("disobeyed_stops") or 0,
    }


def _chart(slots: list[dict[str, Any]], prices: pd.Series | None, now: datetime, div_id: str) -> str:
    """The plan's kW per slot (bars, left axis) against the price forecast (line, right axis),
    as an HTML fragment without plotly.js (the page inlines it once)."""
    fig = go.Figure()
    if slots:
        starts = pd.DatetimeIndex(pd.to_datetime([s["slot_start"] for s in slots], utc=True))
        slot = starts[1] - starts[0] if len(starts) > 1 else pd.Timedelta(minutes=30)
        # each bar spans its slot (plotly centres bars on x)
        fig.add_bar(x=list(starts + slot / 2), y=[float(s["kw"]) for s in slots], name="plan (kW)",
                    width=slot.total_seconds() * 1000 * 0.92, marker_color="#2b8a3e", yaxis="y",
                    hovertemplate="%{y:.1f} kW<extra></extra>")
        first, last = starts.min(), starts.max() + slot
    else:
        first, last = pd.Timestamp(now), pd.Timestamp(now) + pd.Timedelta(hours=24)
    if prices is not None and len(prices):
        shown = prices[(prices.index >= first - pd.Timedelta(hours=1)) & (prices.index <= last)].dropna()
        if len(shown):
            fig.add_scatter(x=list(shown.index), y=[float(p) for p in shown], name="price (GBP/kWh)",
                            mode="lines", line={"color": "#c92a2a", "shape": "hv"}, yaxis="y2",
                            hovertemplate="%{y:.3f} GBP/kWh<extra></extra>")
    fig.update_layout(
        height=300, margin={"l": 55, "r": 65, "t": 20, "b": 40}, bargap=0.1,
        legend={"orientation": "h", "y": -0.2}, paper_bgcolor="white", plot_bgcolor="white",
        yaxis={"title": {"text": "kW"}, "rangemode": "tozero", "gridcolor": "#eee"},
        yaxis2={"title": {"text": "GBP/kWh"}, "overlaying": "y", "side": "right", "rangemode": "tozero",
                "showgrid": False, "tickformat": ".2f"},
        xaxis={"type": "date", "gridcolor": "#eee"},
        shapes=[{"type": "line", "xref": "x", "yref": "paper", "x0": now.isoformat(), "x1": now.isoformat(),
                 "y0": 0, "y1": 1, "line": {"color": "#656d76", "width": 1, "dash": "dot"}}],
        annotations=[{"xref": "x", "yref": "paper", "x": now.isoformat(), "y": 1, "text": "now",
                      "showarrow": False, "yanchor": "bottom", "font": {"size": 11, "color": "#656d76"}}],
    )
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})
