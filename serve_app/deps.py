"""FastAPI dependencies, as ``Annotated`` aliases: the tenant comes from the token and nowhere else.

Every dependency is ``async def``: none of them blocks (an HMAC check and a dict lookup), and FastAPI
runs a plain ``def`` dependency on a worker thread, a thread hop per dependency per request.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, Request

from serve_app.auth import AuthError, Principal
from serve_app.errors import ApiError
from serve_app.metrics import gateway_metrics
from serve_app.services import Services

ANONYMOUS = Principal(org_id="anonymous", sub="anonymous", scopes=frozenset(), token_id=None)


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def _authenticate(header: str | None, services: Services) -> Principal:
    try:
        principal: Principal = services.verifier.verify(header)
    except AuthError as exc:
        raise ApiError(exc.status_code, exc.code, str(exc), field="Authorization",
                       headers={"WWW-Authenticate": 'Bearer realm="heimdex"'}) from None
    return principal


def _remember(request: Request, principal: Principal) -> Principal:
    """Keep the verified principal on the request, so logging and metrics never verify the token again."""
    request.state.principal = principal
    return principal


def _admit(principal: Principal, services: Services) -> None:
    wait_s = services.limiter.try_acquire(principal.org_id)
    if wait_s is not None:
        gateway_metrics().refused(principal.org_id, "rate")
        raise ApiError(429, "tenant_rate_limited",
                       "request budget of this tenant is spent; retry after the indicated delay",
                       headers={"Retry-After": str(max(1, math.ceil(wait_s)))})


async def require_principal(request: Request, services: ServicesDep) -> Principal:
    principal = _remember(request, _authenticate(request.headers.get("authorization"), services))
    _admit(principal, services)
    return principal


async def embeddings_principal(request: Request, services: ServicesDep) -> Principal:
    """A token when one is sent; anonymous callers only where the settings allow them."""
    header = request.headers.get("authorization")
    if header is None and services.settings.allows_anonymous_embeddings:
        principal = ANONYMOUS
    else:
        principal = _authenticate(header, services)
    _admit(_remember(request, principal), services)
    return principal


async def require_admin(principal: Annotated[Principal, Depends(require_principal)]) -> Principal:
    if not principal.is_admin:
        raise ApiError(403, "admin_scope_required", "this route needs a token with the admin scope")
    return principal


PrincipalDep = Annotated[Principal, Depends(require_principal)]
EmbeddingsPrincipalDep = Annotated[Principal, Depends(embeddings_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]
