"""Hostile input against the real app: oversized and malformed bodies, encoding tricks, header and
filter injection. Every case answers a 4xx JSON error (or a correct, tenant-scoped empty result),
never a 500 or a hang, and the replica keeps serving.
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import quote, urlsplit

import httpx
import pytest

from tests.conftest import ServeApp
from tests.fault.helpers import assert_exactly_once, point_count, segments, submit, unique
from tests.serve.helpers import auth

pytestmark = [pytest.mark.serve]

LIMIT = 8 * 1024 * 1024


def _raw(app: ServeApp, head: str, chunks: list[bytes] = (), timeout_s: float = 30) -> tuple[int, bytes]:  # type: ignore[assignment]
    """Send a hand-made HTTP/1.1 request; return (status, body). Tolerates the server closing early."""
    parts = urlsplit(app.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as sock:
        sock.sendall(head.encode("latin-1"))
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed while we were still sending: expected for 413
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _clen(data):
                more = sock.recv(65536)
                if not more:
                    break
                data += more
        except OSError:
            pass
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ")[1]), data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""


def _clen(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _json_error(response: httpx.Response, status: int | tuple[int, ...]) -> dict:
    allowed = (status,) if isinstance(status, int) else status
    assert response.status_code in allowed, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    return response.json()["error"]


def _still_serves(app: ServeApp) -> None:
    """The replica answers a real request, and readiness comes back (the store actor can be busy
    for a few seconds building its HNSW index after earlier tests' writes: poll, with a deadline)."""
    response = httpx.post(f"{app.url}/v1/embeddings", json={"input": "still serving?"}, timeout=60)
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 60
    while (ready := httpx.get(f"{app.url}/readyz", timeout=30)).status_code != 200:
        assert time.monotonic() < deadline, ready.text
        time.sleep(0.5)
    ok = httpx.post(f"{app.url}/v1/embeddings", json={"input": "still alive"}, headers=auth("org-hostile"), timeout=60)
    assert ok.status_code == 200, ok.text


def test_declared_huge_body_is_413_before_reading(serve_app: ServeApp) -> None:
    host = urlsplit(serve_app.url).netloc
    status, body = _raw(serve_app, f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                                   f"Content-Length: {50 * LIMIT}\r\n\r\n", [b'{"input": "'])
    assert status == 413 and b'"code":"body_too_large"' in body
    _still_serves(serve_app)


def test_chunked_huge_body_is_413(serve_app: ServeApp) -> None:
    host = urlsplit(serve_app.url).netloc
    chunk = b"a" * (1024 * 1024)
    opening = b'{"input": "'
    frames = [b"%x\r\n%s\r\n" % (len(opening), opening)]
    frames += [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 10 + [b"0\r\n\r\n"]
    status, body = _raw(serve_app, f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n", frames)
    assert status == 413 and b'"code":"body_too_large"' in body
    _still_serves(serve_app)


def test_size_limit_applies_before_parsing_and_before_auth(serve_app: ServeApp) -> None:
    """9 MB of invalid JSON with no token: 413 (not 400 invalid_json, not 401) -> nothing parsed it."""
    response = httpx.post(f"{serve_app.url}/vectors/embed", content=b"{" * (LIMIT + 1024),
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413, response.text[:200]


@pytest.mark.parametrize("path", ["/v1/embeddings", "/vectors/search", "/vectors/embed"])
def test_deeply_nested_json_is_4xx(serve_app: ServeApp, path: str) -> None:
    for depth in (10_000, 100_000):
        body = "[" * depth + "]" * depth
        response = httpx.post(f"{serve_app.url}{path}", content=body, headers={**auth("org-hostile"),
                              "Content-Type": "application/json"}, timeout=60)
        _json_error(response, (400, 422))
        nested_obj = '{"input": ' + "[" * depth + '"x"' + "]" * depth + "}"
        response = httpx.post(f"{serve_app.url}{path}", content=nested_obj, headers={**auth("org-hostile"),
                              "Content-Type": "application/json"}, timeout=60)
        _json_error(response, (400, 422))
    _still_serves(serve_app)


ENCODING_CASES = [
    ("raw NUL in JSON", b'{"input": "a\x00b"}', 400),
    ("invalid UTF-8", b'{"input": "\xff\xfe\xfd"}', 400),
    ("lone surrogate escape", b'{"input": "\\ud800"}', (200, 400, 422)),
    ("raw control chars", b'{"input": "a\x01\x02\x1b[31m"}', 400),
    ("UTF-16 BOM body", '{"input": "x"}'.encode("utf-16"), (200, 400, 422)),
    ("truncated JSON", b'{"input": "x"', 400),
    ("JSON null", b"null", 422),
    ("JSON number", b"1e999999", 422),
]


@pytest.mark.parametrize(("case", "body", "status"), ENCODING_CASES, ids=[c[0] for c in ENCODING_CASES])
def test_encoding_tricks_on_embeddings(serve_app: ServeApp, case: str, body: bytes, status: int) -> None:
    response = httpx.post(f"{serve_app.url}/v1/embeddings", content=body,
                          headers={**auth("org-hostile"), "Content-Type": "application/json"}, timeout=60)
    if response.status_code != 200:
        _json_error(response, status)
    else:
        assert response.status_code in ((status,) if isinstance(status, int) else status)


def test_nul_and_control_characters_in_fields(serve_app: ServeApp) -> None:
    headers = auth("org-hostile")
    for field in ("asset_id", "segment_id"):
        for value in ("a\u0000b", "a\nb", "a\u001bb", "a\u007fb"):
            body = {"asset_id": "a", "segment_id": "s", "text": "hello", field: value}
            err = _json_error(httpx.post(f"{serve_app.url}/vectors/embed", json=body, headers=headers, timeout=30), 422)
            assert err["field"] == field
    # NUL and the other control characters but tab/LF/CR in a text to embed: 422 naming the input
    # (PostgreSQL text cannot hold NUL).
    for value in ("before\u0000after", "a\u001bb", "a\u007fb"):
        for path, body, field in (
                ("/vectors/embed", {"asset_id": "a", "segment_id": "nul", "text": value}, "text"),
                ("/vectors/search", {"query": value}, "query"),
                ("/v1/embeddings", {"input": ["ok", value]}, "input.1")):
            err = _json_error(httpx.post(f"{serve_app.url}{path}", json=body, headers=headers, timeout=30), 422)
            assert (err["code"], err["field"]) == ("control_characters", field), (path, err)
    _still_serves(serve_app)


def test_10_mb_single_text_and_oversized_texts(serve_app: ServeApp) -> None:
    headers = auth("org-hostile")
    huge = httpx.post(f"{serve_app.url}/v1/embeddings", json={"input": "a" * (10 * 1024 * 1024)}, headers=headers,
                      timeout=60)
    assert huge.status_code == 413, huge.text[:200]
    long = httpx.post(f"{serve_app.url}/v1/embeddings", json={"input": "word " * 50_000}, headers=headers, timeout=60)
    assert _json_error(long, 422)["code"] == "text_too_long"
    long = httpx.post(f"{serve_app.url}/vectors/embed", json={"asset_id": "a", "segment_id": "s",
                      "text": "w" * 200_001}, headers=headers, timeout=60)
    assert _json_error(long, 422)["code"] == "text_too_long"
    _still_serves(serve_app)


def test_100k_item_list(serve_app: ServeApp) -> None:
    headers = auth("org-hostile")
    response = httpx.post(f"{serve_app.url}/v1/embeddings", json={"input": ["a"] * 100_000}, headers=headers,
                          timeout=60)
    assert _json_error(response, 422)["code"] == "too_many_items"
    segs = [{"asset_id": "a", "segment_id": f"s{i}", "text": "t"} for i in range(100_000)]
    response = httpx.post(f"{serve_app.url}/vectors/embed:batch", json={"segments": segs}, headers=headers, timeout=60)
    _json_error(response, (413, 422))
    response = httpx.post(f"{serve_app.url}/vectors/search", json={"vector": [0.0] * 100_000}, headers=headers,
                          timeout=60)
    assert _json_error(response, 422)["field"] == "vector"
    _still_serves(serve_app)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          "application/xml", ""])
def test_non_json_content_types_are_4xx(serve_app: ServeApp, content_type: str) -> None:
    bodies = {"application/x-www-form-urlencoded": b"input=hello", "application/xml": b"<input>hello</input>"}
    body = bodies.get(content_type, b'{"input": "hello"}')
    headers = {**auth("org-hostile"), "Content-Type": content_type}
    for path in ("/v1/embeddings", "/vectors/embed", "/vectors/search"):
        response = httpx.post(f"{serve_app.url}{path}", content=body, headers=headers, timeout=30)
        if content_type == "" and path == "/v1/embeddings":  # JSON without a content type: lenient, still correct
            assert response.status_code in (200, 415, 422), response.text
            continue
        _json_error(response, (400, 415, 422))


# Legal header values the API must refuse itself (422 JSON) ...
IDEMPOTENCY_KEYS = ["has space", "k" * 256, "ünïcödé", "", "tab\there"]
# ... and values the HTTP server already refuses to parse (400 before any application code runs).
ILLEGAL_HEADER_KEYS = ["a;b=c\x7f", "nul\x00byte"]


def test_header_injection_in_idempotency_key(serve_app: ServeApp) -> None:
    headers = auth("org-hostile")
    body = {"asset_id": "a", "segment_id": "idem", "text": "idempotency probe"}
    for key in IDEMPOTENCY_KEYS:
        response = httpx.post(f"{serve_app.url}/vectors/embed", json=body,
                              headers={**headers, "Idempotency-Key": key.encode("utf-8")}, timeout=30)
        if response.status_code == 400 and not response.headers.get("content-type", "").startswith("application/json"):
            continue  # refused by the HTTP parser (e.g. a tab the server will not accept)
        err = _json_error(response, 422)
        assert err["code"] == "invalid_idempotency_key" and err["field"] == "Idempotency-Key"
    for key in ILLEGAL_HEADER_KEYS:
        host = urlsplit(serve_app.url).netloc
        raw_body = json.dumps(body).encode()
        status, _ = _raw(serve_app, f"POST /vectors/embed HTTP/1.1\r\nHost: {host}\r\n{_auth_line()}"
                                    f"Idempotency-Key: {key}\r\nContent-Type: application/json\r\n"
                                    f"Content-Length: {len(raw_body)}\r\n\r\n", [raw_body])
        assert status in (400, 422), (key, status)
    # CR/LF cannot smuggle a second header or a response split: the server refuses the framing.
    host = urlsplit(serve_app.url).netloc
    raw_body = json.dumps(body).encode()
    status, _ = _raw(serve_app, f"POST /vectors/embed HTTP/1.1\r\nHost: {host}\r\n{_auth_line()}"
                                f"Idempotency-Key: abc\r\n X-Injected: 1\r\nContent-Type: application/json\r\n"
                                f"Content-Length: {len(raw_body)}\r\n\r\n", [raw_body])
    assert 400 <= status < 500, status
    _still_serves(serve_app)


def _auth_line() -> str:
    return f"Authorization: {auth('org-hostile')['Authorization']}\r\n"


INJECTIONS = ["' OR 1=1 --", '{"$ne": null}', "*", "%", "a' UNION SELECT * FROM jobs --", "..%2f..%2fetc", "\\"]


def test_sql_and_filter_injection_in_asset_id_is_tenant_scoped(serve_app: ServeApp) -> None:
    victim, attacker, asset = unique("org-victim"), unique("org-attacker"), unique("asset")
    ids = submit(serve_app, victim, segments(asset, 3))
    assert_exactly_once(serve_app.url, victim, ids, 3, timeout_s=60)
    attacker_asset = unique("asset")
    assert_exactly_once(serve_app.url, attacker, submit(serve_app, attacker, segments(attacker_asset, 2)), 2,
                        timeout_s=60)
    for org in (attacker, victim):
        for injected in INJECTIONS:
            found = httpx.post(f"{serve_app.url}/vectors/search", json={"query": "energy", "asset_id": injected},
                               headers=auth(org), timeout=30)
            assert found.status_code == 200 and found.json()["results"] == [], (injected, found.text)
            deleted = httpx.delete(f"{serve_app.url}/vectors/assets/{quote(injected, safe='')}", headers=auth(org),
                                   timeout=30)
            assert deleted.status_code in (200, 404, 422), (injected, deleted.text)
            if deleted.status_code == 200:
                assert deleted.json()["deleted"] == 0, (injected, deleted.text)
            cursor = httpx.get(f"{serve_app.url}/jobs", params={"cursor": injected}, headers=auth(org), timeout=30)
            assert _json_error(cursor, 422)["code"] == "invalid_cursor"
            job = httpx.get(f"{serve_app.url}/jobs/{quote(injected, safe='')}", headers=auth(org), timeout=30)
            assert job.status_code in (404, 422), (injected, job.text)
    # The attacker reaching for the victim's real asset id deletes nothing of the victim's.
    stolen = httpx.delete(f"{serve_app.url}/vectors/assets/{asset}", headers=auth(attacker), timeout=30)
    assert stolen.status_code == 200 and stolen.json()["deleted"] == 0
    assert point_count(serve_app.url, victim) == 3 and point_count(serve_app.url, attacker) == 2
    _still_serves(serve_app)
