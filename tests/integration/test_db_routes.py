"""Tenant routes (serve_app.db.routes) on SQLite and PostgreSQL: the state machine a migration walks,
where writes go in each state, and the refusals that keep two migrations or a bad rollback out."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from serve_app.db.models import RouteState
from serve_app.db.routes import RouteConflictError, RouteRepository
from serve_app.routing import RouteResolver

V1, V2, V3 = (f"embeddings__m__v{i}" for i in (1, 2, 3))


def test_tenant_without_row_reads_the_default(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        route = RouteRepository(session).get("org-a", "m", V1)
    assert route.live == V1 and route.state == RouteState.STEADY and route.write_targets == [V1]


def test_migration_walk_and_write_targets(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        repo = RouteRepository(session)
        migrating = repo.begin_migration("org-a", "m", V1, V2, "job-1", V1)
        assert migrating.state == RouteState.MIGRATING and migrating.write_targets == [V1, V2]
        assert migrating.live == V1, "search keeps reading live until the switch"
        switched = repo.switch("org-a", "m", "job-1")
        assert (switched.live, switched.previous, switched.pending) == (V2, V1, None)
        assert switched.write_targets == [V2, V1], "writes after a switch keep the rollback target whole"
        assert switched.verified_at is not None and switched.generation > migrating.generation
        back = repo.rollback("org-a", "m")
        assert (back.live, back.previous, back.state) == (V1, V2, RouteState.SWITCHED)
        assert back.write_targets == [V1, V2], "rolling forward again loses nothing either"
        final, dropped = repo.finalize("org-a", "m")
        assert final.state == RouteState.STEADY and final.write_targets == [V1] and dropped == V2
        # Another tenant never moved.
        assert repo.get("org-b", "m", V1).live == V1 and repo.list(org_id="org-b") == []


def test_second_migration_refused_and_abort_restores(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        repo = RouteRepository(session)
        repo.begin_migration("org-a", "m", V1, V2, "job-1", V1)
        with pytest.raises(RouteConflictError, match="already migrating"):
            repo.begin_migration("org-a", "m", V1, V3, "job-2", V1)
        assert repo.begin_migration("org-a", "m", V1, V2, "job-1", V1).pending == V2, "a rerun resumes"
        with pytest.raises(RouteConflictError, match="stop it first"):
            repo.rollback("org-a", "m")
        assert repo.abort_migration("org-a", "m", "job-2") is None, "only the migrating job may abort"
        aborted = repo.abort_migration("org-a", "m", "job-1")
        assert aborted is not None and aborted.state == RouteState.STEADY and aborted.write_targets == [V1]
        with pytest.raises(RouteConflictError):
            repo.switch("org-a", "m", "job-1")
        with pytest.raises(RouteConflictError, match="already live"):
            repo.begin_migration("org-a", "m", V1, V1, "job-3", V1)


def test_rollback_needs_a_previous_collection(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        repo = RouteRepository(session)
        with pytest.raises(RouteConflictError, match="never migrated"):
            repo.rollback("org-a", "m")
        repo.mark_verified("org-a", "m", V1, "job-1", "embeddings__mock__v1")
        with pytest.raises(RouteConflictError, match="no previous"):
            repo.rollback("org-a", "m")
        with pytest.raises(RouteConflictError, match="no switched migration"):
            repo.finalize("org-a", "m")


def test_resolver_sees_a_switch_within_its_ttl(session_factory: sessionmaker[Session]) -> None:
    now = [0.0]
    resolver = RouteResolver(session_factory, ttl_s=1.0, clock=lambda: now[0])
    assert resolver.resolve("org-a", "minilm-l6-v2").live == "embeddings__minilm-l6-v2__v1"
    with session_factory() as session:
        RouteRepository(session).begin_migration("org-a", "minilm-l6-v2", "embeddings__minilm-l6-v2__v1",
                                                 "embeddings__minilm-l6-v2__v2", "job-1", "x")
    now[0] = 0.5
    assert resolver.resolve("org-a", "minilm-l6-v2").state == RouteState.STEADY, "cached within the TTL"
    now[0] = 1.01
    assert resolver.resolve("org-a", "minilm-l6-v2").write_targets == [
        "embeddings__minilm-l6-v2__v1", "embeddings__minilm-l6-v2__v2"]
