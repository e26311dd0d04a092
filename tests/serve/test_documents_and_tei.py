"""Documents (POST /vectors/documents) and the TEI-compatible routes on the real Ray Serve app."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import ServeApp
from tests.serve.helpers import auth, wait_job

pytestmark = pytest.mark.serve

MODEL = "minilm-l6-v2"
DOCUMENT = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")[:5000]


def post(app: ServeApp, path: str, org: str, body: Any) -> httpx.Response:
    return httpx.post(f"{app.url}{path}", json=body, headers=auth(org), timeout=120)


def submit(app: ServeApp, org: str, body: dict[str, Any]) -> dict[str, Any]:
    response = post(app, "/vectors/documents", org, body)
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    for job_id in [c["job_id"] for c in accepted["chunks"]] + [j for j in [accepted["cleanup_job_id"]] if j]:
        assert wait_job(app.url, org, job_id)["status"] == "succeeded"
    return accepted


def search_all(app: ServeApp, org: str, asset: str, query: str) -> list[dict[str, Any]]:
    response = post(app, "/vectors/search", org, {"query": query, "asset_id": asset, "limit": 100})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def test_document_round_trip_replay_and_change(serve_app: ServeApp) -> None:
    org, asset = f"org-doc-{uuid.uuid4().hex[:8]}", "manual"
    first = submit(serve_app, org, {"asset_id": asset, "text": DOCUMENT, "chunk_tokens": 128})
    assert first["created"] and len(first["chunks"]) > 3
    results = search_all(serve_app, org, asset, "how do I run the tests?")
    assert len(results) == len(first["chunks"])
    for result in results:
        chunk = first["chunks"][result["chunk_index"]]
        assert (result["char_start"], result["char_end"]) == (chunk["char_start"], chunk["char_end"])
        assert DOCUMENT[result["char_start"]:result["char_end"]].startswith(result["text_preview"])

    again = post(serve_app, "/vectors/documents", org, {"asset_id": asset, "text": DOCUMENT, "chunk_tokens": 128})
    assert again.status_code == 202 and not again.json()["created"]
    assert [c["job_id"] for c in again.json()["chunks"]] == [c["job_id"] for c in first["chunks"]]
    counts = httpx.get(f"{serve_app.url}/jobs/counts", headers=auth(org), timeout=30).json()
    assert counts["total"] == len(first["chunks"]), "the same document again created no job"

    changed_text = DOCUMENT[:2000] + "\n\nA new closing paragraph about chunk offsets."
    changed = submit(serve_app, org, {"asset_id": asset, "text": changed_text, "chunk_tokens": 128})
    assert changed["replaced_version"] == first["doc_version"]
    results = search_all(serve_app, org, asset, "closing paragraph")
    assert len(results) == len(changed["chunks"]) < len(first["chunks"])
    assert {r["segment_id"] for r in results} == {c["segment_id"] for c in changed["chunks"]}
    for result in results:
        assert changed_text[result["char_start"]:result["char_end"]].startswith(result["text_preview"])
    stats = httpx.get(f"{serve_app.url}/vectors/stats", headers=auth(org), timeout=30).json()
    assert stats["models"][MODEL] == len(changed["chunks"]), "no stale chunk left in the store"

    deleted = httpx.delete(f"{serve_app.url}/vectors/assets/{asset}", headers=auth(org), timeout=30).json()
    assert deleted["deleted"] == len(changed["chunks"])
    assert search_all(serve_app, org, asset, "closing paragraph") == []


def test_tei_embed_equals_v1_embeddings_and_normalize_false_is_raw(serve_app: ServeApp) -> None:
    texts = ["The quick brown fox jumps over the lazy dog.", "Embeddings, offsets and chunks."]
    tei = httpx.post(f"{serve_app.url}/embed", json={"inputs": texts}, timeout=120)
    assert tei.status_code == 200, tei.text
    openai = httpx.post(f"{serve_app.url}/v1/embeddings", json={"input": texts}, timeout=120).json()
    assert np.allclose(tei.json(), [d["embedding"] for d in openai["data"]], atol=1e-6)
    raw = np.asarray(httpx.post(f"{serve_app.url}/embed", json={"inputs": texts, "normalize": False},
                                timeout=120).json())
    norms = np.linalg.norm(raw, axis=1)
    assert (np.abs(norms - 1.0) > 0.1).all()
    assert np.allclose(raw / norms[:, None], tei.json(), atol=1e-5)


def test_tei_tokenize_info_and_too_long(serve_app: ServeApp) -> None:
    tokens = httpx.post(f"{serve_app.url}/tokenize", json={"inputs": "Hello world"}, timeout=60).json()
    assert [t["text"] for t in tokens[0]] == ["[CLS]", "Hello", "world", "[SEP]"]  # the input's own characters
    assert tokens[0][1] == {"id": tokens[0][1]["id"], "text": "Hello", "special": False, "start": 0, "stop": 5}
    info = httpx.get(f"{serve_app.url}/info", timeout=60).json()
    assert info["model_id"] == MODEL and info["max_input_length"] == 256
    assert info["model_type"] == {"embedding": {"pooling": "mean"}} and info["model_dtype"] == "float32"
    too_long = httpx.post(f"{serve_app.url}/embed", json={"inputs": "word " * 300}, timeout=120)
    assert too_long.status_code == 413
    assert too_long.json()["error_type"] == "Validation" and too_long.json()["field"] == "inputs.0"
