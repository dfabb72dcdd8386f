"""The Tesla Fleet API head: :class:`TeslaFleetClient` (the OEM adapter) and
:class:`TeslaOAuth` (authorization code with PKCE, code exchange, rotating refresh)."""

from adapters.tesla.client import (
    CHARGING_STATES,
    DEFAULT_RATE_LIMITS,
    REASONS,
    REGIONS,
    ChargeState,
    TeslaFleetClient,
    parse_charge_state,
)
from adapters.tesla.oauth import (
    AUTHORIZE_URLS,
    DEFAULT_SCOPES,
    TOKEN_URL,
    AuthorizationRequest,
    TeslaAuthError,
    TeslaOAuth,
    code_challenge,
    make_code_verifier,
)

__all__ = [
    "AUTHORIZE_URLS",
    "CHARGING_STATES",
    "DEFAULT_RATE_LIMITS",
    "DEFAULT_SCOPES",
    "REASONS",
    "REGIONS",
    "TOKEN_URL",
    "AuthorizationRequest",
    "ChargeState",
    "TeslaAuthError",
    "TeslaFleetClient",
    "TeslaOAuth",
    "code_challenge",
    "make_code_verifier",
    "parse_charge_state",
]
