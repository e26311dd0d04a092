"""Bearer-token authentication for the gateway.

Every request carries ``Authorization: Bearer <JWT>``. :class:`TokenVerifier` checks it against the one
algorithm pinned in :class:`~serve_app.settings.Settings` (HS256 with ``jwt_secret``, or RS256 with a PEM
public key or a JWKS URL) and turns the claims into a :class:`Principal`. Any failure is an
:class:`AuthError` carrying a stable machine ``code``, an HTTP ``status_code`` and a fixed human message
that never echoes the token or claim values.

Pinning matters: the algorithm named in the token header is compared with the configured one *before*
any key is chosen, so ``alg: none`` and HS256/RS256 confusion (an HS256 token "signed" with the RSA public
key as an HMAC secret) are refused outright, and :func:`jwt.decode` is only ever given that one algorithm.

:func:`mint_token` issues tokens in the same shape (dev tooling, tests, the CLI).

Nothing here touches the network at import time. With a JWKS URL, :meth:`TokenVerifier.verify` may fetch
the key set on a cache miss (at most every ``JWKS_CACHE_LIFESPAN_S``); call it from a worker thread in
async code if that latency matters.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from serve_app.settings import Settings

__all__ = [
    "ADMIN_SCOPE",
    "AuthError",
    "Principal",
    "TokenVerifier",
    "mint_token",
]

ADMIN_SCOPE: Final = "admin"

#: Longest bearer token accepted; anything bigger is refused before it is parsed.
MAX_TOKEN_CHARS: Final = 8192
#: org_id / sub: short, printable, no whitespace or separators that could confuse keys and logs.
MAX_IDENTIFIER_CHARS: Final = 128
MAX_SCOPES: Final = 256
MAX_SCOPE_CHARS: Final = 128
JWKS_CACHE_LIFESPAN_S: Final = 300.0
JWKS_FETCH_TIMEOUT_S: Final = 5.0

_IDENTIFIER_RE: Final = re.compile(r"[A-Za-z0-9._:@-]+")
_SCOPE_RE: Final = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces
_COMPACT_JWS_RE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

_MESSAGES: Final[Mapping[str, str]] = {
    "missing_token": "An 'Authorization: Bearer <token>' header is required.",
    "malformed_token": "The bearer token is not a well-formed JWT.",
    "algorithm_not_allowed": "The token's signing algorithm is not accepted by this service.",
    "invalid_signature": "The token signature is invalid.",
    "unknown_key": "The token was signed with a key this service does not know.",
    "expired": "The token has expired.",
    "not_yet_valid": "The token is not valid yet.",
    "invalid_audience": "The token was issued for a different audience.",
    "invalid_issuer": "The token was issued by an untrusted issuer.",
    "missing_claim": "The token lacks a required claim.",
    "invalid_claim": "The token carries an invalid claim.",
    "invalid_token": "The token is invalid.",
    "jwks_unavailable": "The signing keys could not be fetched; try again later.",
}


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: which tenant (``org_id``), who (``sub``) and what they may do."""

    org_id: str
    sub: str
    scopes: frozenset[str]
    token_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes


class AuthError(Exception):
    """Authentication failed. ``code`` is stable for clients; ``message`` is safe to show."""

    def __init__(self, code: str, message: str | None = None, *, status_code: int = 401) -> None:
        self.code = code
        self.message = message or _MESSAGES.get(code, _MESSAGES["invalid_token"])
        self.status_code = status_code
        super().__init__(self.message)

    @property
    def www_authenticate(self) -> str:
        """Value for the ``WWW-Authenticate`` header of a 401 (RFC 6750 section 3)."""
        if self.code == "missing_token":
            return 'Bearer realm="heimdex"'
        return 'Bearer realm="heimdex", error="invalid_token"'

    def __repr__(self) -> str:
        return f"AuthError(code={self.code!r}, status_code={self.status_code})"


