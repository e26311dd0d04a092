"""Which collection is live for a (tenant, model): the one answer the relay, search, delete, stats
and the re-embed job all ask.

A tenant without a row reads and writes its model's registry collection
(``embeddings__{model}__{registry version}``). A re-embed of one tenant moves its row through

    steady ──begin──> migrating ──switch──> switched ──finalize──> steady
       ^                 │abort                 │rollback (live <-> previous, stays switched)
       └─────────────────┘                      v

A route is keyed by the model a tenant's requests NAME (e.g. ``minilm-l6-v2``); its collections may hold
another model's vectors after a cross-model migration (``live = embeddings__all-mpnet-base-v2__v2``).
Every reader and writer embeds with the model of the collection it reads or writes
(:func:`collection_model`), never with the name the request used, so a 768-d vector never meets a
384-d collection.

Every writer upserts into :attr:`Route.write_targets`: ``live``, plus ``pending`` while
migrating (so writes accepted during the run are in the target when it switches) and ``previous``
while switched (so a rollback loses none of the writes made since). Point IDs are deterministic per
(model, version), so the double writes are harmless. Every change is one transaction and bumps
``generation``; readers cache a row for at most :data:`ROUTE_CACHE_TTL_S`, and the re-embed job
waits that long after ``begin`` before it reads its source, so no writer still writes live alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from deployments.vector_store.base import parse_collection_name
from serve_app.db.models import RouteState, TenantCollection, utcnow

# How long a reader may keep a route before asking the database again (seconds).
ROUTE_CACHE_TTL_S = 1.0


def collection_model(collection: str) -> str:
    """The model whose vectors ``collection`` holds: its name says so (``embeddings__{model}__{version}``)."""
    return parse_collection_name(collection)[0]


class RouteConflictError(RuntimeError):
    """The requested change does not fit the route's state (e.g. a second migration at once)."""


@dataclass(frozen=True)
class Route:
    org_id: str
    model: str
    live: str
    pending: str | None = None
    previous: str | None = None
    state: RouteState = RouteState.STEADY
    job_id: str | None = None
    source: str | None = None
    verified_at: datetime | None = None
    generation: int = 0

    @property
    def write_targets(self) -> list[str]:
        """Every collection a write must reach, live first, without repeats."""
        extra = self.pending if self.state == RouteState.MIGRATING else (
            self.previous if self.state == RouteState.SWITCHED else None)
        return [self.live] if extra is None or extra == self.live else [self.live, extra]

    @property
    def live_model(self) -> str:
        """The model that embeds this tenant's queries: the one its live collection was built with."""
        return collection_model(self.live)

    @property
    def write_models(self) -> list[str]:
        """The models a write must be embedded with, one per distinct model among the write targets."""
        return list(dict.fromkeys(collection_model(c) for c in self.write_targets))

    @property
    def collections(self) -> list[str]:
        """Every collection the route names (a delete must reach them all)."""
        return sorted({c for c in (self.live, self.pending, self.previous) if c})

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "live": self.live, "live_model": self.live_model, "state": str(self.state),
                "pending": self.pending,
                "previous": self.previous, "job_id": self.job_id, "source": self.source,
                "verified_at": None if self.verified_at is None else self.verified_at.isoformat(),
                "generation": self.generation}


def _route(row: TenantCollection) -> Route:
    return Route(org_id=row.org_id, model=row.model, live=row.live, pending=row.pending, previous=row.previous,
                 state=RouteState(row.state), job_id=row.job_id, source=row.source, verified_at=row.verified_at,
                 generation=row.generation)


