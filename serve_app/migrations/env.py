"""Alembic environment, configured in code by ``serve_app.db.engine.alembic_config``.

The caller passes an open connection in ``config.attributes["connection"]``; without one (the
``alembic`` CLI with ``-x url=...``) an engine is made from that URL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from serve_app.db.engine import make_engine
from serve_app.db.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no connection given; pass -x url=... or config.attributes['connection']")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
