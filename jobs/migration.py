"""A re-embed's per-tenant bookkeeping: which tenants move, where they read from, and the route changes
(begin, verify, switch, abort, rollback, finalize) in ``serve_app.db.routes``.

Each tenant moves on its own: a tenant whose live collection already is the target is *filled* in
place (e.g. mock → real into the model's current version; nothing to switch), any other tenant
*migrates* (its route goes migrating → switched). Other tenants' routes are never touched.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from deployments.point_ids import point_id_for
from deployments.vector_store.base import VectorStore, collection_name, parse_collection_name
from jobs.texts import validate_text

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from serve_app.db.routes import Route

SCAN_PAGE = 512
Mode = Literal["fill", "migrate"]


class MigrationPlanError(ValueError):
    """The requested re-embed would lose data or cannot be planned; the message says what to pass."""


@dataclass
class TenantMove:
    org_id: str
    live: str  # the tenant's live collection of the target model when the run started
    mode: Mode
    source: str | None = None  # the tenant's source collection (collection sources)
    report: dict[str, Any] = field(default_factory=dict)


def next_version(store: VectorStore, model: str) -> str:
    """``v{n+1}`` for the highest ``v{n}`` among the model's collections (``v2`` when there is none)."""
    numbers = [1]
    for name in store.list_collections():
        try:
            owner, version = parse_collection_name(name)
        except ValueError:
            continue
        match = re.fullmatch(r"v(\d+)", version)
        if owner == model and match:
            numbers.append(int(match.group(1)))
    return f"v{max(numbers) + 1}"


def route_model_of(source_kind: str, source_model: str | None, model: str) -> str:
    """The model whose tenant routes a re-embed moves.

    A run that reads another REGISTERED model's collections (``--source collection:minilm-l6-v2 --model
    all-mpnet-base-v2``) is a cross-model migration: it moves each tenant's route of the SOURCE model (the
    name its requests use) onto a collection of ``model``, and a rollback of that route returns it to the
    source model. Every other run (same model, mock, files) moves the routes of ``model`` itself."""
    from deployments.mock_vectors import MOCK_MODEL
    from deployments.registry import MODELS

    if source_kind == "collection" and source_model not in (None, model, MOCK_MODEL) and source_model in MODELS:
        return str(source_model)
    return model


def plan_moves(target: str, lives: dict[str, str], sources: dict[str, str] | None,
               live_counts: dict[str, int]) -> list[TenantMove]:
    """One move per tenant. A migrating tenant must read its own live collection, or hold nothing in it:
    switching to a target filled from elsewhere would drop the live points."""
    moves: list[TenantMove] = []
    for org in sorted(lives):
        live = lives[org]
        source = None if sources is None else sources[org]
        mode: Mode = "fill" if live == target else "migrate"
        if mode == "migrate" and source != live and live_counts.get(org, 0) > 0:
            raise MigrationPlanError(
                f"tenant {org!r} reads from {source or 'a file'} but its live collection {live} holds "
                f"{live_counts[org]} points that a switch to {target} would drop; re-embed "
                f"collection:{parse_collection_name(live)[0]} into {target} first, or pass "
                f"--to-version {parse_collection_name(live)[1]} to fill the live collection in place")
        moves.append(TenantMove(org, live, mode, source))
    return moves


