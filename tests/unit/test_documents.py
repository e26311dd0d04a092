"""POST /vectors/documents in-process (no Ray) and the chunker with the packaged model's real tokenizer."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from deployments.model_paths import ModelPaths
from deployments.registry import get_model
from serve_app.chunking import chunk_document
from serve_app.db import Document, Job, Outbox
from serve_app.db.database import Database
from serve_app.routes import jobs, vectors_documents, vectors_write
from serve_app.settings import Settings
from serve_app.tokenization import model_tokenizer
from tests.unit.test_api_inprocess import bearer, make_client

MODEL = "minilm-l6-v2"
ROUTERS = (vectors_write.router, vectors_documents.router, jobs.router)
DOCUMENT = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return model_tokenizer(get_model(MODEL), ModelPaths.default())


@pytest.mark.parametrize(("window", "overlap"), [(254, 32), (64, 16), (40, 0)])
def test_chunks_slice_the_document_exactly_and_fit_the_window(tokenizer: object, window: int, overlap: int) -> None:
    mt = model_tokenizer(get_model(MODEL), ModelPaths.default())
    text = DOCUMENT[:6000] + " naïve café — 東京 emoji 🙂 end."
    chunks = chunk_document(mt.tokenizer, text, window, overlap)
    assert [c.index for c in chunks] == list(range(len(chunks))) and len(chunks) > 2
    for chunk in chunks:
        assert text[chunk.char_start:chunk.char_end] == chunk.text
    # Each chunk, tokenized on its own as the model will, fits the window: no chunk is truncated.
    assert max(len(e.ids) for e in mt.encode([c.text for c in chunks])) <= window
    # Together they cover every token of the document, in order, overlapping by about `overlap` tokens.
    offsets = mt.encode([text])[0].offsets
    covered = {i for c in chunks for i, (s, e) in enumerate(offsets) if c.char_start <= s and e <= c.char_end}
    assert covered == set(range(len(offsets)))
    assert all(a.char_start < b.char_start and b.char_start <= a.char_end + 1 for a, b in pairwise(chunks))
    if overlap == 0:
        assert all(a.char_end <= b.char_start for a, b in pairwise(chunks))
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text.rstrip())


def test_a_short_document_is_one_chunk_and_blank_text_none(tokenizer: object) -> None:
    mt = model_tokenizer(get_model(MODEL), ModelPaths.default())
    (only,) = chunk_document(mt.tokenizer, "  Hello there.  ", mt.window, 32)
    assert (only.char_start, only.char_end, only.text) == (2, 14, "Hello there.")
    assert chunk_document(mt.tokenizer, " \n\t ", mt.window, 32) == []
    with pytest.raises(ValueError):
        chunk_document(mt.tokenizer, "x", 10, 10)


def _rows(tmp_path: Path) -> tuple[int, int, list[Document]]:
    db = Database(Settings(data_dir=tmp_path).resolved_database_url)
    try:
        with db.sessions() as session:
            return session.query(Job).count(), session.query(Outbox).count(), session.query(Document).all()
    finally:
        db.dispose()


async def test_document_makes_one_job_per_chunk_once_and_a_change_replaces_them(tmp_path: Path) -> None:
    text = DOCUMENT[:5000]
    async with make_client(tmp_path, routers=ROUTERS) as client:
        first = await client.post("/vectors/documents", headers=bearer(),
                                  json={"asset_id": "doc-1", "text": text, "chunk_tokens": 128})
        assert first.status_code == 202, first.text
        accepted = first.json()
        chunks = accepted["chunks"]
        assert accepted["created"] and accepted["replaced_version"] is None and len(chunks) > 3
        assert all(c["created"] and text[c["char_start"]:c["char_end"]] for c in chunks)
        assert [c["chunk_index"] for c in chunks] == list(range(len(chunks)))
        assert len({c["point_id"] for c in chunks}) == len(chunks)
        jobs_before = _rows(tmp_path)[0]
        assert jobs_before == len(chunks)

        again = await client.post("/vectors/documents", headers=bearer(),
                                  json={"asset_id": "doc-1", "text": text, "chunk_tokens": 128})
        assert again.status_code == 202
        assert not again.json()["created"] and not any(c["created"] for c in again.json()["chunks"])
        assert [c["job_id"] for c in again.json()["chunks"]] == [c["job_id"] for c in chunks]
        assert _rows(tmp_path)[0] == jobs_before, "the same document again creates no job"

        changed = await client.post("/vectors/documents", headers=bearer(),
                                    json={"asset_id": "doc-1", "text": text + " One more sentence.",
                                          "chunk_tokens": 128})
        body = changed.json()
        assert body["created"] and body["replaced_version"] == accepted["doc_version"] and body["cleanup_job_id"]
        assert not {c["point_id"] for c in body["chunks"]} & {c["point_id"] for c in chunks}
        cleanup = (await client.get(f"/jobs/{body['cleanup_job_id']}", headers=bearer())).json()
        assert cleanup["type"] == "document_cleanup" and cleanup["status"] == "queued"

        back = await client.post("/vectors/documents", headers=bearer(),
                                 json={"asset_id": "doc-1", "text": text, "chunk_tokens": 128})
        assert back.json()["created"], "returning to an earlier text is a new version with new chunks"
        assert back.json()["doc_version"].split(".")[0] == "3"
    jobs_after, outbox, documents = _rows(tmp_path)
    assert jobs_after == outbox == jobs_before + len(body["chunks"]) + 1 + len(chunks) + 1
    (document,) = documents
    assert (document.generation, document.chunk_count) == (3, len(chunks))


async def test_payload_of_a_chunk_job_names_its_place_in_the_document(tmp_path: Path) -> None:
    async with make_client(tmp_path, routers=ROUTERS) as client:
        response = await client.post("/vectors/documents", headers=bearer(), json={"asset_id": "a", "text": "Hi."})
    assert response.status_code == 202, response.text
    (chunk,) = response.json()["chunks"]
    db = Database(Settings(data_dir=tmp_path).resolved_database_url)
    with db.sessions() as session:
        payload = session.query(Outbox).one().payload
    db.dispose()
    assert payload["segment_id"] == chunk["segment_id"] == f"doc:{response.json()['doc_version']}:0"
    assert payload["chunk"] == {"doc_version": response.json()["doc_version"], "chunk_index": 0, "char_start": 0,
                                "char_end": 3}


@pytest.mark.parametrize(("body", "code", "field"), [
    ({"asset_id": "a", "text": "x", "chunk_tokens": 999}, "chunk_tokens_too_large", "chunk_tokens"),
    ({"asset_id": "a", "text": "x", "chunk_tokens": 64, "overlap_tokens": 40}, "overlap_too_large", "overlap_tokens"),
    ({"asset_id": "a", "text": "x", "chunk_tokens": 8}, "greater_than_equal", "chunk_tokens"),
    ({"asset_id": "a", "text": "x", "overlap_tokens": -1}, "greater_than_equal", "overlap_tokens"),
    ({"asset_id": "a", "text": "   "}, "empty_text", "text"),
    ({"asset_id": "a", "text": "x\x00y"}, "control_characters", "text"),
    ({"asset_id": "", "text": "x"}, "string_too_short", "asset_id"),
    ({"asset_id": "a", "text": "x", "model": "nope"}, "model_not_found", "model"),
    ({"asset_id": "a", "text": "x", "extra": 1}, "extra_forbidden", "extra"),
])
async def test_bad_documents_are_refused_naming_the_field(tmp_path: Path, body: dict[str, object], code: str,
                                                          field: str) -> None:
    async with make_client(tmp_path, routers=ROUTERS) as client:
        response = await client.post("/vectors/documents", headers=bearer(), json=body)
    assert 400 <= response.status_code < 500, response.text
    assert (response.json()["error"]["code"], response.json()["error"]["field"]) == (code, field)


async def test_document_size_limit_is_its_own(tmp_path: Path) -> None:
    async with make_client(tmp_path, routers=ROUTERS, max_document_bytes=2000, max_body_bytes=4096) as client:
        too_big = await client.post("/vectors/documents", headers=bearer(), json={"asset_id": "a", "text": "é" * 1001})
        assert too_big.status_code == 422 and too_big.json()["error"]["field"] == "text"
        fits = await client.post("/vectors/documents", headers=bearer(), json={"asset_id": "a", "text": "ab " * 600})
        assert fits.status_code == 202, fits.text
        # The document route's body limit (3 x 2000 + 64 KiB) is above max_body_bytes; other routes keep theirs.
        other = await client.post("/vectors/embed", headers=bearer(),
                                  json={"asset_id": "a", "segment_id": "s", "text": "ab " * 1500})
        assert other.status_code == 413


def test_a_re_embed_keeps_a_chunks_place_in_its_document() -> None:
    """A migration rewrites points through the bulk path: the chunk fields travel with the row."""
    import json

    import pandas as pd

    from deployments.vector_store.payloads import chunk_of, segment_payload
    from jobs.qdrant_sink import prepare_batch

    stored = segment_payload("org", "a", "doc:1.abc:0", MODEL, "v1", "Hi.", "t0", job_id="j",
                             chunk={"doc_version": "1.abc", "chunk_index": 0, "char_start": 0, "char_end": 3})
    plain = segment_payload("org", "a", "s", MODEL, "v1", "Hi.", "t0")
    assert chunk_of(plain) is None
    rows = pd.DataFrame({"org_id": ["org", "org"], "asset_id": ["a", "a"], "segment_id": ["doc:1.abc:0", "s"],
                         "text": ["Hi.", "Hi."], "chunk": [json.dumps(chunk_of(stored)), ""]})
    prepared = prepare_batch(rows, None, None, MODEL, "v2")
    rewritten = segment_payload("org", "a", "doc:1.abc:0", MODEL, "v2", "Hi.", "t1",
                                chunk=json.loads(prepared["chunk"][0]))
    assert {k: rewritten[k] for k in ("doc_version", "chunk_index", "char_start", "char_end")} == \
        {"doc_version": "1.abc", "chunk_index": 0, "char_start": 0, "char_end": 3}
    assert prepared["chunk"][1] == ""