def _check_identifier(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None or value == "":
        raise AuthError("missing_claim", f"The token lacks the required '{name}' claim.")
    if (
        not isinstance(value, str)
        or len(value) > MAX_IDENTIFIER_CHARS
        or _IDENTIFIER_RE.fullmatch(value) is None
    ):
        raise AuthError(
            "invalid_claim",
            f"The '{name}' claim must be 1-{MAX_IDENTIFIER_CHARS} characters of A-Z a-z 0-9 . _ : @ -.",
        )
    return value


def _parse_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    raw: list[object] = []
    scope = claims.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise AuthError("invalid_claim", "The 'scope' claim must be a space-separated string.")
        raw.extend(scope.split())
    scopes = claims.get("scopes")
    if scopes is not None:
        if not isinstance(scopes, list):
            raise AuthError("invalid_claim", "The 'scopes' claim must be a list of strings.")
        raw.extend(scopes)
    if len(raw) > MAX_SCOPES:
        raise AuthError("invalid_claim", f"The token carries more than {MAX_SCOPES} scopes.")
    out: set[str] = set()
    for item in raw:
        if not isinstance(item, str) or len(item) > MAX_SCOPE_CHARS or _SCOPE_RE.fullmatch(item) is None:
            raise AuthError("invalid_claim", "Scopes must be short printable strings without spaces.")
        out.add(item)
    return frozenset(out)


def _bearer_token(authorization_header: str | None) -> str:
    if authorization_header is None:
        raise AuthError("missing_token")
    parts = authorization_header.split()
    if not parts or parts[0].lower() != "bearer":
        raise AuthError("missing_token", "The Authorization header must use the Bearer scheme.")
    if len(parts) == 1:
        raise AuthError("missing_token")
    if len(parts) > 2:
        raise AuthError("malformed_token")
    token = parts[1]
    if len(token) > MAX_TOKEN_CHARS or _COMPACT_JWS_RE.fullmatch(token) is None:
        raise AuthError("malformed_token")
    return token


class TokenVerifier:
    """Verifies bearer JWTs against the algorithm and key pinned in ``settings``.

    RS256 uses ``settings.jwt_public_key`` when it is set, otherwise the JWKS at ``settings.jwks_url``
    (fetched lazily, cached for ``JWKS_CACHE_LIFESPAN_S``; tokens must carry a ``kid``). A bad
    configuration raises :class:`ValueError` here, at start-up, rather than on the first request.
    """

    def __init__(self, settings: Settings, *, jwks_client: jwt.PyJWKClient | None = None) -> None:
        self._algorithm: str = settings.jwt_algorithm
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_s
        self._static_key: str | RSAPublicKey | None = None
        self._jwks: jwt.PyJWKClient | None = None
        if self._algorithm == "HS256":
            if not settings.jwt_secret:
                raise ValueError("HS256 needs a non-empty HEIMDEX_JWT_SECRET")
            self._static_key = settings.jwt_secret
        elif self._algorithm == "RS256":
            if settings.jwt_public_key:
                key = load_pem_public_key(settings.jwt_public_key.encode("ascii"))
                if not isinstance(key, RSAPublicKey):
                    raise ValueError("HEIMDEX_JWT_PUBLIC_KEY must be an RSA public key in PEM form")
                self._static_key = key
            elif jwks_client is not None:
                self._jwks = jwks_client
            elif settings.jwks_url:
                self._jwks = jwt.PyJWKClient(
                    settings.jwks_url,
                    cache_keys=True,
                    cache_jwk_set=True,
                    lifespan=JWKS_CACHE_LIFESPAN_S,
                    timeout=JWKS_FETCH_TIMEOUT_S,
                )
            else:
                raise ValueError("RS256 needs HEIMDEX_JWT_PUBLIC_KEY or HEIMDEX_JWKS_URL")
        else:  # pragma: no cover - Settings restricts the literal
            raise ValueError(f"unsupported JWT algorithm {self._algorithm!r}")

    @property
    def algorithm(self) -> str:
        return self._algorithm

    def verify(self, authorization_header: str | None) -> Principal:
        """Authenticate an ``Authorization`` header value; raise :class:`AuthError` on any failure."""
        token = _bearer_token(authorization_header)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed_token") from None
        if header.get("alg") != self._algorithm:
            raise AuthError("algorithm_not_allowed")
        key = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[self._algorithm],
                options={"require": ["exp", "sub", "org_id"]},
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
            )
        except jwt.InvalidSignatureError:
            raise AuthError("invalid_signature") from None
        except jwt.ExpiredSignatureError:
            raise AuthError("expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("not_yet_valid") from None
        except jwt.InvalidAudienceError:
            raise AuthError("invalid_audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("invalid_issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("missing_claim", f"The token lacks the required '{exc.claim}' claim.") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("algorithm_not_allowed") from None
        except (InvalidSubjectError, InvalidJTIError, jwt.InvalidIssuedAtError):
            raise AuthError("invalid_claim") from None
        except jwt.DecodeError:
            raise AuthError("malformed_token") from None
        except jwt.InvalidKeyError:
            raise AuthError("invalid_signature") from None
        except jwt.PyJWTError:
            raise AuthError("invalid_token") from None
        org_id = _check_identifier(claims, "org_id")
        sub = _check_identifier(claims, "sub")
        jti = claims.get("jti")
        return Principal(
            org_id=org_id,
            sub=sub,
            scopes=_parse_scopes(claims),
            token_id=jti if isinstance(jti, str) and jti else None,
        )

    def _key_for(self, token: str) -> str | RSAPublicKey:
        if self._static_key is not None:
            return self._static_key
        assert self._jwks is not None
        try:
            signing_key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError:
            raise AuthError("jwks_unavailable", status_code=503) from None
        except jwt.PyJWKClientError:
            raise AuthError("unknown_key") from None
        except jwt.PyJWTError:
            raise AuthError("malformed_token") from None
        key = signing_key.key
        if not isinstance(key, RSAPublicKey):
            raise AuthError("unknown_key")
        return key


def mint_token(
    settings: Settings,
    org_id: str,
    sub: str,
    scopes: Iterable[str] = (),
    ttl_s: int = 3600,
    now: float | None = None,
    *,
    private_key: str | bytes | RSAPrivateKey | None = None,
    key_id: str | None = None,
    token_id: str | None = None,
) -> str:
    """Issue a token :class:`TokenVerifier` accepts for ``settings``.

    HS256 signs with ``settings.jwt_secret``; RS256 needs ``private_key`` (PEM or key object), and
    ``key_id`` sets the ``kid`` header a JWKS-backed verifier looks up. ``now`` is Unix seconds.
    """
    for name, value in (("org_id", org_id), ("sub", sub)):
        if len(value) > MAX_IDENTIFIER_CHARS or _IDENTIFIER_RE.fullmatch(value) is None:
            raise ValueError(f"{name} must be 1-{MAX_IDENTIFIER_CHARS} characters of A-Z a-z 0-9 . _ : @ -")
    scope_list = sorted(set(scopes))
    for scope in scope_list:
        if len(scope) > MAX_SCOPE_CHARS or _SCOPE_RE.fullmatch(scope) is None:
            raise ValueError(f"invalid scope {scope!r}")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": sub,
        "org_id": org_id,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(ttl_s),
        "jti": token_id or uuid.uuid4().hex,
    }
    if scope_list:
        claims["scope"] = " ".join(scope_list)
    headers = {"kid": key_id} if key_id else None
    if settings.jwt_algorithm == "HS256":
        if private_key is not None:
            raise ValueError("private_key is only used with RS256 settings")
        return jwt.encode(claims, settings.jwt_secret, algorithm="HS256", headers=headers)
    if private_key is None:
        raise ValueError("RS256 settings need a private_key to sign with")
    return jwt.encode(claims, private_key, algorithm="RS256", headers=headers)
