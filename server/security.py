"""The server's secrets: passwords, API access tokens and keys, OEM tokens at rest, OAuth state
and the signatures of outbound webhooks.

* **Passwords** are stored as salted scrypt hashes (stdlib :func:`hashlib.scrypt`), encoded with
  their cost parameters (``scrypt$n$r$p$salt$hash``) so the cost can be raised later without
  invalidating stored hashes.
* **Access tokens** are short-lived JWTs (HS256) naming the user in ``sub`` and marked
  ``typ: "access"``, so no other token signed with the same secret passes as one.
  :class:`InvalidCredentials` says why a token was refused, in words fit for a 401 body: never
  the token itself.
* **API keys** are shown to the user once; only their SHA-256 is stored (a key is 32 random
  bytes, so a fast hash is enough: there is nothing to guess).
* **OEM tokens** (the refresh tokens that drive a user's cars) are encrypted at rest with Fernet
  (:class:`TokenCipher`): a copy of the database alone does not give access to any car.
* **OAuth** ``state`` values are 32 random bytes; PKCE verifiers and challenges are those of
  :mod:`adapters.tesla.oauth`, re-exported here.
* **Outbound webhooks** carry ``t=<unix time>,v1=<hex HMAC-SHA256 of "<t>." + body>``: the
  receiver checks both the body and its freshness, so a captured request cannot be replayed
  later.

Secrets never appear in ``repr``, exception messages or logs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime, timedelta

import jwt
from cryptography.fernet import Fernet, InvalidToken

from adapters.tesla.oauth import code_challenge, make_code_verifier
from twin.auth import Token

__all__ = [
    "API_KEY_PREFIX",
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "InvalidCredentials",
    "TokenCipher",
    "api_key_hash",
    "check_password_strength",
    "code_challenge",
    "hash_password",
    "issue_access_token",
    "make_code_verifier",
    "new_api_key",
    "new_state",
    "sign_body",
    "user_from_access_token",
    "verify_body",
    "verify_password",
]

# -- passwords ---------------------------------------------------------------------------------

#: scrypt cost of new hashes: 16 MiB of memory and ~50 ms per hash (OWASP's minimum for scrypt)
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
#: the most memory a stored hash may ask scrypt for (its parameters are read from the hash)
_SCRYPT_MAXMEM = 64 * 1024 * 1024
#: parameters beyond these are not ones this module wrote: refused rather than computed
_MAX_N_LOG2 = 20
_MAX_R = 32
_MAX_P = 16

MIN_PASSWORD_LENGTH = 10
#: long enough for any passphrase, short enough that hashing one is not a denial of service
MAX_PASSWORD_LENGTH = 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _password_bytes(password: str) -> bytes:
    # a lone surrogate (possible in a JSON string) is hashed as given rather than crashing
    return password.encode("utf-8", "surrogatepass")


def hash_password(password: str) -> str:
    """The stored form of ``password``: ``scrypt$n$r$p$salt_b64$hash_b64`` with a fresh random
    salt, so two users with one password have different hashes."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(_password_bytes(password), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=_SCRYPT_MAXMEM, dklen=_HASH_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` is the one ``encoded`` (from :func:`hash_password`) was made from.

    The hashes are compared in constant time. A malformed or foreign encoding gives ``False``
    (a corrupt row must not turn a sign-in into a server error), as do cost parameters beyond
    what this module writes (they could make one sign-in exhaust the server's memory) and a
    hash of another length than the one written.
    """
    try:
        scheme, n_s, r_s, p_s, salt_s, hash_s = encoded.split("$")
        if scheme != "scrypt" or not all(s.isdigit() for s in (n_s, r_s, p_s)):
            return False
        n, r, p = int(n_s), int(r_s), int(p_s)
        if n < 2 or n & (n - 1) or n > 2**_MAX_N_LOG2 or not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P:
            return False
        salt = base64.b64decode(salt_s, validate=True)
        expected = base64.b64decode(hash_s, validate=True)
        # exactly the length written: scrypt's output for a shorter length is a prefix of the
        # longer one, so accepting any length would let a truncated hash still verify
        if not salt or len(expected) != _HASH_BYTES:
            return False
        digest = hashlib.scrypt(_password_bytes(password), salt=salt, n=n, r=r, p=p,
                                maxmem=_SCRYPT_MAXMEM, dklen=_HASH_BYTES)
    except (AttributeError, ValueError, binascii.Error, MemoryError):
        return False
    return hmac.compare_digest(digest, expected)


def check_password_strength(password: str) -> str | None:
    """Why ``password`` may not be chosen, or ``None`` when it may."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"the password must have at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"the password must have at most {MAX_PASSWORD_LENGTH} characters"
    return None


# -- access tokens -----------------------------------------------------------------------------

_JWT_ALGORITHM = "HS256"
_ACCESS = "access"


class InvalidCredentials(ValueError):
    """An access token was refused. ``reason`` (also the message) is fit for a 401 body: it
    never contains the token."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return now


def issue_access_token(user_id: str, secret: str, ttl_s: int = 3600, now: datetime | None = None) -> str:
    """A signed access token for ``user_id``, valid for ``ttl_s`` seconds from ``now``."""
    if not secret:
        raise ValueError("the access-token secret is empty: anyone could sign tokens")
    if not user_id:
        raise ValueError("an access token needs a user id")
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, not {ttl_s}")
    issued = _utc(now)
    claims = {
        "sub": user_id,
        "iat": int(issued.timestamp()),
        "exp": int((issued + timedelta(seconds=ttl_s)).timestamp()),
        "typ": _ACCESS,
    }
    return jwt.encode(claims, secret, algorithm=_JWT_ALGORITHM)


def user_from_access_token(token: str, secret: str, now: datetime | None = None) -> str:
    """The user id an access token was issued to. Raises :class:`InvalidCredentials` when the
    token is malformed, not signed with ``secret``, not an access token, or expired at ``now``.

    Only HS256 is accepted, so a token cannot choose a weaker algorithm (``none``) for itself.
    """
    if not secret:
        raise ValueError("the access-token secret is empty: anyone could sign tokens")
    if not isinstance(token, str) or not token:
        raise InvalidCredentials("malformed access token")
    try:
        # expiry is checked below, against ``now``, so that it follows the caller's clock
        claims = jwt.decode(token, secret, algorithms=[_JWT_ALGORITHM],
                            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                     "require": ["sub", "exp", "typ"]})
    except jwt.InvalidSignatureError:
        raise InvalidCredentials("access token signature is invalid") from None
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidCredentials(f"access token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidAlgorithmError:
        raise InvalidCredentials("access token is not signed with HS256") from None
    except jwt.PyJWTError:
        raise InvalidCredentials("malformed access token") from None
    if claims.get("typ") != _ACCESS:
        raise InvalidCredentials("not an access token")
    sub, exp = claims.get("sub"), claims.get("exp")
    if not isinstance(sub, str) or not sub:
        raise InvalidCredentials("malformed access token")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise InvalidCredentials("malformed access token")
    if _utc(now).timestamp() >= exp:
        raise InvalidCredentials("access token expired: sign in again")
    return sub


# -- API keys ----------------------------------------------------------------------------------

API_KEY_PREFIX = "ctk_"


def new_api_key() -> tuple[str, str]:
    """A new API key and the hash to store: ``(key, sha256_hex)``. The key (``ctk_`` and 32
    random bytes, URL-safe) is shown to the user once; the prefix lets secret scanners and
    people recognise it."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, api_key_hash(key)


def api_key_hash(key: str) -> str:
    """The stored form of an API key (hex SHA-256), looked up when a request presents the key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


# -- OEM tokens at rest ------------------------------------------------------------------------

_HOW_TO_MAKE_A_KEY = ('python -c "from cryptography.fernet import Fernet; '
                      'print(Fernet.generate_key().decode())"')


class TokenCipher:
    """Encrypts an account's OEM :class:`~twin.auth.Token` for the database, and back.

    ``key`` is a Fernet key (32 URL-safe base64-encoded bytes). Fernet authenticates as well as
    encrypts: text changed in the database, or read with another key, is refused rather than
    decrypted to garbage.
    """

    def __init__(self, key: str) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):  # the message leaves the key out: it may be nearly right
            raise ValueError("the OEM token key is not a valid Fernet key (32 URL-safe base64-encoded "
                             f"bytes); make one with: {_HOW_TO_MAKE_A_KEY}") from None

    def __repr__(self) -> str:
        return "TokenCipher(key=<redacted>)"

    @staticmethod
    def generate_key() -> str:
        """A new random Fernet key."""
        return Fernet.generate_key().decode("ascii")

    def encrypt(self, token: Token) -> str:
        """``token`` as Fernet text (of a JSON object with both tokens and the expiry)."""
        data = {
            "access_token": token.access_token,
            "refresh_token": token.refresh_token,
            "expires_at": token.expires_at.isoformat(),
        }
        return self._fernet.encrypt(json.dumps(data, separators=(",", ":")).encode("utf-8")).decode("ascii")

    def decrypt(self, text: str) -> Token:
        """The token :meth:`encrypt` made ``text`` from. Raises ``ValueError`` when ``text`` was
        encrypted with another key or changed since."""
        try:
            plain = self._fernet.decrypt(text.encode("ascii") if isinstance(text, str) else text)
        except (InvalidToken, TypeError, UnicodeEncodeError):
            raise ValueError("stored OEM tokens cannot be decrypted with this key") from None
        try:
            data = json.loads(plain)
            access, refresh = data["access_token"], data["refresh_token"]
            if not isinstance(access, str) or not (refresh is None or isinstance(refresh, str)):
                raise TypeError
            expires_at = datetime.fromisoformat(data["expires_at"])
        except (ValueError, KeyError, TypeError):
            raise ValueError("stored OEM tokens decrypt but are not in the expected format") from None
        return Token(access, refresh, expires_at)


# -- OAuth -------------------------------------------------------------------------------------


def new_state() -> str:
    """A one-time OAuth ``state`` (32 random bytes, URL-safe): ties the redirect back from the
    OEM to the user who started the link, so a forged redirect cannot link a stranger's car."""
    return secrets.token_urlsafe(32)


# -- outbound webhook signatures ---------------------------------------------------------------


def _mac(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()


def sign_body(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header of a webhook ``body`` sent at ``timestamp`` (Unix seconds):
    ``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>." + body>``."""
    return f"t={int(timestamp)},v1={_mac(secret, body, int(timestamp))}"


def verify_body(secret: str, body: bytes, header: str, now_ts: int, tolerance_s: int = 300) -> bool:
    """Whether ``header`` (from :func:`sign_body`) signs ``body`` with ``secret`` and was made
    within ``tolerance_s`` seconds of ``now_ts`` (either side). Any ``v1`` may match, so a
    sender rotating its secret can sign with both. A malformed header gives ``False``."""
    if not isinstance(header, str):
        return False
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if name == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                return False
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures or abs(now_ts - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, body, timestamp).encode("ascii")
    # every candidate is compared (no early exit), each in constant time
    matched = False
    for signature in signatures:
        matched |= hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass"))
    return matched
