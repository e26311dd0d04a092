"""The error table of docs/api.md says what the code answers (in-process app, no Ray).

Each case makes the request, checks status, type, code and field, and checks that the docs' row for
that status names the same type and code: changing either the code or the docs alone fails here.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.unit.test_api_inprocess import ALL_ROUTERS, bearer, make_client

API_DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
SEGMENT = {"asset_id": "a", "segment_id": "s", "text": "hello"}


def error_table() -> dict[str, tuple[str, str]]:
    """status -> (type, when) from the table under '## Errors' in docs/api.md."""
    rows: dict[str, tuple[str, str]] = {}
    in_table = False
    for line in API_DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith("| status | type | when |"):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                break
            status, type_, when = (cell.strip() for cell in line.strip().strip("|").split("|"))
            if not status.startswith("---"):
                rows[status] = (type_.strip("`"), when)
    return rows


def assert_answers(response: httpx.Response, status: int, code: str, field: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    documented_type, when = error_table()[str(status)]
    assert error["type"] == documented_type, (status, error["type"], documented_type)
    assert f"`{code}`" in when, f"docs/api.md's {status} row does not name {code}: {when}"


async def test_unknown_model_is_404_model_not_found_as_documented(tmp_path: Path) -> None:
    async with make_client(tmp_path, routers=ALL_ROUTERS) as client:
        response = await client.post("/v1/embeddings", json={"input": "x", "model": "gpt-17"})
        assert_answers(response, 404, "model_not_found", "model")
        assert "minilm-l6-v2" in response.json()["error"]["message"]
        response = await client.post("/vectors/embed:batch", headers=bearer(),
                                     json={"segments": [SEGMENT, {**SEGMENT, "segment_id": "t", "model": "gpt-17"}]})
        assert_answers(response, 404, "model_not_found", "segments.1.model")
        response = await client.post("/vectors/search", headers=bearer(), json={"query": "x", "model": "gpt-17"})
        assert_answers(response, 404, "model_not_found", "model")
    assert "unknown model" not in error_table()["400"][1]


async def test_idempotency_key_reused_with_another_body_is_422_as_documented(tmp_path: Path) -> None:
    headers = {**bearer(), "Idempotency-Key": "key-1"}
    async with make_client(tmp_path) as client:
        first = await client.post("/vectors/embed", headers=headers, json=SEGMENT)
        assert first.status_code == 202 and first.json()["created"] is True, first.text
        replay = await client.post("/vectors/embed", headers=headers, json=SEGMENT)
        assert replay.status_code == 202 and replay.json()["created"] is False, replay.text
        assert replay.json()["job_id"] == first.json()["job_id"]
        other = await client.post("/vectors/embed", headers=headers, json={**SEGMENT, "text": "another text"})
        assert_answers(other, 422, "idempotency_key_reused", "Idempotency-Key")
        bad = await client.post("/vectors/embed", headers={**bearer(), "Idempotency-Key": "has space"}, json=SEGMENT)
        assert_answers(bad, 422, "invalid_idempotency_key", "Idempotency-Key")
    assert "dempotency" not in error_table()["409"][1]
    docs = API_DOCS.read_text(encoding="utf-8")
    assert "422 idempotency_key_reused" in " ".join(docs.replace("`", "").split())


async def test_other_documented_codes(tmp_path: Path) -> None:
    async with make_client(tmp_path, routers=ALL_ROUTERS, max_body_bytes=1024) as client:
        assert_answers(await client.post("/v1/embeddings", json={"input": "x" * 2000}), 413, "body_too_large", "body")
        assert_answers(await client.post("/v1/embeddings", content=b'{"input": ', headers={
            "Content-Type": "application/json"}), 400, "invalid_json", "body")
        assert_answers(await client.post("/v1/embeddings", json={"input": "a\u0000b"}), 422, "control_characters",
                       "input")
        assert_answers(await client.post("/v1/embeddings", json={"input": "x", "dimensions": 7}), 422,
                       "dimensions_mismatch", "dimensions")
