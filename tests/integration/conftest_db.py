"""Database fixtures shared by the SQL tests: every test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``HEIMDEX_TEST_PG_URL`` (default: the local server's ``test`` database);
each test gets a fresh ``heimdex_test_<random>`` database, dropped afterwards. When the server is
unreachable the PostgreSQL cases are skipped, unless ``HEIMDEX_TEST_PG_URL`` or ``CI`` is set,
in which case they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from serve_app.db.engine import make_engine, make_sessionmaker, upgrade_database

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A reachable PostgreSQL URL whose user may CREATE DATABASE."""
    configured = os.environ.get("HEIMDEX_TEST_PG_URL")
    url = configured or DEFAULT_PG_URL
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        reason = f"PostgreSQL unreachable at {make_url(url).render_as_string(hide_password=True)}: {exc}"
        if configured or os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    finally:
        engine.dispose()
    return url


def _fresh_pg_database(admin_url: str) -> Iterator[str]:
    name = f"heimdex_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (not migrated) on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'heimdex.db'}"
        return
    yield from _fresh_pg_database(request.getfixturevalue("pg_admin_url"))


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to head."""
    upgrade_database(db_url)
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(db_engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(db_engine)
