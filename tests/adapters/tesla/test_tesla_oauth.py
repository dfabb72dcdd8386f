"""TeslaOAuth: authorize URL with PKCE, code exchange and rotating refresh against MockTransport."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from adapters.tesla import TOKEN_URL, TeslaAuthError, TeslaOAuth, code_challenge
from twin.auth import (
    AccountTokens,
    MemoryTokenStore,
    RefreshFailed,
    RefreshRefused,
    Token,
)
from twin.host.aio import AsyncClock, VirtualTimeLoop
from twin.oem import ReauthorizationRequired

FIXTURES = Path(__file__).resolve().parents[3] / "adapters" / "tesla" / "fixtures"
T0 = datetime(2026, 1, 12, tzinfo=UTC)
AUDIENCE = "https://fleet-api.prd.eu.vn.cloud.tesla.com"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class AuthServer:
    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.forms: list[dict[str, str]] = []
        self.urls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        self.forms.append({k: v[0] for k, v in parse_qs(request.content.decode()).items()})
        return self.responses.pop(0)


def ok(name: str) -> httpx.Response:
    return httpx.Response(200, content=fixture_bytes(name), headers={"content-type": "application/json"})


def run(coro):
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def make(server: AuthServer, region: str = "eu") -> TeslaOAuth:
    clock = AsyncClock(T0, VirtualTimeLoop())
    return TeslaOAuth("client-abc", "secret-xyz", "https://app.example/callback", AUDIENCE, region=region,
                      clock=clock, transport=httpx.MockTransport(server))


def test_authorize_url_parameters_and_pkce():
    oauth = make(AuthServer())
    req = oauth.authorization_request(state="st-1")
    url = urlsplit(req.url)
    assert (url.scheme, url.netloc, url.path) == ("https", "auth.tesla.com", "/oauth2/v3/authorize")
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert q["response_type"] == "code"
    assert q["client_id"] == "client-abc"
    assert q["redirect_uri"] == "https://app.example/callback"
    assert q["scope"] == "openid offline_access vehicle_device_data vehicle_cmds vehicle_charging_cmds"
    assert q["state"] == "st-1" == req.state
    assert q["code_challenge_method"] == "S256"
    expected = base64.urlsafe_b64encode(hashlib.sha256(req.code_verifier.encode()).digest()).rstrip(b"=").decode()
    assert q["code_challenge"] == expected == code_challenge(req.code_verifier)
    assert 43 <= len(req.code_verifier) <= 128
    assert req.code_verifier not in req.url and req.code_verifier not in repr(req)
    assert "secret-xyz" not in req.url


def test_pkce_known_vector():
    # RFC 7636 appendix B
    assert code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_fresh_state_and_verifier_each_time_and_cn_host():
    oauth = make(AuthServer(), region="cn")
    a, b = oauth.authorization_request(), oauth.authorization_request()
    assert a.state != b.state and a.code_verifier != b.code_verifier
    assert urlsplit(a.url).netloc == "auth.tesla.cn"


def test_code_exchange():
    server = AuthServer(ok("token.json"))
    oauth = make(server)
    token = run(oauth.exchange_code("code-123", "verifier-456"))
    assert server.urls == [TOKEN_URL]
    assert server.forms[0] == {
        "grant_type": "authorization_code", "client_id": "client-abc", "client_secret": "secret-xyz",
        "code": "code-123", "redirect_uri": "https://app.example/callback", "audience": AUDIENCE,
        "code_verifier": "verifier-456",
    }
    assert token.access_token == "eyJhbGciOiJSUzI1NiJ9.access-1.sig"
    assert token.refresh_token == "NA_refresh-1"
    assert token.expires_at == T0 + timedelta(seconds=28800)
    assert "access-1" not in repr(token) and "NA_refresh-1" not in repr(token)
    assert "secret-xyz" not in repr(oauth)


def test_code_exchange_refused():
    server = AuthServer(httpx.Response(400, content=fixture_bytes("token_error_invalid_auth_code.json")))
    with pytest.raises(TeslaAuthError) as err:
        run(make(server).exchange_code("code-123", "verifier-456"))
    assert err.value.refused and err.value.error == "invalid_auth_code" and err.value.status == 400
    assert "code-123" not in str(err.value) and "secret-xyz" not in str(err.value)


def test_refresh_rotates_the_refresh_token():
    server = AuthServer(ok("token_refreshed.json"))
    oauth = make(server)
    new = run(oauth.refresh("acct-1", Token("old-access", "NA_refresh-1", T0)))
    assert server.forms[0] == {"grant_type": "refresh_token", "client_id": "client-abc",
                               "refresh_token": "NA_refresh-1"}
    assert new.access_token == "eyJhbGciOiJSUzI1NiJ9.access-2.sig"
    assert new.refresh_token == "NA_refresh-2"


def test_refresh_through_account_tokens_stores_the_rotated_token_once():
    loop = VirtualTimeLoop()
    clock = AsyncClock(T0, loop)
    server = AuthServer(ok("token_refreshed.json"))
    oauth = TeslaOAuth("client-abc", "secret-xyz", "https://app.example/callback", AUDIENCE, clock=clock,
                       transport=httpx.MockTransport(server))
    tokens = AccountTokens(MemoryTokenStore(), oauth.refresh, clock)
    tokens.store.put("acct-1", Token("old-access", "NA_refresh-1", T0 + timedelta(seconds=10)))

    async def two_cars():
        return await asyncio.gather(tokens.access_token("acct-1", "car-a"), tokens.access_token("acct-1", "car-b"))

    got = loop.run_until_complete(two_cars())
    assert got == ["eyJhbGciOiJSUzI1NiJ9.access-2.sig"] * 2
    assert len(server.forms) == 1  # single-use refresh token spent once
    assert tokens.store.get("acct-1").refresh_token == "NA_refresh-2"
    loop.run_until_complete(oauth.aclose())
    loop.close()


def test_used_refresh_token_is_refused_and_becomes_reauthorization():
    loop = VirtualTimeLoop()
    clock = AsyncClock(T0, loop)
    server = AuthServer(httpx.Response(401, content=fixture_bytes("token_error_login_required.json")))
    oauth = TeslaOAuth("client-abc", "secret-xyz", "https://app.example/callback", AUDIENCE, clock=clock,
                       transport=httpx.MockTransport(server))
    tokens = AccountTokens(MemoryTokenStore(), oauth.refresh, clock)
    tokens.store.put("acct-1", Token("old-access", "NA_refresh-1", T0))
    with pytest.raises(ReauthorizationRequired) as err:
        loop.run_until_complete(tokens.access_token("acct-1", "car-a"))
    assert "login_required" in str(err.value)
    assert "NA_refresh-1" not in str(err.value) and "old-access" not in str(err.value)
    loop.close()


@pytest.mark.parametrize("response", [
    httpx.Response(503, content=b"<html>Service Unavailable</html>"),
    httpx.Response(200, content=b"<html>login</html>"),
    httpx.Response(200, content=fixture_bytes("token_refreshed.json")[:40]),
    httpx.Response(200, json={"access_token": "a", "expires_in": 28800}),  # no rotated refresh token
    httpx.Response(200, json={"access_token": "a", "refresh_token": "r", "expires_in": "soon"}),
    httpx.Response(429, json={"error": "too_many_requests"}),
])
def test_refresh_failures_are_retryable_and_secret_free(response):
    server = AuthServer(response)
    with pytest.raises(RefreshFailed) as err:
        run(make(server).refresh("acct-1", Token("old-access", "NA_refresh-1", T0)))
    assert "NA_refresh-1" not in str(err.value) and "secret-xyz" not in str(err.value)


def test_refresh_timeout_is_failed():
    def hang(request):
        raise httpx.ConnectTimeout("timeout", request=request)

    oauth = TeslaOAuth("client-abc", "secret-xyz", "https://app.example/callback", AUDIENCE,
                       transport=httpx.MockTransport(hang))
    with pytest.raises(RefreshFailed, match="timeout"):
        run(oauth.refresh("acct-1", Token("old-access", "NA_refresh-1", T0)))


def test_refresh_without_refresh_token_is_refused():
    with pytest.raises(RefreshRefused):
        run(make(AuthServer()).refresh("acct-1", Token("old-access", None, T0)))

