"""DocumentRepository: a whole document becomes one embed job per chunk, and replaces its previous chunks.

One transaction writes the document row (its version and chunk count), one embed job + outbox row per
chunk and, when the document CHANGED, one ``document_cleanup`` job + outbox row naming the chunks of the
version it replaces. The relay deletes those chunks' points by their deterministic point IDs (idempotent,
so redelivery is harmless). Ordering, and why no crash leaves a stale chunk behind:

* The cleanup row is committed together with the new version, so it is delivered at least once after the
  new version is the current one; it deletes every chunk the replaced version may have written so far.
* A chunk of a replaced version may still be in flight (claimed, or retried after a failure) and land AFTER
  the cleanup ran. The relay therefore reads the document's current version right after every chunk upsert
  and deletes the chunk again when it is no longer current (or the document was deleted). Either the read
  sees the new version (the chunk removes itself) or the new version committed after the read, hence after
  the upsert, and its cleanup, delivered later still, removes the chunk.
* Each version has its own segment ids and point IDs (``generation`` grows on every change), so removing an
  old chunk never touches a current one, even for a document that changes back to an earlier text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from serve_app.db import keys
from serve_app.db.jobs import CreatedJob, EmbedSegment, JobRepository
from serve_app.db.models import Document, utcnow

DOCUMENT_CLEANUP_JOB_TYPE = "document_cleanup"
DOCUMENT_CLEANUP_TASK = "document_cleanup"
# Characters of the content hash kept in doc_version (with the generation, which alone makes it unique).
VERSION_HASH_CHARS = 12


class DocumentConflictError(RuntimeError):
    """Another request changed the same document at the same moment; the caller retries."""


@dataclass(frozen=True)
class ChunkSpan:
    """One chunk of a document: its text is ``document[char_start:char_end]``."""

    index: int
    char_start: int
    char_end: int
    text: str


@dataclass(frozen=True)
class DocumentSubmission:
    doc_version: str
    generation: int
    changed: bool  # False: the same document (text, model, chunking) was already the current version
    segments: list[EmbedSegment]
    jobs: list[CreatedJob]
    cleanup: CreatedJob | None  # the job that deletes the replaced version's chunks, when there was one
    replaced: str | None  # the doc_version it replaces


def chunk_segment_id(doc_version: str, index: int) -> str:
    """The segment id of chunk ``index`` of one document version (its point ID follows from it)."""
    return f"doc:{doc_version}:{index}"


def content_hash(text: str, model: str, chunk_tokens: int, overlap_tokens: int) -> str:
    """What makes two submissions the same document: the text, the model and the chunking."""
    return keys.request_hash(["document", keys.text_hash(text), model, chunk_tokens, overlap_tokens])


class DocumentRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def submit(self, org_id: str, requested_by: str | None, asset_id: str, model: str, model_version: str,
               digest: str, chunks: Sequence[ChunkSpan]) -> DocumentSubmission:
        """Record the document and its chunk jobs (and the cleanup of the version it replaces) in ONE
        transaction, then commit. The same document again creates nothing and answers with its jobs.
        ``DocumentConflictError``: a concurrent submission of the same asset won; retry."""
        session = self._session
        try:
            row = session.get(Document, (org_id, asset_id), with_for_update=True, populate_existing=True)
            unchanged = row is not None and row.doc_version is not None and row.content_hash == digest
            replaced = None if row is None or unchanged else row.doc_version
            stale_chunks = 0 if row is None or unchanged else row.chunk_count
            generation = row.generation if row is not None and unchanged else (row.generation if row else 0) + 1
            doc_version = f"{generation}.{digest[:VERSION_HASH_CHARS]}"
            if not unchanged:
                self._store(row, org_id, asset_id, doc_version, digest, generation, len(chunks), model)
            segments = [EmbedSegment(asset_id=asset_id, segment_id=chunk_segment_id(doc_version, c.index),
                                     text=c.text, model=model, model_version=model_version,
                                     chunk={"doc_version": doc_version, "chunk_index": c.index,
                                            "char_start": c.char_start, "char_end": c.char_end})
                        for c in chunks]
            jobs = JobRepository(session)
            created = jobs.add_embed_jobs(org_id, requested_by, segments)
            cleanup = None
            if replaced is not None and stale_chunks:
                payload: dict[str, Any] = {"org_id": org_id, "asset_id": asset_id, "replaced_by": doc_version,
                                           "stale": [{"doc_version": replaced, "chunks": stale_chunks}]}
                key = keys.request_hash([org_id, DOCUMENT_CLEANUP_JOB_TYPE, asset_id, doc_version])
                cleanup = jobs.add_job(org_id, DOCUMENT_CLEANUP_JOB_TYPE, key, requested_by, DOCUMENT_CLEANUP_TASK,
                                       payload)
            session.commit()
        except IntegrityError as exc:
            session.rollback()
            raise DocumentConflictError(f"document {asset_id!r} was changed concurrently") from exc
        except BaseException:
            session.rollback()
            raise
        return DocumentSubmission(doc_version, generation, not unchanged, segments, created, cleanup, replaced)

    def _store(self, row: Document | None, org_id: str, asset_id: str, doc_version: str, digest: str,
               generation: int, chunk_count: int, model: str) -> None:
        values = {"doc_version": doc_version, "content_hash": digest, "generation": generation,
                  "chunk_count": chunk_count, "model": model, "updated_at": utcnow()}
        if row is None:
            self._session.add(Document(org_id=org_id, asset_id=asset_id, **values))
            self._session.flush()  # a concurrent first submission of this asset fails here (IntegrityError)
            return
        # Conditional on the generation read: a concurrent change (where FOR UPDATE does not lock, SQLite
        # serialises writers anyway) makes this match nothing, and the submission is retried.
        done = self._session.execute(
            update(Document)
            .where(Document.org_id == org_id, Document.asset_id == asset_id, Document.generation == row.generation)
            .values(**values).execution_options(synchronize_session=False))
        if getattr(done, "rowcount", 1) != 1:
            raise DocumentConflictError(f"document {asset_id!r} was changed concurrently")

    def forget(self, org_id: str, asset_id: str) -> bool:
        """The asset was deleted: its document has no current version any more (chunks still in flight then
        delete themselves). The generation stays, so sending the document again makes new chunks. Commits."""
        try:
            done = self._session.execute(
                update(Document).where(Document.org_id == org_id, Document.asset_id == asset_id)
                .values(doc_version=None, content_hash="", chunk_count=0, updated_at=utcnow())
                .execution_options(synchronize_session=False))
            self._session.commit()
        except BaseException:
            self._session.rollback()
            raise
        return bool(getattr(done, "rowcount", 0))

    def current_versions(self, assets: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        """(org_id, asset_id) -> the current doc_version (None: no document, or deleted)."""
        wanted = sorted(set(assets))
        if not wanted:
            return {}
        rows = self._session.execute(
            select(Document.org_id, Document.asset_id, Document.doc_version)
            .where(tuple_(Document.org_id, Document.asset_id).in_(wanted))).all()
        found: dict[tuple[str, str], str | None] = {(r.org_id, r.asset_id): r.doc_version for r in rows}
        return {pair: found.get(pair) for pair in wanted}