def scan_ids(store: VectorStore, collection: str, tenant: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(point id, payload) of every point the tenant has in ``collection``."""
    offset: str | None = None
    while True:
        points, offset = store.scroll(collection, tenant, SCAN_PAGE, offset, False)
        for point in points:
            yield point.point_id, point.payload or {}
        if offset is None:
            return


def expected_ids(store: VectorStore, source: str, tenant: str, model: str, version: str) -> set[str]:
    """The target point IDs of the tenant's embeddable source rows (text that validates)."""
    out: set[str] = set()
    for _, payload in scan_ids(store, source, tenant):
        text, error = validate_text(payload.get("text"))
        asset, segment = str(payload.get("asset_id") or ""), str(payload.get("segment_id") or "")
        if not error and text and asset and segment:
            out.add(point_id_for(tenant, asset, segment, model, version))
    return out


def reconcile(store: VectorStore, move: TenantMove, target: str) -> tuple[set[str], set[str]]:
    """(missing, extra) point IDs of the target against the tenant's source, as of now.

    The target is read before the source: a write that lands in between reached the live collection
    first (writers write live before pending), so it shows as missing at worst (and is re-checked),
    never as an extra to delete. Extras (points whose segment is no longer in the source, e.g. deleted
    while the bulk writer held a stale copy) count only when migrating; a fill target is live and has
    other points of its own.
    """
    assert move.source is not None
    model, version = parse_collection_name(target)
    present = {pid for pid, _ in scan_ids(store, target, move.org_id)}
    expected = expected_ids(store, move.source, move.org_id, model, version)
    missing = expected - present
    if missing:  # re-check against the target now: writes since the first read are not missing
        found = {p.point_id for p in store.retrieve(target, move.org_id, sorted(missing), False)}
        missing -= found
    extra = present - expected if move.mode == "migrate" else set()
    return missing, extra


def delete_extra(store: VectorStore, target: str, tenant: str, extra: set[str]) -> int:
    ids = sorted(extra)
    return sum(int(store.delete_ids(target, tenant, ids[i:i + SCAN_PAGE]))
               for i in range(0, len(ids), SCAN_PAGE))


# --------------------------------------------------------------------------- route changes


def routes_of(sessions: sessionmaker[Session], orgs: list[str], model: str) -> dict[str, Route]:
    from serve_app.db.routes import RouteRepository
    from serve_app.routing import default_collection

    with sessions() as session:
        repo = RouteRepository(session)
        return {org: repo.get(org, model, default_collection(model)) for org in orgs}


def begin(sessions: sessionmaker[Session], moves: list[TenantMove], model: str, target: str, job_id: str,
          source_label: str) -> None:
    from serve_app.db.routes import RouteRepository
    from serve_app.routing import default_collection

    with sessions() as session:
        repo = RouteRepository(session)
        for move in moves:
            if move.mode == "migrate":
                repo.begin_migration(move.org_id, model, default_collection(model), target, job_id,
                                     move.source or source_label)


def finish(sessions: sessionmaker[Session], moves: list[TenantMove], model: str, job_id: str,
           source_label: str, switch: bool) -> dict[str, dict[str, Any]]:
    """Switch every migrating tenant (or, with ``switch`` off, end its migration unswitched) and mark
    fills verified; returns each tenant's route afterwards."""
    from serve_app.db.routes import RouteRepository
    from serve_app.routing import default_collection

    out: dict[str, dict[str, Any]] = {}
    with sessions() as session:
        repo = RouteRepository(session)
        for move in moves:
            if move.mode == "fill":
                route = repo.mark_verified(move.org_id, model, default_collection(model), job_id,
                                           move.source or source_label)
            elif switch:
                route = repo.switch(move.org_id, model, job_id)
            else:
                route = repo.abort_migration(move.org_id, model, job_id) or repo.get(
                    move.org_id, model, default_collection(model))
            out[move.org_id] = route.as_dict()
    return out


def abort(sessions: sessionmaker[Session], moves: list[TenantMove], model: str, job_id: str) -> None:
    from serve_app.db.routes import RouteRepository

    with sessions() as session:
        repo = RouteRepository(session)
        for move in moves:
            if move.mode == "migrate":
                repo.abort_migration(move.org_id, model, job_id)


def rollback(sessions: sessionmaker[Session], model: str, orgs: list[str] | None,
             to_version: str | None) -> dict[str, Any]:
    """Each tenant (``orgs``, or every tenant with a switched route of ``model``) back to its previous
    collection, or to ``to_version``'s, at once (one transaction each, no Ray work)."""
    from serve_app.db.routes import RouteConflictError, RouteRepository, RouteState

    with sessions() as session:
        repo = RouteRepository(session)
        targets = orgs or [r.org_id for r in repo.list(model=model) if r.state == RouteState.SWITCHED]
        done: dict[str, Any] = {}
        for org in targets:
            before = repo.list(org_id=org, model=model)
            if not before:
                _refuse_unknown_route(repo.list(org_id=org), org, model)
            to = None if to_version is None else collection_name(model, to_version)
            if to is not None and before and to not in before[0].collections:
                raise RouteConflictError(f"tenant {org!r} never had {to}; its collections: {before[0].collections}")
            route = repo.rollback(org, model, to)
            done[org] = {"from": before[0].live if before else None, **route.as_dict()}
    return {"rollback": True, "model": model, "tenants": done}


def _refuse_unknown_route(routes: list[Route], org: str, model: str) -> None:
    """A tenant with no route of ``model`` whose route of ANOTHER model holds ``model`` collections (a
    cross-model migration): say which --model names that route instead of "nothing to roll back"."""
    from serve_app.db.routes import RouteConflictError, collection_model

    holders = [r for r in routes if any(_model_of(c) == model for c in r.collections)]
    if holders:
        route = holders[0]
        raise RouteConflictError(
            f"tenant {org!r} has no {model} route of its own; its {route.model} route lives in {route.live} "
            f"({collection_model(route.live)}): pass --model {route.model} to roll that route back")


def _model_of(collection: str) -> str | None:
    try:
        return parse_collection_name(collection)[0]
    except ValueError:
        return None


def check_finalizable(sessions: sessionmaker[Session], model: str, orgs: list[str]) -> None:
    """Refuse (RouteConflictError) unless every tenant's last re-embed of ``model`` was verified."""
    from serve_app.db.routes import RouteConflictError, RouteRepository, RouteState

    with sessions() as session:
        repo = RouteRepository(session)
        for org in orgs:
            rows = repo.list(org_id=org, model=model)
            if not rows or rows[0].verified_at is None or rows[0].state == RouteState.MIGRATING:
                raise RouteConflictError(
                    f"tenant {org!r} has no verified re-embed of {model}; run `heimdex reembed` for it first")


def finalize(sessions: sessionmaker[Session], store: VectorStore, model: str, orgs: list[str]) -> dict[str, Any]:
    """For each tenant whose last re-embed of ``model`` was verified: stop the double write into the
    previous collection (no rollback past this) and delete the tenant's points from the collections it
    left (the previous one, and a source such as the mock collection). Refused for an unverified tenant."""
    from serve_app.db.routes import RouteRepository, RouteState

    check_finalizable(sessions, model, orgs)
    out: dict[str, Any] = {}
    with sessions() as session:
        repo = RouteRepository(session)
        for org in orgs:
            route = repo.list(org_id=org, model=model)[0]
            dropped = {route.previous} if route.previous else set()
            if route.state == RouteState.SWITCHED:
                route, _ = repo.finalize(org, model)
            if route.source and route.source.startswith("embeddings__"):
                dropped.add(route.source)
            dropped.discard(route.live)
            removed = {name: delete_extra(store, name, org, {pid for pid, _ in scan_ids(store, name, org)})
                       for name in sorted(dropped) if name in store.list_collections()}
            out[org] = {**route.as_dict(), "points_removed": removed}
    return {"finalize": True, "model": model, "tenants": out}
