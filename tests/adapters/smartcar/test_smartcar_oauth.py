"""Smartcar Connect: the consent URL, the redirect's state check, the code exchange, and
refreshes with rotating refresh tokens, against a mock token endpoint."""

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from adapters import smartcar
from adapters.smartcar import (
    AuthorizationFailed,
    SmartcarOAuth,
    authorize_url,
    code_from_redirect,
)
from twin.auth import (
    AccountTokens,
    MemoryTokenStore,
    RefreshFailed,
    RefreshRefused,
    Token,
)
from twin.oem import ReauthorizationRequired

FIXTURES = Path(smartcar.__file__).parent / "fixtures"
T0 = datetime(2026, 1, 12, 18, 0, tzinfo=UTC)
SECRET = "s3cr3t-client-secret"


def fixture(name):
    return (FIXTURES / name).read_bytes()


class TokenServer:
    """A mock ``/oauth/token``: issues rotating refresh tokens; a used one is refused."""

    def __init__(self):
        self.requests: list[httpx.Request] = []
        self.valid = {"7f3e9d4c-refresh-1"}
        self.answer: tuple[int, bytes] | None = None
        self.raise_error: Exception | None = None

    def __call__(self, request):
        self.requests.append(request)
        if self.raise_error is not None:
            raise self.raise_error
        if self.answer is not None:
            return httpx.Response(self.answer[0], content=self.answer[1])
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        if form["grant_type"] == "authorization_code":
            return httpx.Response(200, content=fixture("token.json"))
        if form.get("refresh_token") in self.valid:
            self.valid.discard(form["refresh_token"])
            rotated = json.loads(fixture("token_rotated.json"))
            self.valid.add(rotated["refresh_token"])
            return httpx.Response(200, json=rotated)
        return httpx.Response(400, content=fixture("token_invalid_grant.json"))


def oauth(server):
    return SmartcarOAuth("client-abc", SECRET, "https://app.example/callback",
                         transport=httpx.MockTransport(server), now=lambda: T0)


def run(coro):
    return asyncio.run(coro)


def test_the_consent_url_carries_the_documented_parameters():
    url = authorize_url("client-abc", "https://app.example/callback", "st4te", mode="test",
                        scope=["read_battery", "read_charge", "control_charge"])
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://connect.smartcar.com/oauth/authorize"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query == {"response_type": "code", "client_id": "client-abc", "redirect_uri": "https://app.example/callback",
                     "approval_prompt": "auto", "scope": "read_battery read_charge control_charge", "mode": "test",
                     "state": "st4te"}
    assert "code_challenge" not in query  # Smartcar documents no PKCE


def test_the_consent_url_defaults_and_options():
    query = parse_qs(urlsplit(oauth(TokenServer()).authorize_url("x", make="TESLA", single_select=True,
                                                                 approval_prompt="force")).query)
    assert query["scope"] == ["read_vehicle_info read_battery read_charge control_charge"]
    assert query["mode"] == ["live"] and query["make"] == ["TESLA"] and query["single_select"] == ["true"]
    assert query["approval_prompt"] == ["force"]


@pytest.mark.parametrize("kwargs", [{"mode": "production"}, {"state": ""}, {"scope": []}, {"approval_prompt": "x"}])
def test_a_consent_url_with_bad_parameters_is_refused(kwargs):
    args = {"state": "s"} | kwargs
    with pytest.raises(ValueError):
        authorize_url("client-abc", "https://app.example/callback", **args)


def test_the_redirect_back_is_checked_against_the_state_issued():
    assert code_from_redirect({"code": "c0de", "state": "st4te"}, "st4te") == "c0de"
    with pytest.raises(AuthorizationFailed) as info:
        code_from_redirect({"code": "c0de", "state": "forged"}, "st4te")
    assert info.value.error == "invalid_state"
    with pytest.raises(AuthorizationFailed) as info:
        code_from_redirect({"error": "access_denied", "state": "st4te"}, "st4te")
    assert info.value.error == "access_denied"
    with pytest.raises(AuthorizationFailed):
        code_from_redirect({"state": "st4te"}, "st4te")


def test_the_code_exchange_posts_the_form_with_basic_auth_and_returns_the_tokens():
    server = TokenServer()
    token = run(oauth(server).exchange_code("c0de"))
    assert token.access_token == "0b1c8a2e-access-1" and token.refresh_token == "7f3e9d4c-refresh-1"
    assert token.expires_at == T0 + timedelta(seconds=7200)
    [request] = server.requests
    assert request.method == "POST" and str(request.url) == "https://auth.smartcar.com/oauth/token"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(f"client-abc:{SECRET}".encode()).decode()
    assert parse_qs(request.content.decode()) == {"grant_type": ["authorization_code"], "code": ["c0de"],
                                                  "redirect_uri": ["https://app.example/callback"]}


