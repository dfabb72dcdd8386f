"""The server's secrets: password hashes, access tokens, API keys, OEM tokens at rest, OAuth
state and webhook signatures refuse what they should and never show a secret."""

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from server.security import (
    InvalidCredentials,
    TokenCipher,
    api_key_hash,
    check_password_strength,
    code_challenge,
    hash_password,
    issue_access_token,
    make_code_verifier,
    new_api_key,
    new_state,
    sign_body,
    user_from_access_token,
    verify_body,
    verify_password,
)
from twin.auth import Token

SECRET = "s3cret-for-tests-0123456789abcdefghijklmnop"
OTHER_SECRET = "another-secret-0123456789abcdefghijklmnopq"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


# -- passwords -----------------------------------------------------------------------------------

def test_a_password_verifies_against_its_hash_and_a_wrong_one_does_not():
    encoded = hash_password("correct horse battery")
    assert verify_password("correct horse battery", encoded)
    assert not verify_password("correct horse batterY", encoded)
    assert not verify_password("", encoded)
    assert "correct horse" not in encoded


def test_the_encoding_names_scrypt_and_its_cost():
    scheme, n, r, p, salt, digest = hash_password("correct horse battery").split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32


def test_two_hashes_of_one_password_differ_and_both_verify():
    a, b = hash_password("the same password"), hash_password("the same password")
    assert a != b
    assert a.split("$")[4] != b.split("$")[4]  # the salts
    assert verify_password("the same password", a) and verify_password("the same password", b)


def test_non_ascii_and_lone_surrogate_passwords_hash_and_verify():
    for password in ("pässwörd-ünïcode-🔑", "half a pair \ud800 of surrogates"):
        encoded = hash_password(password)
        assert verify_password(password, encoded)
        assert not verify_password(password + "x", encoded)


def test_a_hash_with_other_cost_parameters_still_verifies():
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(b"older password", salt=salt, n=2**12, r=8, p=1, dklen=32)
    encoded = f"scrypt${2**12}$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    assert verify_password("older password", encoded)
    assert not verify_password("other password", encoded)


@pytest.mark.parametrize("encoded", [
    "",
    "not a hash",
    "scrypt$16384$8$1$c2FsdA==",                          # a field missing
    "scrypt$16384$8$1$c2FsdA==$aGFzaA==$extra",           # a field too many
    "bcrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,
    "scrypt$abc$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,
    "scrypt$16383$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,   # n not a power of two
    "scrypt$1$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,
    "scrypt$-16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,
    "scrypt$16384$0$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,
    "scrypt$16384$8$0$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,
    f"scrypt${2**30}$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,  # would need 1 TiB
    "scrypt$16384$8$1$not*base64$" + "A" * 44,
    "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$not*base64",
    "scrypt$16384$8$1$$" + "A" * 44,                     # no salt
    "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$",        # no hash
    "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA==$QUJD",     # a 3-byte hash
    "scrypt$¹⁶$8$1$c2FsdHNhbHRzYWx0c2FsdA==$" + "A" * 44,  # unicode digits
])
def test_a_malformed_encoding_is_false_not_an_error(encoded):
    assert verify_password("any password at all", encoded) is False


def test_a_missing_hash_is_false():
    assert verify_password("any password at all", None) is False  # type: ignore[arg-type]


def test_a_truncated_real_hash_does_not_verify():
    encoded = hash_password("correct horse battery")
    assert not verify_password("correct horse battery", encoded[:-4])
    assert not verify_password("correct horse battery", encoded.replace("scrypt$16384", "scrypt$8192"))


def test_password_strength():
    assert check_password_strength("123456789") is not None
    assert "10" in check_password_strength("short")
    assert check_password_strength("") is not None
    assert check_password_strength("1234567890") is None
    assert check_password_strength("x" * 1024) is None
    too_long = check_password_strength("x" * 1025)
    assert too_long is not None and "1024" in too_long


# -- access tokens -------------------------------------------------------------------------------

