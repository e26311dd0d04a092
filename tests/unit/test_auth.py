"""Unit tests for serve_app.auth: the JWT verification matrix and token minting."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any, cast

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from serve_app.auth import AuthError, Principal, TokenVerifier, mint_token
from serve_app.settings import DEV_JWT_SECRET, Settings


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import os

    for name in list(os.environ):
        if name.startswith("HEIMDEX_"):
            monkeypatch.delenv(name)
    yield


def make_settings(**overrides: Any) -> Settings:
    # No .env file; cast because _env_file is a pydantic-settings init-only keyword.
    settings: Settings = cast(Any, Settings)(_env_file=None, **overrides)
    return settings


@pytest.fixture(scope="module")
def rsa_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_public_pem(rsa_private_key: rsa.RSAPrivateKey) -> str:
    return (
        rsa_private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


@pytest.fixture
def hs_settings() -> Settings:
    return make_settings()


@pytest.fixture
def hs_verifier(hs_settings: Settings) -> TokenVerifier:
    return TokenVerifier(hs_settings)


@pytest.fixture
def rs_settings(rsa_public_pem: str) -> Settings:
    return make_settings(jwt_algorithm="RS256", jwt_public_key=rsa_public_pem)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def valid_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "heimdex",
        "aud": "heimdex",
        "sub": "user-1",
        "org_id": "org-a",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "tok-1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def hs_encode(claims: dict[str, Any], secret: str = DEV_JWT_SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def bearer(token: str) -> str:
    return f"Bearer {token}"


def assert_auth_error(verifier: TokenVerifier, header: str | None, code: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        verifier.verify(header)
    assert info.value.code == code, f"expected {code}, got {info.value.code}: {info.value.message}"
    assert info.value.status_code == 401
    return info.value


# --- the header ------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "Basic dXNlcjpwYXNz", "Bearer", "Bearer   "])
def test_missing_or_non_bearer_header_is_missing_token(
    hs_verifier: TokenVerifier, header: str | None
) -> None:
    err = assert_auth_error(hs_verifier, header, "missing_token")
    assert err.www_authenticate == 'Bearer realm="heimdex"'


@pytest.mark.parametrize("token", ["abc.def", "abc", "a.b.c.d", "not a jwt", "abc.d$f.ghi"])
def test_malformed_token(hs_verifier: TokenVerifier, token: str) -> None:
    assert_auth_error(hs_verifier, bearer(token), "malformed_token")


def test_three_segments_of_garbage_is_malformed(hs_verifier: TokenVerifier) -> None:
    assert_auth_error(hs_verifier, bearer("aaaa.bbbb.cccc"), "malformed_token")


def test_oversized_token_is_refused_before_parsing(hs_verifier: TokenVerifier) -> None:
    assert_auth_error(hs_verifier, bearer("a" * 9000 + ".b.c"), "malformed_token")


def test_scheme_is_case_insensitive(hs_settings: Settings, hs_verifier: TokenVerifier) -> None:
    token = mint_token(hs_settings, "org-a", "user-1")
    assert hs_verifier.verify(f"bearer {token}").org_id == "org-a"


# --- signature and algorithm -------------------------------------------------------------------------


def test_bad_signature(hs_verifier: TokenVerifier) -> None:
    token = hs_encode(valid_claims(), secret="another-secret-that-is-long-enough-0123456789")
    err = assert_auth_error(hs_verifier, bearer(token), "invalid_signature")
    assert err.www_authenticate == 'Bearer realm="heimdex", error="invalid_token"'


def test_tampered_payload_fails_signature(hs_settings: Settings, hs_verifier: TokenVerifier) -> None:
    header, _payload, sig = mint_token(hs_settings, "org-a", "user-1").split(".")
    forged = b64url_json(valid_claims(org_id="org-b"))
    assert_auth_error(hs_verifier, bearer(f"{header}.{forged}.{sig}"), "invalid_signature")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(hs_verifier: TokenVerifier, alg: str) -> None:
    token = f"{b64url_json({'alg': alg, 'typ': 'JWT'})}.{b64url_json(valid_claims())}."
    assert_auth_error(hs_verifier, bearer(token), "algorithm_not_allowed")


def test_alg_none_is_refused_when_rs256_pinned(rs_settings: Settings) -> None:
    token = f"{b64url_json({'alg': 'none'})}.{b64url_json(valid_claims())}."
    assert_auth_error(TokenVerifier(rs_settings), bearer(token), "algorithm_not_allowed")


def test_hs256_signed_with_rsa_public_key_fails_when_rs256_pinned(
    rs_settings: Settings, rsa_public_pem: str
) -> None:
    # The classic confusion attack: HMAC "signed" with the (public) RSA key as the secret.
    signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'JWT'})}.{b64url_json(valid_claims())}"
    sig = hmac.new(rsa_public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64url(sig)}"
    assert_auth_error(TokenVerifier(rs_settings), bearer(token), "algorithm_not_allowed")


def test_rs256_token_fails_when_hs256_pinned(
    hs_verifier: TokenVerifier, rsa_private_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(valid_claims(), rsa_private_key, algorithm="RS256")
    assert_auth_error(hs_verifier, bearer(token), "algorithm_not_allowed")


def test_hs512_token_fails_when_hs256_pinned(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(valid_claims(), DEV_JWT_SECRET * 2, algorithm="HS512")
    assert_auth_error(hs_verifier, bearer(token), "algorithm_not_allowed")


def test_rs256_with_public_key_works(rs_settings: Settings, rsa_private_key: rsa.RSAPrivateKey) -> None:
    token = mint_token(rs_settings, "org-r", "svc:indexer", scopes=["write"], private_key=rsa_private_key)
    principal = TokenVerifier(rs_settings).verify(bearer(token))
    assert principal.org_id == "org-r"
    assert principal.sub == "svc:indexer"
    assert principal.scopes == frozenset({"write"})


def test_rs256_token_from_another_key_fails(rs_settings: Settings) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = mint_token(rs_settings, "org-r", "u", private_key=other)
    assert_auth_error(TokenVerifier(rs_settings), bearer(token), "invalid_signature")


def test_rs256_needs_a_key() -> None:
    with pytest.raises(ValueError, match="RS256"):
        TokenVerifier(make_settings(jwt_algorithm="RS256"))


def test_rs256_mint_needs_private_key(rs_settings: Settings) -> None:
    with pytest.raises(ValueError, match="private_key"):
        mint_token(rs_settings, "org-r", "u")


def test_rs256_jwks_client_is_used(rsa_private_key: rsa.RSAPrivateKey) -> None:
    settings = make_settings(jwt_algorithm="RS256", jwks_url="https://idp.invalid/.well-known/jwks.json")
    public_key = rsa_private_key.public_key()

    class FakeJWKClient:
        def __init__(self) -> None:
            self.calls = 0

        def get_signing_key_from_jwt(self, token: str) -> Any:
            self.calls += 1
            if jwt.get_unverified_header(token).get("kid") != "k1":
                raise jwt.PyJWKClientError("no matching key")
            return type("SigningKey", (), {"key": public_key})()

    client = FakeJWKClient()
    verifier = TokenVerifier(settings, jwks_client=client)  # type: ignore[arg-type]
    good = mint_token(settings, "org-j", "u", private_key=rsa_private_key, key_id="k1")
    assert verifier.verify(bearer(good)).org_id == "org-j"
    assert client.calls == 1
    unknown = mint_token(settings, "org-j", "u", private_key=rsa_private_key, key_id="k2")
    assert_auth_error(verifier, bearer(unknown), "unknown_key")


def test_jwks_url_builds_client_without_network() -> None:
    settings = make_settings(jwt_algorithm="RS256", jwks_url="https://idp.invalid/.well-known/jwks.json")
    verifier = TokenVerifier(settings)  # must not fetch anything
    assert verifier.algorithm == "RS256"


# --- time claims -------------------------------------------------------------------------------------


def test_expired_beyond_leeway(hs_settings: Settings, hs_verifier: TokenVerifier) -> None:
    token = mint_token(
        hs_settings, "org-a", "u", ttl_s=60, now=time.time() - 60 - hs_settings.jwt_leeway_s - 60
    )
    assert_auth_error(hs_verifier, bearer(token), "expired")


def test_expired_within_leeway_passes(hs_settings: Settings, hs_verifier: TokenVerifier) -> None:
    assert hs_settings.jwt_leeway_s >= 20
    token = mint_token(hs_settings, "org-a", "u", ttl_s=60, now=time.time() - 60 - 10)
    assert hs_verifier.verify(bearer(token)).org_id == "org-a"


def test_not_yet_valid_beyond_leeway(hs_verifier: TokenVerifier) -> None:
    now = int(time.time())
    token = hs_encode(valid_claims(iat=None, nbf=now + 300, exp=now + 900))
    assert_auth_error(hs_verifier, bearer(token), "not_yet_valid")


def test_minted_in_the_future_is_not_yet_valid(hs_settings: Settings, hs_verifier: TokenVerifier) -> None:
    token = mint_token(hs_settings, "org-a", "u", now=time.time() + 300)
    assert_auth_error(hs_verifier, bearer(token), "not_yet_valid")


def test_nbf_within_leeway_passes(hs_verifier: TokenVerifier) -> None:
    now = int(time.time())
    token = hs_encode(valid_claims(iat=None, nbf=now + 10))
    assert hs_verifier.verify(bearer(token)).sub == "user-1"


def test_zero_leeway_refuses_just_expired() -> None:
    settings = make_settings(jwt_leeway_s=0)
    token = mint_token(settings, "org-a", "u", ttl_s=60, now=time.time() - 70)
    assert_auth_error(TokenVerifier(settings), bearer(token), "expired")


# --- audience, issuer, required claims ---------------------------------------------------------------


def test_wrong_audience(hs_verifier: TokenVerifier) -> None:
    assert_auth_error(hs_verifier, bearer(hs_encode(valid_claims(aud="someone-else"))), "invalid_audience")


def test_wrong_issuer(hs_verifier: TokenVerifier) -> None:
    assert_auth_error(hs_verifier, bearer(hs_encode(valid_claims(iss="evil-idp"))), "invalid_issuer")


def test_settings_audience_and_issuer_are_used() -> None:
    settings = make_settings(jwt_audience="aud-x", jwt_issuer="iss-y")
    verifier = TokenVerifier(settings)
    assert verifier.verify(bearer(mint_token(settings, "org-a", "u"))).org_id == "org-a"
    assert_auth_error(verifier, bearer(hs_encode(valid_claims(iss="iss-y"))), "invalid_audience")
    assert_auth_error(verifier, bearer(hs_encode(valid_claims(aud="aud-x"))), "invalid_issuer")


@pytest.mark.parametrize("claim", ["org_id", "sub", "exp", "aud", "iss"])
def test_missing_required_claim(hs_verifier: TokenVerifier, claim: str) -> None:
    token = hs_encode(valid_claims(**{claim: None}))
    err = assert_auth_error(hs_verifier, bearer(token), "missing_claim")
    assert claim in err.message


@pytest.mark.parametrize("claim", ["org_id", "sub"])
def test_empty_identifier_is_missing_claim(hs_verifier: TokenVerifier, claim: str) -> None:
    assert_auth_error(hs_verifier, bearer(hs_encode(valid_claims(**{claim: ""}))), "missing_claim")


@pytest.mark.parametrize(
    "org_id",
    ["org a", "org/a", "org\na", "org\u00e9", "x" * 129, "org;drop", "org*"],
)
def test_org_id_with_bad_characters(hs_verifier: TokenVerifier, org_id: str) -> None:
    err = assert_auth_error(hs_verifier, bearer(hs_encode(valid_claims(org_id=org_id))), "invalid_claim")
    assert org_id not in err.message


@pytest.mark.parametrize("org_id", [123, ["org-a"], {"id": "org-a"}, True])
def test_org_id_of_wrong_type(hs_verifier: TokenVerifier, org_id: object) -> None:
    assert_auth_error(hs_verifier, bearer(hs_encode(valid_claims(org_id=org_id))), "invalid_claim")


def test_sub_with_bad_characters(hs_verifier: TokenVerifier) -> None:
    assert_auth_error(hs_verifier, bearer(hs_encode(valid_claims(sub="a b"))), "invalid_claim")


def test_identifier_of_max_length_passes(hs_verifier: TokenVerifier) -> None:
    org = "o" * 128
    assert hs_verifier.verify(bearer(hs_encode(valid_claims(org_id=org)))).org_id == org


def test_bad_scope_types(hs_verifier: TokenVerifier) -> None:
    assert_auth_error(hs_verifier, bearer(hs_encode(valid_claims(scope=["read"]))), "invalid_claim")
    assert_auth_error(hs_verifier, bearer(hs_encode(valid_claims(scopes="read"))), "invalid_claim")
    assert_auth_error(hs_verifier, bearer(hs_encode(valid_claims(scopes=["read", 3]))), "invalid_claim")


# --- the happy path ----------------------------------------------------------------------------------


def test_valid_token_gives_principal(hs_settings: Settings, hs_verifier: TokenVerifier) -> None:
    token = mint_token(hs_settings, "org-a", "alice@example.com", scopes=["read", "write"], token_id="t-42")
    principal = hs_verifier.verify(bearer(token))
    assert principal == Principal(
        org_id="org-a", sub="alice@example.com", scopes=frozenset({"read", "write"}), token_id="t-42"
    )
    assert not principal.is_admin


def test_scope_string_and_scopes_list_are_merged(hs_verifier: TokenVerifier) -> None:
    token = hs_encode(valid_claims(scope="read  write", scopes=["admin"]))
    principal = hs_verifier.verify(bearer(token))
    assert principal.scopes == frozenset({"read", "write", "admin"})
    assert principal.is_admin
    assert principal.token_id == "tok-1"


def test_no_scopes_and_no_jti(hs_verifier: TokenVerifier) -> None:
    principal = hs_verifier.verify(bearer(hs_encode(valid_claims(jti=None))))
    assert principal.scopes == frozenset()
    assert principal.token_id is None


def test_minted_token_shape(hs_settings: Settings) -> None:
    token = mint_token(hs_settings, "org-a", "u", scopes=["b", "a"], ttl_s=120, now=1_700_000_000)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iat"] == claims["nbf"] == 1_700_000_000
    assert claims["exp"] == 1_700_000_120
    assert claims["aud"] == hs_settings.jwt_audience
    assert claims["iss"] == hs_settings.jwt_issuer
    assert claims["scope"] == "a b"
    assert isinstance(claims["jti"], str) and claims["jti"]


def test_principal_is_frozen() -> None:
    principal = Principal(org_id="o", sub="s", scopes=frozenset(), token_id=None)
    with pytest.raises(AttributeError):
        principal.org_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("org_id", ["", "bad org", "x" * 129])
def test_mint_refuses_bad_identifiers(hs_settings: Settings, org_id: str) -> None:
    with pytest.raises(ValueError):
        mint_token(hs_settings, org_id, "u")


def test_auth_error_never_echoes_the_token(hs_verifier: TokenVerifier) -> None:
    token = hs_encode(valid_claims(), secret="another-secret-that-is-long-enough-0123456789")
    with pytest.raises(AuthError) as info:
        hs_verifier.verify(bearer(token))
    rendered = f"{info.value} {info.value!r} {info.value.message}"
    for part in token.split("."):
        assert part not in rendered


# --- settings ----------------------------------------------------------------------------------------


def test_production_refuses_default_secret() -> None:
    with pytest.raises(ValidationError):
        make_settings(env="production")


def test_production_with_real_secret_is_fine() -> None:
    secret = secrets.token_urlsafe(48)
    settings = make_settings(env="production", jwt_secret=secret)
    verifier = TokenVerifier(settings)
    token = mint_token(settings, "org-p", "u")
    assert verifier.verify(bearer(token)).org_id == "org-p"
    # and the dev secret no longer verifies
    assert_auth_error(verifier, bearer(hs_encode(valid_claims())), "invalid_signature")
