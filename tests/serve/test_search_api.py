"""Semantic search on the real app: paraphrases find their source, tenants never see each other."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from deployments.point_ids import point_id_for
from deployments.vector_store import PointRecord, alias_name
from tests.conftest import ServeApp
from tests.data.corpus import PARAPHRASES, distractor_sentences
from tests.serve.helpers import api_vectors

pytestmark = pytest.mark.serve

MODEL = "minilm-l6-v2"


def token(org: str) -> str:
    from serve_app.auth import mint_token
    from serve_app.settings import Settings

    return mint_token(Settings(), org_id=org, sub="searcher")


def auth(org: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(org)}"}


@pytest.fixture(scope="module")
def corpus(serve_app: ServeApp) -> dict[str, Any]:
    """Tenant A: paraphrase sources + 200 distractors (asset-x / asset-y); tenant B: other 200 distractors."""
    from deployments.vector_store import open_store
    from serve_app.settings import Settings

    store = open_store(Settings().store_config())
    distractors = distractor_sentences(400)
    tenants = {
        "search-org-a": [s for s, _ in PARAPHRASES] + distractors[:200],
        "search-org-b": distractors[200:],
    }
    ids: dict[str, set[str]] = {}
    for org, texts in tenants.items():
        vectors = api_vectors(serve_app.url, texts)
        points = []
        for i, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
            asset = "asset-x" if i % 2 == 0 else "asset-y"
            pid = point_id_for(org, asset, f"seg-{i}", MODEL, "v1")
            points.append(PointRecord(pid, vector, {"org_id": org, "asset_id": asset, "segment_id": f"seg-{i}",
                                                    "model": MODEL, "model_version": "v1", "text_preview": text}))
        assert store.upsert(alias_name(MODEL), org, points) == len(points)
        ids[org] = {p.id for p in points}
    return {"tenants": tenants, "ids": ids}


def search(app: ServeApp, org: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{app.url}/vectors/search", json=body, headers=auth(org), timeout=60)


def test_paraphrase_finds_its_source_first(serve_app: ServeApp, corpus: dict[str, Any]) -> None:
    for source, paraphrase in PARAPHRASES:
        response = search(serve_app, "search-org-a", query=paraphrase, limit=5)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == MODEL and body["limit"] == 5 and body["query"] == paraphrase
        assert body["results"][0]["text_preview"] == source, (paraphrase, body["results"][:2])
        scores = [r["score"] for r in body["results"]]
        assert scores == sorted(scores, reverse=True)


def test_fox_case_scores_high(serve_app: ServeApp, corpus: dict[str, Any]) -> None:
    top = search(serve_app, "search-org-a", query="fast animal leaping", limit=1, mode="dense").json()["results"][0]
    assert top["text_preview"].startswith("The quick brown fox")
    assert top["score"] > 0.3


@pytest.mark.parametrize("asset_id", [None, "asset-x", "asset-y"])
def test_tenant_b_never_sees_tenant_a(serve_app: ServeApp, corpus: dict[str, Any], asset_id: str | None) -> None:
    for _, paraphrase in PARAPHRASES:
        body: dict[str, Any] = {"query": paraphrase, "limit": 100}
        if asset_id:
            body["asset_id"] = asset_id
        results = search(serve_app, "search-org-b", **body).json()["results"]
        returned = {r["point_id"] for r in results}
        assert returned, "tenant B has points and should get results"
        assert returned <= corpus["ids"]["search-org-b"]
        assert not returned & corpus["ids"]["search-org-a"]
        if asset_id:
            assert {r["asset_id"] for r in results} == {asset_id}


def test_unknown_tenant_gets_nothing(serve_app: ServeApp, corpus: dict[str, Any]) -> None:
    assert search(serve_app, "search-org-nobody", query="fast animal leaping").json()["results"] == []


def test_precomputed_vector_and_threshold(serve_app: ServeApp, corpus: dict[str, Any]) -> None:
    vector = api_vectors(serve_app.url, ["fast animal leaping"])[0].tolist()
    by_vector = search(serve_app, "search-org-a", vector=vector, limit=3).json()
    by_query = search(serve_app, "search-org-a", query="fast animal leaping", limit=3, mode="dense").json()
    assert [r["point_id"] for r in by_vector["results"]] == [r["point_id"] for r in by_query["results"]]
    high = search(serve_app, "search-org-a", query="fast animal leaping", limit=100, score_threshold=0.3).json()
    assert high["results"] and all(r["score"] >= 0.3 for r in high["results"])


def test_stats_and_delete_asset_are_tenant_scoped(serve_app: ServeApp, corpus: dict[str, Any]) -> None:
    stats_a = httpx.get(f"{serve_app.url}/vectors/stats", headers=auth("search-org-a"), timeout=30).json()
    stats_b = httpx.get(f"{serve_app.url}/vectors/stats", headers=auth("search-org-b"), timeout=30).json()
    assert stats_a["models"][MODEL] == len(corpus["tenants"]["search-org-a"])
    assert stats_b["models"][MODEL] == len(corpus["tenants"]["search-org-b"])

    response = httpx.delete(f"{serve_app.url}/vectors/assets/asset-y", headers=auth("search-org-b"), timeout=30)
    assert response.status_code == 200, response.text
    deleted = response.json()["deleted"]
    assert deleted == len(corpus["tenants"]["search-org-b"]) // 2
    after_a = httpx.get(f"{serve_app.url}/vectors/stats", headers=auth("search-org-a"), timeout=30).json()
    after_b = httpx.get(f"{serve_app.url}/vectors/stats", headers=auth("search-org-b"), timeout=30).json()
    assert after_a["models"][MODEL] == stats_a["models"][MODEL], "tenant B's delete touched tenant A"
    assert after_b["models"][MODEL] == stats_b["models"][MODEL] - deleted


BAD_SEARCHES: list[tuple[str, dict[str, Any], int, str]] = [
    ("empty query", {"query": ""}, 422, "query"),
    ("blank query", {"query": "   "}, 422, "query"),
    ("neither query nor vector", {"limit": 3}, 422, "query"),
    ("both query and vector", {"query": "x", "vector": [0.0] * 384}, 422, "vector"),
    ("limit 0", {"query": "x", "limit": 0}, 422, "limit"),
    ("limit 101", {"query": "x", "limit": 101}, 422, "limit"),
    ("vector of the wrong dimension", {"vector": [0.1] * 12}, 422, "vector"),
    ("unknown model", {"query": "x", "model": "nope"}, 404, "model"),
    ("negative score threshold", {"query": "x", "score_threshold": -0.5}, 422, "score_threshold"),
    ("control chars in asset_id", {"query": "x", "asset_id": "a\x00b"}, 422, "asset_id"),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), BAD_SEARCHES, ids=[c[0] for c in BAD_SEARCHES])
def test_bad_search_is_a_4xx_naming_the_field(serve_app: ServeApp, case: str, body: dict[str, Any], status: int,
                                              field: str) -> None:
    response = search(serve_app, "search-org-a", **body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field


def test_search_needs_a_token(serve_app: ServeApp) -> None:
    response = httpx.post(f"{serve_app.url}/vectors/search", json={"query": "x"}, timeout=30)
    assert response.status_code == 401
    assert response.json()["error"]["field"] == "Authorization"