def test_an_access_token_names_its_user_until_it_expires():
    token = issue_access_token("user-1", SECRET, ttl_s=600, now=T0)
    assert user_from_access_token(token, SECRET, now=T0) == "user-1"
    assert user_from_access_token(token, SECRET, now=T0 + timedelta(seconds=599)) == "user-1"
    with pytest.raises(InvalidCredentials, match="expired") as exc:
        user_from_access_token(token, SECRET, now=T0 + timedelta(seconds=600))
    assert token not in str(exc.value) and token not in exc.value.reason
    with pytest.raises(InvalidCredentials, match="expired"):
        user_from_access_token(token, SECRET, now=T0 + timedelta(days=1))


def test_the_claims_are_the_documented_ones():
    token = issue_access_token("user-1", SECRET, ttl_s=600, now=T0)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims == {"sub": "user-1", "iat": int(T0.timestamp()), "exp": int(T0.timestamp()) + 600, "typ": "access"}


def test_a_token_issued_now_is_valid_now():
    token = issue_access_token("user-2", SECRET)
    assert user_from_access_token(token, SECRET) == "user-2"


def test_invalid_credentials_is_a_value_error():
    assert issubclass(InvalidCredentials, ValueError)


def _check_refused(token, secret=SECRET, match=None):
    with pytest.raises(InvalidCredentials, match=match) as exc:
        user_from_access_token(token, secret, now=T0)
    assert exc.value.reason == str(exc.value)
    if token:
        assert token not in str(exc.value)
        for part in token.split("."):
            if len(part) > 8:
                assert part not in str(exc.value)
    return exc.value


def test_a_token_of_another_secret_is_refused():
    _check_refused(issue_access_token("user-1", OTHER_SECRET, now=T0), match="signature")


def test_a_token_with_a_changed_payload_is_refused():
    header, _, signature = issue_access_token("user-1", SECRET, now=T0).split(".")
    forged = base64.urlsafe_b64encode(json.dumps(
        {"sub": "admin", "iat": int(T0.timestamp()), "exp": int(T0.timestamp()) + 3600, "typ": "access"}
    ).encode()).rstrip(b"=").decode()
    _check_refused(f"{header}.{forged}.{signature}", match="signature")


