# Shared integration fixtures. SQL fixtures live in conftest_db.py; add other imports below.
from tests.integration.conftest_db import db_engine, db_url, pg_admin_url, session_factory  # noqa: F401
