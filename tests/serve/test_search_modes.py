"""``mode`` of POST /vectors/search on the real app: an exact code that dense ranks low is first in sparse and
hybrid, every mode stays inside the tenant, and the mode rules answer as documented."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from deployments.point_ids import point_id_for
from deployments.vector_store import alias_name
from deployments.vector_store.payloads import segment_payload, segment_point
from tests.conftest import ServeApp
from tests.data.corpus import EXACT_CODE, EXACT_CODE_LOOK_ALIKES, EXACT_CODE_TARGET, PARAPHRASES, distractor_sentences
from tests.serve.helpers import api_vectors, auth

pytestmark = pytest.mark.serve

MODEL = "minilm-l6-v2"
ORG_A, ORG_B = "modes-org-a", "modes-org-b"
CODE, TARGET, LOOK_ALIKES = EXACT_CODE, EXACT_CODE_TARGET, EXACT_CODE_LOOK_ALIKES


@pytest.fixture(scope="module")
def corpus(serve_app: ServeApp) -> dict[str, Any]:
    """Tenant A: the ticket, its look-alikes, paraphrase sources, distractors; tenant B: the same ticket and
    other distractors. Written through the store the service uses, as the relay writes (both vectors)."""
    from deployments.vector_store import open_store
    from serve_app.settings import Settings

    store = open_store(Settings().store_config())
    distractors = distractor_sentences(300)
    tenants = {ORG_A: [TARGET, *LOOK_ALIKES, *(s for s, _ in PARAPHRASES), *distractors[:150]],
               ORG_B: [TARGET, *distractors[150:]]}
    ids: dict[str, list[str]] = {}
    for org, texts in tenants.items():
        vectors = api_vectors(serve_app.url, texts)
        points = [segment_point(point_id_for(org, "asset-m", f"seg-{i}", MODEL, "v1"), vector,
                                segment_payload(org, "asset-m", f"seg-{i}", MODEL, "v1", text, "2026-01-01T00:00:00Z"))
                  for i, (text, vector) in enumerate(zip(texts, vectors, strict=True))]
        assert store.upsert(alias_name(MODEL), org, points) == len(points)
        ids[org] = [p.id for p in points]
    return {"ids": ids}


def search(app: ServeApp, org: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{app.url}/vectors/search", json=body, headers=auth(org), timeout=60)


def rank(results: list[dict[str, Any]], point_id: str) -> int | None:
    return next((i + 1 for i, r in enumerate(results) if r["point_id"] == point_id), None)


def test_an_exact_code_is_first_in_sparse_and_hybrid(serve_app: ServeApp, corpus: dict[str, Any]) -> None:
    target = corpus["ids"][ORG_A][0]
    dense = search(serve_app, ORG_A, query=CODE, mode="dense", limit=100)
    assert dense.status_code == 200, dense.text
    assert dense.json()["mode"] == "dense"
    assert (rank(dense.json()["results"], target) or 101) >= 5, "dense tells the code from its look-alikes"
    for mode in ("sparse", "hybrid"):
        response = search(serve_app, ORG_A, query=CODE, mode=mode, limit=10)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["mode"] == mode and body["model"] == MODEL
        assert rank(body["results"], target) == 1, (mode, body["results"][:3])
        assert body["results"][0]["text_preview"] == TARGET


def test_a_paraphrase_still_finds_its_source_in_hybrid(serve_app: ServeApp, corpus: dict[str, Any]) -> None:
    found = 0
    for source, paraphrase in PARAPHRASES:
        results = search(serve_app, ORG_A, query=paraphrase, mode="hybrid", limit=5).json()["results"]
        found += any(r["text_preview"] == source for r in results)
    assert found == len(PARAPHRASES), "every paraphrase's source is in hybrid's top 5"


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_every_mode_stays_inside_the_tenant(serve_app: ServeApp, corpus: dict[str, Any], mode: str) -> None:
    for org, other in ((ORG_A, ORG_B), (ORG_B, ORG_A)):
        # A paraphrase shares no word with its source: BM25 alone finds nothing for it.
        for query in (CODE, "pump leaks oil", *([PARAPHRASES[0][1]] if mode != "sparse" else [])):
            response = search(serve_app, org, query=query, mode=mode, limit=100)
            assert response.status_code == 200, response.text
            returned = {r["point_id"] for r in response.json()["results"]}
            assert returned, (org, query)
            assert returned <= set(corpus["ids"][org]) and not returned & set(corpus["ids"][other])
        scoped = search(serve_app, org, query=CODE, mode=mode, asset_id="asset-none").json()["results"]
        assert scoped == []


def test_mode_rules_through_http(serve_app: ServeApp, corpus: dict[str, Any]) -> None:
    vector = api_vectors(serve_app.url, [CODE])[0].tolist()
    plain = search(serve_app, ORG_A, vector=vector, limit=3)
    assert plain.status_code == 200 and plain.json()["mode"] == "dense"
    bad = search(serve_app, ORG_A, vector=vector, mode="hybrid")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "mode_needs_query"
    bad = search(serve_app, ORG_A, query=CODE, mode="sparse", score_threshold=0.2)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "score_threshold"
    default = search(serve_app, ORG_A, query=CODE)
    assert default.status_code == 200 and default.json()["mode"] in ("dense", "sparse", "hybrid")