class RouteRepository:
    """Reads and changes tenant routes; each change commits its own transaction."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, org_id: str, model: str, default_live: str) -> Route:
        """The tenant's route, or the default (``default_live``, steady) when it has no row."""
        row = self._session.get(TenantCollection, (org_id, model))
        return Route(org_id, model, default_live) if row is None else _route(row)

    def list(self, org_id: str | None = None, model: str | None = None) -> list[Route]:
        query = select(TenantCollection).order_by(TenantCollection.org_id, TenantCollection.model)
        if org_id is not None:
            query = query.where(TenantCollection.org_id == org_id)
        if model is not None:
            query = query.where(TenantCollection.model == model)
        return [_route(row) for row in self._session.scalars(query)]

    def _row(self, org_id: str, model: str, default_live: str) -> TenantCollection:
        query = select(TenantCollection).where(TenantCollection.org_id == org_id, TenantCollection.model == model)
        row = self._session.scalars(query.with_for_update()).one_or_none()
        if row is None:
            row = TenantCollection(org_id=org_id, model=model, live=default_live, state=RouteState.STEADY,
                                   generation=0, changed_at=utcnow())
            self._session.add(row)
        return row

    def _commit(self, row: TenantCollection) -> Route:
        row.generation = (row.generation or 0) + 1
        row.changed_at = utcnow()
        self._session.commit()
        return _route(row)

    def begin_migration(self, org_id: str, model: str, default_live: str, pending: str, job_id: str,
                        source: str) -> Route:
        """Start filling ``pending``; from now on writes reach live and pending. A rerun of the same job
        resumes; another job's running migration is refused (abort it first)."""
        try:
            row = self._row(org_id, model, default_live)
            if row.state == RouteState.MIGRATING and row.job_id != job_id:
                raise RouteConflictError(
                    f"tenant {org_id!r} is already migrating {model} into {row.pending} (job {row.job_id})")
            if pending == row.live:
                raise RouteConflictError(f"{pending} is already live for tenant {org_id!r}")
            row.state, row.pending, row.job_id, row.source = RouteState.MIGRATING, pending, job_id, source
            row.verified_at = None
            return self._commit(row)
        except BaseException:
            self._session.rollback()
            raise

    def abort_migration(self, org_id: str, model: str, job_id: str) -> Route | None:
        """A failed or stopped run: back to steady (or switched, if a previous is still kept)."""
        row = self._session.get(TenantCollection, (org_id, model), with_for_update=True)
        if row is None or row.state != RouteState.MIGRATING or row.job_id != job_id:
            self._session.rollback()
            return None
        row.pending = None
        row.state = RouteState.SWITCHED if row.previous else RouteState.STEADY
        return self._commit(row)

    def switch(self, org_id: str, model: str, job_id: str) -> Route:
        """Make the verified pending collection live; the old live is kept as previous."""
        row = self._session.get(TenantCollection, (org_id, model), with_for_update=True)
        if row is None or row.state != RouteState.MIGRATING or row.job_id != job_id or not row.pending:
            self._session.rollback()
            raise RouteConflictError(f"tenant {org_id!r} has no migration of {model} by job {job_id} to switch")
        row.previous, row.live, row.pending = row.live, row.pending, None
        row.state, row.verified_at = RouteState.SWITCHED, utcnow()
        return self._commit(row)

    def mark_verified(self, org_id: str, model: str, default_live: str, job_id: str, source: str) -> Route:
        """A re-embed that filled the live collection in place (nothing to switch) and verified it."""
        try:
            row = self._row(org_id, model, default_live)
            row.job_id, row.source, row.verified_at = job_id, source, utcnow()
            return self._commit(row)
        except BaseException:
            self._session.rollback()
            raise

    def rollback(self, org_id: str, model: str, to: str | None = None) -> Route:
        """Live goes back to previous (or to ``to``, a collection the route names) at once; the
        collection it leaves stays a write target, so rolling forward again loses nothing either."""
        row = self._session.get(TenantCollection, (org_id, model), with_for_update=True)
        if row is None:
            self._session.rollback()
            raise RouteConflictError(f"tenant {org_id!r} has never migrated {model}: nothing to roll back")
        if row.state == RouteState.MIGRATING:
            self._session.rollback()
            raise RouteConflictError(f"tenant {org_id!r} is migrating {model} (job {row.job_id}); stop it first")
        target = to or row.previous
        if not target:
            self._session.rollback()
            raise RouteConflictError(f"tenant {org_id!r} keeps no previous collection of {model}")
        if target == row.live:
            self._session.rollback()
            return _route(row)
        row.previous, row.live, row.state = row.live, target, RouteState.SWITCHED
        return self._commit(row)

    def finalize(self, org_id: str, model: str) -> tuple[Route, str | None]:
        """Stop the double write into previous (no rollback past this); returns the dropped name."""
        row = self._session.get(TenantCollection, (org_id, model), with_for_update=True)
        if row is None or row.state != RouteState.SWITCHED:
            self._session.rollback()
            raise RouteConflictError(f"tenant {org_id!r} has no switched migration of {model} to finalize")
        dropped, row.previous, row.state = row.previous, None, RouteState.STEADY
        return self._commit(row), dropped
