"""Engine and session factories, and programmatic Alembic upgrades.

SQLite: WAL, a 30 s busy timeout, foreign keys on, and every transaction opened with
``BEGIN IMMEDIATE`` so that a read-then-write transaction takes the single write lock up front
(a deferred transaction would fail with ``SQLITE_BUSY_SNAPSHOT`` when it tries to upgrade after
another writer committed). Read-only work that wants WAL's concurrent readers can use
:func:`make_sessionmaker` with ``readonly=True``, which opens plain deferred transactions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any constant works; all Heimdex processes must agree on it.
_MIGRATION_ADVISORY_LOCK = 0x48_45_49_4D  # "HEIM"
_DEFERRED_OPTION = "heimdex_sqlite_deferred"


def is_sqlite(engine_or_url: Engine | str) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with Heimdex's per-backend settings (see the module docstring)."""
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True, **kwargs)

    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Hand transaction control to SQLAlchemy (the pysqlite driver's own BEGIN handling is off).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a process crash; only an OS crash can lose the last commits.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    deferred = conn.get_execution_options().get(_DEFERRED_OPTION, False)
    conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine, *, readonly: bool = False) -> sessionmaker[Session]:
    """Session factory; ``readonly`` sessions on SQLite use deferred transactions (no write lock).

    Objects stay loaded after commit (``expire_on_commit=False``) so repository results can be
    used once the session is closed; the repository's reads refresh what they load.
    """
    bind = engine.execution_options(**{_DEFERRED_OPTION: True}) if readonly else engine
    return sessionmaker(bind=bind, expire_on_commit=False)


def alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic ``Config`` built in code, pointing at the migrations inside the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision``; safe to call from several processes."""
    from alembic import command

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_ADVISORY_LOCK})
            command.upgrade(alembic_config(conn), revision)
    finally:
        engine.dispose()
