"""The Smartcar head: the OEM adapter protocol over Smartcar's v2.0 Vehicles API.

* :class:`SmartcarClient` -- discovery, reads, charge commands, typed errors;
* :mod:`.oauth` -- Smartcar Connect consent URL, code exchange, rotating refresh tokens;
* :mod:`.webhooks` -- ``SC-Signature`` verification, the VERIFY challenge, de-duplication.
"""

from .client import API_ORIGIN, SmartcarClient, error_for
from .oauth import (
    CONNECT_URL,
    DEFAULT_SCOPES,
    TOKEN_URL,
    AuthorizationFailed,
    SmartcarOAuth,
    authorize_url,
    code_from_redirect,
)
from .webhooks import (
    SIGNATURE_HEADER,
    SmartcarWebhooks,
    hash_challenge,
    verify_signature,
)

__all__ = [
    "API_ORIGIN",
    "CONNECT_URL",
    "DEFAULT_SCOPES",
    "SIGNATURE_HEADER",
    "TOKEN_URL",
    "AuthorizationFailed",
    "SmartcarClient",
    "SmartcarOAuth",
    "SmartcarWebhooks",
    "authorize_url",
    "code_from_redirect",
    "error_for",
    "hash_challenge",
    "verify_signature",
]
