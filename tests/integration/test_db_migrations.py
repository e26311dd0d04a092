"""The hand-written Alembic migrations create exactly what the models describe, on both backends."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, inspect

from serve_app.db.engine import make_engine, upgrade_database
from serve_app.db.models import Base


def _diffs(url: str, metadata: MetaData) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_upgraded_database_matches_models(db_url: str) -> None:
    upgrade_database(db_url)
    upgrade_database(db_url)  # a second run is a no-op
    assert _diffs(db_url, Base.metadata) == []

    engine = make_engine(db_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"jobs", "job_events", "outbox", "idempotency_keys", "alembic_version"} <= tables


def test_comparison_detects_a_model_the_migrations_lack(db_url: str) -> None:
    upgrade_database(db_url)
    changed = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["jobs"].append_column(Column("priority", Integer, nullable=True))
    diffs = _diffs(db_url, changed)
    assert [d[0] for d in diffs] == ["add_column"]


def test_outbox_rows_written_before_0003_get_their_jobs_tenant(db_url: str) -> None:
    from sqlalchemy import text

    upgrade_database(db_url, "0002")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            for job_id, org in (("job-1", "org-a"), ("job-2", "org-b")):
                conn.execute(text(
                    "INSERT INTO jobs (id, org_id, type, status, progress, job_key, attempts, created_at, updated_at) "
                    "VALUES (:id, :org, 'reembed', 'queued', 0, :key, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                    {"id": job_id, "org": org, "key": f"key-{job_id}"})
                conn.execute(text(
                    "INSERT INTO outbox (job_id, task, payload, state, attempts, next_attempt_at, created_at, "
                    "updated_at) VALUES (:id, 'reembed', '{}', 'pending', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, "
                    "CURRENT_TIMESTAMP)"), {"id": job_id})
        upgrade_database(db_url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT job_id, org_id FROM outbox ORDER BY job_id")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [("job-1", "org-a"), ("job-2", "org-b")]
    assert _diffs(db_url, Base.metadata) == []
