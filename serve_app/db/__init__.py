"""SQL write path: models, engine/session factories, migrations, job repository, outbox queue.

Importing this package creates no engine and opens no connection.
"""

from serve_app.db.documents import (
    DOCUMENT_CLEANUP_TASK,
    ChunkSpan,
    DocumentConflictError,
    DocumentRepository,
    DocumentSubmission,
)
from serve_app.db.engine import make_engine, make_sessionmaker, upgrade_database
from serve_app.db.jobs import (
    CreatedJob,
    EmbedSegment,
    IdempotencyConflictError,
    InvalidCursorError,
    JobNotFoundError,
    JobRepository,
)
from serve_app.db.keys import make_job_key, request_hash, text_hash
from serve_app.db.models import (
    Base,
    Document,
    IdempotencyKey,
    Job,
    JobEvent,
    JobStatus,
    Outbox,
    OutboxState,
    RouteState,
    ServiceSwitch,
    TenantCollection,
)
from serve_app.db.outbox import ClaimedMessage, OutboxQueue, backoff_delay_s
from serve_app.db.routes import ROUTE_CACHE_TTL_S, Route, RouteConflictError, RouteRepository
from serve_app.db.switches import REAL_EMBEDDINGS, SWITCH_CACHE_TTL_S, SwitchRepository
from serve_app.db.transitions import InvalidTransitionError

__all__ = [
    "DOCUMENT_CLEANUP_TASK",
    "REAL_EMBEDDINGS",
    "ROUTE_CACHE_TTL_S",
    "SWITCH_CACHE_TTL_S",
    "Base",
    "ChunkSpan",
    "ClaimedMessage",
    "CreatedJob",
    "Document",
    "DocumentConflictError",
    "DocumentRepository",
    "DocumentSubmission",
    "EmbedSegment",
    "IdempotencyConflictError",
    "IdempotencyKey",
    "InvalidCursorError",
    "InvalidTransitionError",
    "Job",
    "JobEvent",
    "JobNotFoundError",
    "JobRepository",
    "JobStatus",
    "Outbox",
    "OutboxQueue",
    "OutboxState",
    "Route",
    "RouteConflictError",
    "RouteRepository",
    "RouteState",
    "ServiceSwitch",
    "SwitchRepository",
    "TenantCollection",
    "backoff_delay_s",
    "make_engine",
    "make_job_key",
    "make_sessionmaker",
    "request_hash",
    "text_hash",
    "upgrade_database",
]
