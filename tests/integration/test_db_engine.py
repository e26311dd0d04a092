"""Engine settings: SQLite pragmas and lock behaviour, PostgreSQL basics."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from serve_app.db import Job, JobEvent, make_sessionmaker
from serve_app.db.models import utcnow


def test_sqlite_pragmas_and_readonly_reads_beside_a_writer(db_engine: Engine) -> None:
    if db_engine.dialect.name != "sqlite":
        pytest.skip("SQLite-specific settings")
    with db_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1

    writer = make_sessionmaker(db_engine)()
    try:
        writer.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: the write lock is held from here
        probe = db_engine.raw_connection()  # a DBAPI connection: no SQLAlchemy BEGIN of its own
        try:
            probe.cursor().execute("PRAGMA busy_timeout=0")
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                probe.cursor().execute("BEGIN IMMEDIATE")
        finally:
            probe.invalidate()  # drop it rather than pool a connection with busy_timeout=0
        with make_sessionmaker(db_engine, readonly=True)() as reader:
            assert reader.scalars(select(Job)).all() == []  # deferred: WAL readers are not blocked
    finally:
        writer.close()


def test_foreign_keys_are_enforced(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session, pytest.raises(IntegrityError):
        session.add(JobEvent(job_id="no-such-job", next_status="queued", created_at=utcnow()))
        session.commit()
