"""Security sweep on the real app: tenant isolation on every route of the OpenAPI schema, the JWT
failure matrix over HTTP, secrets absent from the logs, the Ray dashboard behind its token, CORS off.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from serve_app.settings import Settings
from tests.conftest import RayCluster, ServeApp
from tests.fault.helpers import MODEL, assert_exactly_once, point_count, unique
from tests.serve.helpers import auth, token

pytestmark = [pytest.mark.serve]

SECRET_TEXT = "Confidential merger plans of tenant A, codename BLUEHERON."


def _body_for(path: str, asset: str) -> Any:
    seg = {"asset_id": asset, "segment_id": "s0", "text": "intruder text about mergers"}
    return {
        "/v1/embeddings": {"input": "merger plans"},
        "/vectors/search": {"query": "confidential merger plans codename", "limit": 100},
        "/vectors/embed": seg,
        "/vectors/embed:batch": {"segments": [seg]},
        "/vectors/mock": seg,
    }.get(path)


def test_tenant_b_sees_and_changes_nothing_of_tenant_a_on_any_route(serve_app: ServeApp) -> None:
    org_a, org_b, asset = unique("org-sweep-a"), unique("org-sweep-b"), unique("asset-a")
    created = httpx.post(f"{serve_app.url}/vectors/embed:batch", headers=auth(org_a), timeout=60, json={
        "segments": [{"asset_id": asset, "segment_id": f"s{i}", "text": f"{SECRET_TEXT} part {i}"} for i in range(3)]})
    assert created.status_code == 202, created.text
    job_ids = [j["job_id"] for j in created.json()["jobs"]]
    point_ids = [j["point_id"] for j in created.json()["jobs"]]
    assert_exactly_once(serve_app.url, org_a, job_ids, 3, timeout_s=60)
    a_before = httpx.get(f"{serve_app.url}/vectors/stats", headers=auth(org_a), timeout=30).json()

    schema = httpx.get(f"{serve_app.url}/openapi.json", timeout=30).json()
    secrets_of_a = [SECRET_TEXT[:30], "BLUEHERON", org_a, *point_ids]
    covered: list[str] = []
    for path, operations in schema["paths"].items():
        for method in operations:
            for job_id in job_ids[:1]:
                url = serve_app.url + path.replace("{job_id}", job_id).replace("{asset_id}", asset)
                body = _body_for(path, asset)
                response = httpx.request(method.upper(), url, headers=auth(org_b), timeout=60,
                                         **({"json": body} if body is not None else {}))
                route = f"{method.upper()} {path}"
                covered.append(route)
                assert response.status_code < 500, (route, response.status_code, response.text[:300])
                for secret in secrets_of_a:
                    assert secret not in response.text, (route, secret, response.text[:300])
                if "{job_id}" in path:
                    assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found", route
                elif path == "/vectors/search":
                    assert response.status_code == 200 and response.json()["results"] == [], route
                elif path == "/vectors/assets/{asset_id}":
                    assert response.status_code == 200 and response.json()["deleted"] == 0, route
                elif path == "/jobs":  # B's own jobs (from the write routes above) at most, none of A's
                    assert response.status_code == 200, route
                    assert not {j["id"] for j in response.json()["jobs"]} & set(job_ids), route
                elif path == "/vectors/stats":  # B's own counts (at most the segment B wrote), never A's 3
                    assert response.json()["org_id"] == org_b and response.json()["models"].get(MODEL, 0) <= 1
    assert {"GET /jobs/{job_id}", "POST /jobs/{job_id}/retry", "POST /jobs/{job_id}/cancel", "POST /vectors/search",
            "DELETE /vectors/assets/{asset_id}", "GET /jobs", "GET /vectors/stats"} <= set(covered), covered
    # B's writes under A's asset id land in B's namespace (different point ids), never in A's.
    search_a = httpx.post(f"{serve_app.url}/vectors/search", headers=auth(org_a), timeout=60,
                          json={"query": "merger plans", "asset_id": asset, "limit": 100}).json()["results"]
    assert sorted(h["point_id"] for h in search_a) == sorted(point_ids)
    assert all("intruder" not in h["text_preview"] for h in search_a)
    # A's jobs and points are unchanged by everything B did.
    assert httpx.get(f"{serve_app.url}/vectors/stats", headers=auth(org_a), timeout=30).json() == a_before
    assert point_count(serve_app.url, org_a) == 3
    for jid in job_ids:
        job = httpx.get(f"{serve_app.url}/jobs/{jid}", headers=auth(org_a), timeout=30).json()
        assert job["status"] == "succeeded" and job["requested_by"] == "tester"


# ------------------------------------------------------------------ JWT matrix

def _claims(**overrides: Any) -> dict[str, Any]:
    settings = Settings()
    now = int(time.time())
    claims = {"iss": settings.jwt_issuer, "aud": settings.jwt_audience, "sub": "mallory", "org_id": "org-jwt",
              "iat": now, "nbf": now, "exp": now + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _hs(claims: dict[str, Any], secret: str | bytes | None = None, **headers: Any) -> str:
    return jwt.encode(claims, secret or Settings().jwt_secret, algorithm="HS256", headers=headers or None)


def _unsigned(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key=None, algorithm="none")  # type: ignore[arg-type]


_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA_PUBLIC_PEM = _RSA.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)


def _hs_with_public_key(claims: dict[str, Any]) -> str:
    """Classic confusion: HS256 "signed" with the RSA public key as the HMAC secret (PyJWT refuses
    PEM secrets, so sign by hand)."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(claims).encode())
    sig = hmac.new(_RSA_PUBLIC_PEM, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(sig)


JWT_CASES: list[tuple[str, Any, str]] = [
    ("no header", None, "missing_token"),
    ("basic scheme", "Basic dXNlcjpwYXNz", "missing_token"),
    ("malformed", "Bearer not.a.jwt!", "malformed_token"),
    ("garbage segments", "Bearer aaa.bbb.ccc", "malformed_token"),
    ("bad signature", lambda: "Bearer " + _hs(_claims(), "another-secret-that-is-long-enough-32b"),
     "invalid_signature"),
    ("alg none", lambda: "Bearer " + _unsigned(_claims()), "algorithm_not_allowed"),
    ("RS256 token (alg swap)", lambda: "Bearer " + jwt.encode(_claims(), _RSA, algorithm="RS256"),
     "algorithm_not_allowed"),
    ("HS256 with RSA public key", lambda: "Bearer " + _hs_with_public_key(_claims()), "invalid_signature"),
    ("expired", lambda: "Bearer " + _hs(_claims(iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200,
                                                exp=int(time.time()) - 3600)), "expired"),
    ("not yet valid", lambda: "Bearer " + _hs(_claims(nbf=int(time.time()) + 3600)), "not_yet_valid"),
    ("wrong aud", lambda: "Bearer " + _hs(_claims(aud="someone-else")), "invalid_audience"),
    ("wrong iss", lambda: "Bearer " + _hs(_claims(iss="evil-issuer")), "invalid_issuer"),
    ("missing org_id", lambda: "Bearer " + _hs(_claims(org_id=None)), "missing_claim"),
    ("org_id injection", lambda: "Bearer " + _hs(_claims(org_id="a' OR 1=1 --")), "invalid_claim"),
    ("missing exp", lambda: "Bearer " + _hs(_claims(exp=None)), "missing_claim"),
]


@pytest.mark.parametrize(("case", "header", "code"), JWT_CASES, ids=[c[0] for c in JWT_CASES])
def test_jwt_matrix_401_with_code(serve_app: ServeApp, case: str, header: Any, code: str) -> None:
    value = header() if callable(header) else header
    headers = {} if value is None else {"Authorization": value}
    for method, path in (("GET", "/jobs"), ("POST", "/vectors/search")):
        response = httpx.request(method, f"{serve_app.url}{path}", headers=headers, timeout=30,
                                 **({"json": {"query": "x"}} if method == "POST" else {}))
        assert response.status_code == 401, (case, response.text)
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"]["code"] == code, (case, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        if value:
            assert value.split()[-1] not in response.text  # the token is never echoed


# ------------------------------------------------------------------ secrets, Ray dashboard, CORS

def _ray_logs_dir() -> Path:
    import ray

    return Path(ray._private.worker.global_worker.node.get_logs_dir_path())


def test_tokens_and_jwt_secret_never_logged(serve_app: ServeApp) -> None:
    good = token("org-logscan", sub="log-scanner")
    bad = _hs(_claims(org_id="org-logscan"), "wrong-secret-for-the-log-scan-test-0123")
    for value in (good, bad):
        for path in ("/jobs", "/vectors/stats", "/jobs/00000000-0000-0000-0000-000000000000"):
            httpx.get(f"{serve_app.url}{path}", headers={"Authorization": f"Bearer {value}"}, timeout=30)
        httpx.post(f"{serve_app.url}/vectors/embed", headers={"Authorization": f"Bearer {value}"},
                   json={"asset_id": "a", "segment_id": "s", "text": ""}, timeout=30)
    needles = [good.encode(), bad.encode(), good.split(".")[2].encode(), Settings().jwt_secret.encode()]
    logs = _ray_logs_dir()
    # Give the replicas' log handlers a moment to flush: poll until a fresh request's trace appears in
    # some serve log file (bounded), then scan everything.
    scanned = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if any(logs.glob("serve/*.log")):
            break
    for path in logs.rglob("*"):
        if not path.is_file() or path.stat().st_size > 200 * 1024 * 1024:
            continue
        data = path.read_bytes()
        scanned += 1
        for needle in needles:
            assert needle not in data, f"secret material found in {path}"
    assert scanned > 5 and any(logs.glob("serve/*")), f"no logs scanned under {logs}"


def test_ray_dashboard_requires_the_ray_token(ray_cluster: RayCluster) -> None:
    url = f"{ray_cluster.dashboard_url}/api/jobs/"
    assert httpx.get(url, timeout=30).status_code in (401, 403)
    assert httpx.get(url, headers={"Authorization": "Bearer wrong-token"}, timeout=30).status_code in (401, 403)
    ray_token = ray_cluster.token_path.read_text().strip()
    ok = httpx.get(url, headers={"Authorization": f"Bearer {ray_token}"}, timeout=30)
    assert ok.status_code == 200, ok.text[:200]
    serve_api = httpx.get(f"{ray_cluster.dashboard_url}/api/serve/applications/", timeout=30)
    assert serve_api.status_code in (401, 403)


def test_cors_is_off_by_default(serve_app: ServeApp) -> None:
    origin = "https://evil.example"
    preflight = httpx.options(f"{serve_app.url}/v1/embeddings", timeout=30, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code in (401, 404, 405)
    simple = httpx.post(f"{serve_app.url}/v1/embeddings", json={"input": "cors"}, timeout=60,
                        headers={**auth("org-cors"), "Origin": origin})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers
    assert "access-control-allow-credentials" not in simple.headers
