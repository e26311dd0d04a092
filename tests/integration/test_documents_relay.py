"""Documents through the whole write path in-process: API -> jobs + outbox -> RelayCore -> a real embedded
Qdrant shard, on SQLite and PostgreSQL. The model is FakeHashBackend (a named fake); the chunking uses the
packaged model's real tokenizer. What it proves: search results' offsets slice the document; a changed
document leaves none of its old chunks once the relay ran, even when the old version's chunks are
delivered AFTER the new version's cleanup; a deleted asset's chunks in flight remove themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from deployments.vector_store.edge import EdgeBackend
from deployments.vector_store.proxies import threaded_store
from serve_app.api import create_api
from serve_app.auth import mint_token
from serve_app.db import upgrade_database
from serve_app.db.database import Database
from serve_app.relay import RelayCore
from serve_app.routes import jobs, vectors_documents, vectors_search, vectors_write
from serve_app.settings import Settings
from tests.fault.inprocess import MODEL, make_services

SECRET = "integration-secret-0123456789abcdef0123456789"
COLLECTION = "embeddings__minilm-l6-v2__v1"
DOCUMENT = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")[:4000]


class World:
    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.settings = Settings(data_dir=tmp_path, database_url=db_url, jwt_secret=SECRET)
        upgrade_database(db_url)
        self.edge = EdgeBackend(tmp_path / "qdrant")
        self.edge.ensure_collection(MODEL, "v1", 384)
        self.db = Database(db_url)
        store = threaded_store(self.edge)
        app = create_api(make_services(self.settings, store=store, db=self.db), extra_routers=(
            vectors_search.router, vectors_write.router, vectors_documents.router, jobs.router))
        self.client = TestClient(app, raise_server_exceptions=False)
        self.relay = RelayCore(self.settings, make_services(self.settings).embedders, store, owner="relay-test")
        self.headers = {"Authorization": f"Bearer {mint_token(self.settings, org_id='org-doc', sub='t')}"}

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.client.post(path, json=body, headers=self.headers)
        assert response.status_code in (200, 202), response.text
        return response.json()

    def drain(self) -> None:
        """Run the relay until the outbox has nothing due."""
        for _ in range(200):
            if asyncio.run(self.relay.run_once()) == 0 and not self.relay.queue.counts_by_state().get("pending"):
                return
        raise AssertionError(self.relay.status())

    def points(self) -> list[dict[str, Any]]:
        stored, _ = self.edge.scroll(COLLECTION, "org-doc", limit=10_000)
        return [p.payload for p in stored]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.client.get(f"/jobs/{job_id}", headers=self.headers).json()

    def close(self) -> None:
        self.client.close()
        self.relay.db.dispose()
        self.db.dispose()
        self.edge.close()


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[World]:
    w = World(tmp_path, db_url)
    yield w
    w.close()


def test_chunks_round_trip_and_search_offsets_slice_the_document(world: World) -> None:
    accepted = world.post("/vectors/documents", {"asset_id": "doc", "text": DOCUMENT, "chunk_tokens": 96})
    world.drain()
    assert all(world.job(c["job_id"])["status"] == "succeeded" for c in accepted["chunks"])
    payloads = world.points()
    assert sorted(p["chunk_index"] for p in payloads) == list(range(len(accepted["chunks"])))
    for payload in payloads:
        assert payload["text"] == DOCUMENT[payload["char_start"]:payload["char_end"]]
        assert payload["doc_version"] == accepted["doc_version"]
    found = world.post("/vectors/search", {"query": accepted["chunks"][2]["segment_id"], "asset_id": "doc",
                                           "limit": 100})["results"]
    assert len(found) == len(accepted["chunks"])
    for result in found:
        chunk = accepted["chunks"][result["chunk_index"]]
        assert (result["char_start"], result["char_end"]) == (chunk["char_start"], chunk["char_end"])
        assert DOCUMENT[result["char_start"]:result["char_end"]].startswith(result["text_preview"])


def test_a_changed_document_leaves_no_stale_chunk(world: World) -> None:
    first = world.post("/vectors/documents", {"asset_id": "doc", "text": DOCUMENT, "chunk_tokens": 64})
    world.drain()
    shorter = DOCUMENT[:1500]
    second = world.post("/vectors/documents", {"asset_id": "doc", "text": shorter, "chunk_tokens": 64})
    assert len(second["chunks"]) < len(first["chunks"])
    world.drain()
    payloads = world.points()
    assert {p["doc_version"] for p in payloads} == {second["doc_version"]}
    assert len(payloads) == len(second["chunks"])
    cleanup = world.job(second["cleanup_job_id"])
    assert cleanup["status"] == "succeeded" and cleanup["result"]["deleted"] == len(first["chunks"])


def test_old_chunks_delivered_after_the_cleanup_remove_themselves(world: World) -> None:
    """v1's chunk jobs are still queued when v2 arrives, and v2's cleanup is delivered BEFORE them (as a retry
    with backoff or a second relay can make happen): each v1 chunk, once written, finds its document moved on
    and deletes itself."""
    v1 = world.post("/vectors/documents", {"asset_id": "doc", "text": DOCUMENT, "chunk_tokens": 64})
    v2 = world.post("/vectors/documents", {"asset_id": "doc", "text": DOCUMENT + " Changed.", "chunk_tokens": 64})
    # Deliver the cleanup FIRST (nothing of v1 written yet: it deletes nothing), then everything else.
    cleanup_only = asyncio.run(_run_tasks(world, {"document_cleanup"}))
    assert cleanup_only == 1 and world.job(v2["cleanup_job_id"])["result"]["deleted"] == 0
    world.drain()
    payloads = world.points()
    assert {p["doc_version"] for p in payloads} == {v2["doc_version"]}
    assert len(payloads) == len(v2["chunks"])
    late = world.job(v1["chunks"][0]["job_id"])
    assert late["status"] == "succeeded" and late["result"]["superseded"] is True


async def _run_tasks(world: World, tasks: set[str]) -> int:
    messages = await asyncio.to_thread(world.relay.queue.claim, 100, tasks)
    for msg in messages:
        await world.relay._clean_document(msg)
    return len(messages)


def test_deleting_an_asset_removes_chunks_still_in_flight_and_a_resend_brings_them_back(world: World) -> None:
    accepted = world.post("/vectors/documents", {"asset_id": "doc", "text": DOCUMENT, "chunk_tokens": 128})
    deleted = world.client.delete("/vectors/assets/doc", headers=world.headers)
    assert deleted.status_code == 200, deleted.text
    world.drain()  # the chunks were accepted before the delete and are written after it
    assert world.points() == []
    again = world.post("/vectors/documents", {"asset_id": "doc", "text": DOCUMENT, "chunk_tokens": 128})
    assert again["created"] and again["doc_version"] != accepted["doc_version"]
    world.drain()
    assert len(world.points()) == len(again["chunks"])
    gone = world.client.delete("/vectors/assets/doc", headers=world.headers).json()
    assert gone["deleted"] == len(again["chunks"]) and world.points() == []


def test_concurrent_submissions_of_one_document_make_its_jobs_once(world: World) -> None:
    """Eight identical first submissions at once (PostgreSQL: truly concurrent transactions): one creates the
    document and its jobs, the others lose the race on the document row, retry and find it unchanged."""
    from concurrent.futures import ThreadPoolExecutor

    from serve_app.db import ChunkSpan, DocumentConflictError, DocumentRepository

    chunks = [ChunkSpan(i, i * 10, i * 10 + 9, f"chunk {i}") for i in range(20)]

    def submit(_: int) -> tuple[bool, list[str]]:
        for _attempt in range(5):
            with world.db.sessions() as session:
                try:
                    done = DocumentRepository(session).submit("org-doc", "t", "same", MODEL, "v1", "h" * 64, chunks)
                    return done.changed, [j.job.id for j in done.jobs]
                except DocumentConflictError:
                    continue
        raise AssertionError("no attempt succeeded")

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(submit, range(8)))
    assert sum(changed for changed, _ in outcomes) == 1
    assert len({tuple(ids) for _, ids in outcomes}) == 1
    counts = world.client.get("/jobs/counts", headers=world.headers).json()
    assert counts["total"] == len(chunks)