def test_a_refused_code_exchange_is_not_transient_and_names_no_secret():
    server = TokenServer()
    server.answer = (400, fixture("token_invalid_grant.json"))
    with pytest.raises(AuthorizationFailed) as info:
        run(oauth(server).exchange_code("c0de"))
    assert info.value.error == "invalid_grant" and not info.value.transient
    assert "c0de" not in str(info.value) and SECRET not in str(info.value)


def test_refresh_rotates_the_refresh_token_and_the_used_one_is_refused():
    server = TokenServer()
    client = oauth(server)
    old = Token("0b1c8a2e-access-1", "7f3e9d4c-refresh-1", T0)
    new = run(client.refresh("acct", old))
    assert new.access_token == "0b1c8a2e-access-2" and new.refresh_token == "7f3e9d4c-refresh-2"
    assert new.expires_at == T0 + timedelta(seconds=7200)
    assert parse_qs(server.requests[0].content.decode()) == {"grant_type": ["refresh_token"],
                                                             "refresh_token": ["7f3e9d4c-refresh-1"]}
    with pytest.raises(RefreshRefused) as info:
        run(client.refresh("acct", old))
    assert "invalid_grant" in str(info.value) and "7f3e9d4c" not in str(info.value)


class Clock:
    start = T0
    seconds = 0.0

    def now(self):
        return T0

    def create_future(self):
        return asyncio.get_running_loop().create_future()


def test_account_tokens_store_the_rotated_refresh_token_and_use_it_next_time():
    server = TokenServer()
    store = MemoryTokenStore()
    store.put("acct", Token("0b1c8a2e-access-1", "7f3e9d4c-refresh-1", T0 + timedelta(seconds=60)))
    tokens = AccountTokens(store, oauth(server).refresh, Clock())
    assert run(tokens.access_token("acct", "car")) == "0b1c8a2e-access-2"  # due: refreshed ahead of expiry
    assert store.get("acct").refresh_token == "7f3e9d4c-refresh-2"
    store.put("acct", Token("0b1c8a2e-access-2", "7f3e9d4c-refresh-2", T0))  # expired again
    run(tokens.access_token("acct", "car"))
    sent = [parse_qs(r.content.decode())["refresh_token"][0] for r in server.requests]
    assert sent == ["7f3e9d4c-refresh-1", "7f3e9d4c-refresh-2"]


def test_a_revoked_grant_becomes_reauthorization_required():
    server = TokenServer()
    store = MemoryTokenStore()
    store.put("acct", Token("at", "revoked-refresh", T0))
    tokens = AccountTokens(store, oauth(server).refresh, Clock())
    with pytest.raises(ReauthorizationRequired) as info:
        run(tokens.access_token("acct", "car"))
    assert info.value.account_id == "acct" and "revoked-refresh" not in str(info.value)


@pytest.mark.parametrize("status, body", [
    (500, b'{"error": "server_error"}'),
    (503, b"<html>Service Unavailable</html>"),
    (429, b'{"error": "rate_limited"}'),
    (400, b"<html>Bad Request</html>"),
    (200, b'{"access_token": "a", "token_type": "Bearer", "expires_in": 7200}'),
    (200, b'{"access_token": "a", "token_type": "Bearer", "expires_in": "7200", "refresh_token": "r"}'),
    (200, b'{"access_token": "a", "token_type": "Bearer", "expires_in": 72'),
    (200, b"<html>login</html>"),
])
def test_a_refresh_that_could_not_be_completed_may_be_tried_again(status, body):
    server = TokenServer()
    server.answer = (status, body)
    with pytest.raises(RefreshFailed):
        run(oauth(server).refresh("acct", Token("at", "rt", T0)))


@pytest.mark.parametrize("error", [httpx.ConnectTimeout("slow"), httpx.ConnectError("refused")])
def test_an_unreachable_token_endpoint_is_a_failed_refresh(error):
    server = TokenServer()
    server.raise_error = error
    with pytest.raises(RefreshFailed):
        run(oauth(server).refresh("acct", Token("at", "rt", T0)))


def test_secrets_stay_out_of_reprs():
    client = oauth(TokenServer())
    assert SECRET not in repr(client)
    token = run(client.exchange_code("c0de"))
    assert "0b1c8a2e" not in repr(token) and "7f3e9d4c" not in repr(token)
