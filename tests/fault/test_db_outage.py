"""The job database becomes unreachable: the API answers 503 + Retry-After and records nothing; once
the database is back the same process works again, no restart.

PostgreSQL: the app reaches a fresh database through a TCP proxy the test unplugs (refused connects
and reset connections, like a server crash or a network cut). SQLite: the database file's directory
is missing, then created.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from serve_app.db.database import Database
from serve_app.db.engine import upgrade_database
from serve_app.db.models import Job, Outbox
from serve_app.settings import Settings
from tests.fault.inprocess import MemoryStoreFake, make_client, make_services
from tests.fault.tcp_proxy import TcpProxy
from tests.serve.helpers import auth

PG_URL = os.environ.get("HEIMDEX_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ORG = "org-dbdown"


class Outage:
    """A database the app reaches at ``app_url`` and the test reaches directly at ``direct_url``."""

    app_url: str
    direct_url: str

    def down(self) -> None: ...

    def up(self) -> None: ...


class PgOutage(Outage):
    def __init__(self) -> None:
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        try:
            with admin.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            admin.dispose()
            pytest.skip(f"PostgreSQL unreachable: {exc}")
        self.admin = admin
        self.name = f"heimdex_fault_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        base = make_url(PG_URL).set(database=self.name)
        self.direct_url = base.render_as_string(hide_password=False)
        upgrade_database(self.direct_url)
        self.proxy = TcpProxy(base.host or "127.0.0.1", base.port or 5432)
        self.proxy.start()
        self.app_url = base.set(port=self.proxy.port, query={"connect_timeout": "3"}).render_as_string(
            hide_password=False)

    def down(self) -> None:
        self.proxy.stop()

    def up(self) -> None:
        self.proxy.start()

    def close(self) -> None:
        self.proxy.stop()
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


class SqliteOutage(Outage):
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "db"
        self.dir.mkdir()
        self.app_url = self.direct_url = f"sqlite:///{self.dir / 'heimdex.db'}"
        upgrade_database(self.direct_url)
        self.parked = tmp_path / "db-parked"

    def down(self) -> None:
        self.dir.rename(self.parked)  # "unable to open database file" on the next connect

    def up(self) -> None:
        self.parked.rename(self.dir)

    def close(self) -> None:
        pass


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    o: Outage = SqliteOutage(tmp_path) if request.param == "sqlite" else PgOutage()
    try:
        yield o
    finally:
        o.close()  # type: ignore[attr-defined]


def _recorded(direct_url: str) -> tuple[int, int]:
    engine = create_engine(direct_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Job))), int(
                conn.scalar(select(func.count()).select_from(Outbox)))
    finally:
        engine.dispose()


def _assert_503(response, code: str = "database_unavailable") -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"]["code"] == code, response.text


def test_database_outage_503_records_nothing_and_recovers_without_restart(outage: Outage, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=outage.app_url)
    db = Database(outage.app_url)
    client = make_client(make_services(settings, store=MemoryStoreFake(), db=db))
    try:
        headers = auth(ORG)
        seg = {"asset_id": "a1", "segment_id": "s0", "text": "before the outage"}
        first = client.post("/vectors/embed", json=seg, headers=headers)
        assert first.status_code == 202, first.text
        job_id = first.json()["job_id"]
        assert _recorded(outage.direct_url) == (1, 1)

        db.engine.dispose()  # drop idle pooled connections (PostgreSQL ones would be reset anyway)
        outage.down()
        during = {"asset_id": "a1", "segment_id": "s1", "text": "during the outage"}
        _assert_503(client.post("/vectors/embed", json=during, headers=headers))
        _assert_503(client.post("/vectors/embed:batch", json={"segments": [during]}, headers=headers))
        _assert_503(client.get(f"/jobs/{job_id}", headers=headers))
        _assert_503(client.get("/jobs", headers=headers))
        _assert_503(client.post(f"/jobs/{job_id}/cancel", headers=headers))
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("error")
        assert client.get("/healthz").status_code == 200  # liveness is not readiness
        outage.up()
        assert _recorded(outage.direct_url) == (1, 1), "a refused request must record nothing"

        again = client.post("/vectors/embed", json=during, headers=headers)
        assert again.status_code == 202 and again.json()["created"] is True, again.text
        assert client.get(f"/jobs/{job_id}", headers=headers).status_code == 200
        assert client.get("/readyz").status_code == 200
        assert _recorded(outage.direct_url) == (2, 2)
    finally:
        client.close()
        db.dispose()