def test_a_token_with_a_changed_signature_is_refused():
    token = issue_access_token("user-1", SECRET, now=T0)
    head, _, sig = token.rpartition(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    _check_refused(f"{head}.{flipped}")


def test_a_token_of_another_type_is_refused():
    claims = {"sub": "user-1", "iat": int(T0.timestamp()), "exp": int(T0.timestamp()) + 3600}
    _check_refused(jwt.encode({**claims, "typ": "refresh"}, SECRET, algorithm="HS256"), match="not an access token")
    _check_refused(jwt.encode(claims, SECRET, algorithm="HS256"))  # no typ at all


def test_an_unsigned_token_is_refused():
    claims = {"sub": "user-1", "iat": int(T0.timestamp()), "exp": int(T0.timestamp()) + 3600, "typ": "access"}
    _check_refused(jwt.encode(claims, None, algorithm="none"))


def test_a_token_signed_with_another_algorithm_is_refused():
    claims = {"sub": "user-1", "iat": int(T0.timestamp()), "exp": int(T0.timestamp()) + 3600, "typ": "access"}
    _check_refused(jwt.encode(claims, SECRET + SECRET, algorithm="HS512"), SECRET + SECRET, match="HS256")


def test_a_token_without_a_user_or_expiry_is_refused():
    _check_refused(jwt.encode({"exp": int(T0.timestamp()) + 60, "typ": "access"}, SECRET, algorithm="HS256"))
    _check_refused(jwt.encode({"sub": "user-1", "typ": "access"}, SECRET, algorithm="HS256"))
    _check_refused(jwt.encode({"sub": "", "exp": int(T0.timestamp()) + 60, "typ": "access"}, SECRET,
                              algorithm="HS256"))


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30", "x" * 500])
def test_a_malformed_token_is_refused(token):
    _check_refused(token, match="malformed")


def test_issuing_refuses_an_empty_secret_a_bad_ttl_and_a_naive_time():
    with pytest.raises(ValueError):
        issue_access_token("user-1", "")
    with pytest.raises(ValueError):
        issue_access_token("user-1", SECRET, ttl_s=0)
    with pytest.raises(ValueError):
        issue_access_token("", SECRET)
    with pytest.raises(ValueError):
        issue_access_token("user-1", SECRET, now=datetime(2025, 3, 1, 12))


# -- API keys ------------------------------------------------------------------------------------

def test_an_api_key_is_prefixed_random_and_stored_as_its_sha256():
    key, hashed = new_api_key()
    assert key.startswith("ctk_")
    body = key[len("ctk_"):]
    assert len(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) == 32
    assert set(body) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert hashed == hashlib.sha256(key.encode()).hexdigest() == api_key_hash(key)
    assert len(hashed) == 64 and key not in hashed
    other, other_hash = new_api_key()
    assert other != key and other_hash != hashed


def test_the_api_key_hash_is_stable_and_distinguishes_keys():
    assert api_key_hash("ctk_abc") == api_key_hash("ctk_abc")
    assert api_key_hash("ctk_abc") == hashlib.sha256(b"ctk_abc").hexdigest()
    assert api_key_hash("ctk_abc") != api_key_hash("ctk_abd")


# -- OEM tokens at rest --------------------------------------------------------------------------

ACCESS = "eyJ-access-token-very-secret"
REFRESH = "refresh-token-very-secret-too"


def test_a_token_survives_encryption():
    cipher = TokenCipher(TokenCipher.generate_key())
    token = Token(ACCESS, REFRESH, T0 + timedelta(hours=8))
    text = cipher.encrypt(token)
    assert ACCESS not in text and REFRESH not in text
    back = cipher.decrypt(text)
    assert back == token and back.expires_at.tzinfo is not None
    assert cipher.decrypt(cipher.encrypt(Token(ACCESS, None, T0))) == Token(ACCESS, None, T0)
    assert cipher.encrypt(token) != text  # a fresh IV every time


def test_another_key_cannot_decrypt():
    text = TokenCipher(TokenCipher.generate_key()).encrypt(Token(ACCESS, REFRESH, T0))
    with pytest.raises(ValueError, match="^stored OEM tokens cannot be decrypted with this key$"):
        TokenCipher(TokenCipher.generate_key()).decrypt(text)


@pytest.mark.parametrize("change", [
    lambda t: t[:-6] + ("AAAAAA" if t[-6:] != "AAAAAA" else "BBBBBB"),
    lambda t: t[:40] + ("x" if t[40] != "x" else "y") + t[41:],
    lambda t: t[:-10],
    lambda t: "",
    lambda t: "not fernet at all",
    lambda t: "ünïcode",
])
def test_changed_text_cannot_be_decrypted(change):
    cipher = TokenCipher(TokenCipher.generate_key())
    text = cipher.encrypt(Token(ACCESS, REFRESH, T0))
    with pytest.raises(ValueError, match="^stored OEM tokens cannot be decrypted with this key$"):
        cipher.decrypt(change(text))


@pytest.mark.parametrize("key", ["", "short", "x" * 44, "A" * 43, 12345])
def test_a_bad_key_is_refused_with_how_to_make_one(key):
    with pytest.raises(ValueError) as exc:
        TokenCipher(key)
    message = str(exc.value)
    assert "Fernet" in message
    assert 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"' in message
    if isinstance(key, str) and len(key) > 3:
        assert key not in message


def test_generated_keys_are_fresh_strings():
    a, b = TokenCipher.generate_key(), TokenCipher.generate_key()
    assert isinstance(a, str) and a != b and len(base64.urlsafe_b64decode(a)) == 32


def test_no_secret_in_reprs():
    key = TokenCipher.generate_key()
    cipher = TokenCipher(key)
    assert key not in repr(cipher) and key not in str(cipher)
    token = cipher.decrypt(cipher.encrypt(Token(ACCESS, REFRESH, T0)))
    for shown in (repr(token), str(token)):
        assert ACCESS not in shown and REFRESH not in shown


def test_decrypted_text_of_another_shape_is_a_value_error():
    key = TokenCipher.generate_key()
    from cryptography.fernet import Fernet

    text = Fernet(key).encrypt(b'{"access_token": 1}').decode()
    with pytest.raises(ValueError, match="format") as exc:
        TokenCipher(key).decrypt(text)
    assert "1" not in str(exc.value).replace("OEM", "")


# -- OAuth state and PKCE ------------------------------------------------------------------------

def test_states_are_random_and_url_safe():
    states = {new_state() for _ in range(50)}
    assert len(states) == 50
    for state in states:
        assert len(base64.urlsafe_b64decode(state + "=" * (-len(state) % 4))) == 32
        assert set(state) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_pkce_is_the_rfc_7636_s256():
    # RFC 7636 appendix B
    assert code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    verifier = make_code_verifier()
    assert 43 <= len(verifier) <= 128 and verifier != make_code_verifier()


# -- webhook signatures --------------------------------------------------------------------------

BODY = b'{"event":"charging_started","vehicle_id":"v1"}'
TS = 1_740_830_400


def test_a_signed_body_verifies():
    header = sign_body("whsec", BODY, TS)
    expected = hmac.new(b"whsec", f"{TS}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={TS},v1={expected}"
    assert verify_body("whsec", BODY, header, now_ts=TS)
    assert verify_body("whsec", BODY, header, now_ts=TS + 300)
    assert verify_body("whsec", BODY, header, now_ts=TS - 300)


def test_a_changed_body_secret_or_timestamp_does_not_verify():
    header = sign_body("whsec", BODY, TS)
    assert not verify_body("whsec", BODY + b" ", header, now_ts=TS)
    assert not verify_body("whsec", BODY.replace(b"v1", b"v2"), header, now_ts=TS)
    assert not verify_body("other", BODY, header, now_ts=TS)
    # the timestamp is signed: moving it forward to look fresh breaks the signature
    moved = header.replace(f"t={TS}", f"t={TS + 1000}")
    assert not verify_body("whsec", BODY, moved, now_ts=TS + 1000)


def test_a_stale_or_future_signature_does_not_verify():
    header = sign_body("whsec", BODY, TS)
    assert not verify_body("whsec", BODY, header, now_ts=TS + 301)
    assert not verify_body("whsec", BODY, header, now_ts=TS - 301)
    assert verify_body("whsec", BODY, header, now_ts=TS + 3600, tolerance_s=3600)


def test_any_of_several_signatures_may_match():
    good = sign_body("new-secret", BODY, TS)
    old = sign_body("old-secret", BODY, TS).split(",")[1]
    assert verify_body("new-secret", BODY, f"{good},{old}", now_ts=TS)
    assert verify_body("old-secret", BODY, f"{good},{old}", now_ts=TS)
    assert verify_body("new-secret", BODY, f"t={TS},v1={'0' * 64},{good.split(',')[1]}", now_ts=TS)


@pytest.mark.parametrize("header", [
    "",
    "garbage",
    f"v1={'0' * 64}",                                     # no timestamp
    f"t={TS}",                                            # no signature
    f"t=abc,v1={'0' * 64}",
    f"t=-{TS},v1={'0' * 64}",
    f"t={TS},t={TS},v1={'0' * 64}",
    f"t={TS},v1=",
    f"t={TS},v1={'0' * 64}",
    f"t={TS},v0=" + sign_body("whsec", BODY, TS).split("v1=")[1],  # the right MAC under another scheme
    f"t=¹²,v1={'0' * 64}",
    None,
])
def test_a_malformed_header_does_not_verify(header):
    assert verify_body("whsec", BODY, header, now_ts=TS) is False

