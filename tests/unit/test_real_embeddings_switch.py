"""The live real-embeddings switch without Ray: Settings names, the routes and the relay following the database
row, `heimdex embeddings off|on|status`, and `heimdex up` handing settings to replicas and writing the row."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from deployments.backends.fake import FakeHashBackend
from deployments.registry import get_model
from serve_app import cli
from serve_app.db import (
    REAL_EMBEDDINGS,
    SWITCH_CACHE_TTL_S,
    EmbedSegment,
    JobRepository,
    Outbox,
    ServiceSwitch,
    SwitchRepository,
    upgrade_database,
)
from serve_app.db.database import Database
from serve_app.embedder_client import LocalEmbedderClient
from serve_app.relay import RelayCore
from serve_app.settings import Settings, get_settings
from tests.fault.inprocess import MemoryStoreFake
from tests.unit.test_api_inprocess import SECRET, bearer, make_client

ROOT = Path(__file__).resolve().parents[2]
MODEL = "minilm-l6-v2"
SWITCH_NAMES = ("HEIMDEX_ENABLE_REAL_EMBEDDINGS", "ENABLE_REAL_EMBEDDINGS")


@pytest.fixture
def clean_switch_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in SWITCH_NAMES:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


# ------------------------------------------------------------------ Settings


@pytest.mark.parametrize(("env", "expected"), [
    ({}, True),
    ({"HEIMDEX_ENABLE_REAL_EMBEDDINGS": "false"}, False),
    ({"ENABLE_REAL_EMBEDDINGS": "false"}, False),  # the name docs/migration.md used
    ({"ENABLE_REAL_EMBEDDINGS": "0"}, False),
    ({"HEIMDEX_ENABLE_REAL_EMBEDDINGS": "true", "ENABLE_REAL_EMBEDDINGS": "false"}, True),  # the prefixed name wins
])
def test_settings_take_either_name(clean_switch_env: pytest.MonkeyPatch, env: dict[str, str], expected: bool) -> None:
    for name, value in env.items():
        clean_switch_env.setenv(name, value)
    settings = Settings()
    assert settings.enable_real_embeddings is expected
    assert ("enable_real_embeddings" in settings.model_fields_set) is bool(env)
    assert Settings(enable_real_embeddings=not expected).enable_real_embeddings is (not expected)


def test_settings_read_the_short_name_from_a_dotenv_file(clean_switch_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("ENABLE_REAL_EMBEDDINGS=false\n")
    assert Settings(_env_file=env_file).enable_real_embeddings is False  # type: ignore[call-arg]


def test_other_settings_keep_the_heimdex_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9")
    monkeypatch.setenv("DEFAULT_MODEL", "bogus")
    monkeypatch.delenv("HEIMDEX_PORT", raising=False)
    assert Settings().port == 8000 and Settings().default_model == MODEL
    monkeypatch.setenv("HEIMDEX_PORT", "9100")
    assert Settings().port == 9100


def test_dotenv_is_ignored_by_git() -> None:
    assert ".env" in (ROOT / ".gitignore").read_text().split()


# ------------------------------------------------------------------ Gateway routes follow the row


def _set(url: str, enabled: bool) -> None:
    db = Database(url)
    try:
        with db.sessions() as session:
            SwitchRepository(session).set(REAL_EMBEDDINGS, enabled, changed_by="test")
    finally:
        db.dispose()


async def _until(condition: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := await condition():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s}s: {what}")


async def test_routes_follow_the_switch_row_within_the_ttl(tmp_path: Path) -> None:
    url = Settings(data_dir=tmp_path).resolved_database_url
    async with make_client(tmp_path) as client:
        assert (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 200
        assert (await client.get("/readyz")).json()["real_embeddings"] == "on"

        _set(url, False)
        started = time.monotonic()

        async def refused() -> httpx.Response | None:
            response = await client.post("/v1/embeddings", json={"input": "x"})
            return response if response.status_code == 503 else None

        off = await _until(refused, SWITCH_CACHE_TTL_S + 3, "/v1/embeddings answers 503")
        assert time.monotonic() - started <= SWITCH_CACHE_TTL_S + 1
        assert off.json()["error"]["code"] == "real_embeddings_disabled" and off.headers["Retry-After"]
        embed = await client.post("/vectors/embed", headers=bearer(),
                                  json={"asset_id": "a", "segment_id": "s", "text": "hello"})
        assert embed.status_code == 503 and embed.headers["Retry-After"]
        batch = await client.post("/vectors/embed:batch", headers=bearer(),
                                  json={"segments": [{"asset_id": "a", "segment_id": "s", "text": "hello"}]})
        assert batch.status_code == 503
        mock = await client.post("/vectors/mock", headers=bearer(), json={"asset_id": "a", "segment_id": "s"})
        assert mock.status_code == 202, mock.text
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["real_embeddings"] == "off"

        _set(url, True)

        async def served() -> bool:
            return (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 200

        await _until(served, SWITCH_CACHE_TTL_S + 3, "/v1/embeddings answers 200 again")
        assert (await client.get("/readyz")).json()["real_embeddings"] == "on"


async def test_the_row_wins_over_the_settings_default(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, jwt_secret=SECRET, enable_real_embeddings=False)
    upgrade_database(settings.resolved_database_url)
    _set(settings.resolved_database_url, True)
    async with make_client(tmp_path, enable_real_embeddings=False) as client:
        assert (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 200


# ------------------------------------------------------------------ the relay holds real jobs


def _create(url: str, model: str, version: str, n: int, prefix: str) -> list[str]:
    db = Database(url)
    try:
        with db.sessions() as session:
            return [c.job.id for c in JobRepository(session).create_embed_jobs(
                "org-r", "u", [EmbedSegment("a", f"{prefix}{i}", f"text {prefix} {i}", model, version)
                               for i in range(n)])]
    finally:
        db.dispose()


def _jobs(url: str) -> dict[str, tuple[str, int, str]]:
    """job id -> (job status, outbox attempts, outbox state)."""
    from serve_app.db import Job

    db = Database(url)
    try:
        with db.sessions() as session:
            rows = session.execute(select(Job.id, Job.status, Outbox.attempts, Outbox.state)
                                   .join(Outbox, Outbox.job_id == Job.id)).all()
    finally:
        db.dispose()
    return {r.id: (str(r.status), r.attempts, str(r.state)) for r in rows}


async def test_relay_leaves_real_jobs_queued_while_off_and_runs_them_when_on(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, jwt_secret=SECRET)
    url = settings.resolved_database_url
    upgrade_database(url)
    store = MemoryStoreFake()
    relay = RelayCore(settings, LocalEmbedderClient({MODEL: FakeHashBackend(get_model(MODEL))}), store)  # type: ignore[arg-type]
    _set(url, False)
    real = _create(url, MODEL, "v1", 4, "real")
    mock = _create(url, "mock", "v1", 3, "mock")

    deadline = time.monotonic() + 30
    while any(_jobs(url)[j][0] != "succeeded" for j in mock):
        assert time.monotonic() < deadline, _jobs(url)
        await relay.run_once()
    assert await relay.run_once() == 0, "nothing else may be claimed while off"
    states = _jobs(url)
    assert {states[j] for j in real} == {("queued", 0, "pending")}
    assert relay.status()["real_embeddings"] == "off"

    _set(url, True)
    relay.real_embeddings.invalidate()  # no wait for the TTL here; the serve test waits for it
    while any(_jobs(url)[j][0] != "succeeded" for j in real):
        assert time.monotonic() < deadline, _jobs(url)
        await relay.run_once()
    assert {_jobs(url)[j] for j in real} == {("succeeded", 1, "done")}
    assert store.count("org-r") == 7


# ------------------------------------------------------------------ operator commands


def test_embeddings_off_on_status(clean_switch_env: pytest.MonkeyPatch, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    clean_switch_env.setenv("HEIMDEX_DATA_DIR", str(tmp_path))
    assert cli.main(["embeddings", "status"]) == 1, "no migrated database yet"
    assert "heimdex up" in capsys.readouterr().err
    url = get_settings().resolved_database_url
    upgrade_database(url)

    assert cli.main(["embeddings", "status", "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert (state["enabled"], state["source"]) == (True, "settings (no switch row yet)")

    assert cli.main(["embeddings", "off", "--by", "alice"]) == 0
    assert "real embeddings: off (set by alice" in capsys.readouterr().out
    db = Database(url)
    with db.sessions() as session:
        row = session.get_one(ServiceSwitch, REAL_EMBEDDINGS)
        assert (row.enabled, row.changed_by) == (False, "alice")
    db.dispose()

    assert cli.main(["embeddings", "on"]) == 0
    assert cli.main(["embeddings", "status", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    state = json.loads(out)
    assert state["enabled"] is True and "heimdex embeddings on" in state["changed_by"]


class FakeLocal:
    """Stands in for cluster.local's process and network steps of `heimdex up`; records the deploy."""

    def __init__(self) -> None:
        self.deployed: list[dict[str, Any]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from cluster import local

        monkeypatch.setattr(local, "is_running", lambda cluster: False)
        monkeypatch.setattr(local, "start_head", lambda cluster, env, num_cpus=None: None)
        monkeypatch.setattr(local, "deploy", lambda cluster, config, env: self.deployed.append(config))
        monkeypatch.setattr(local, "wait_ready", lambda url, timeout_s=300.0: {"status": "ok"})


@pytest.mark.parametrize("name", SWITCH_NAMES)
def test_up_hands_settings_to_replicas_and_writes_the_switch(clean_switch_env: pytest.MonkeyPatch, tmp_path: Path,
                                                             name: str) -> None:
    fake = FakeLocal()
    fake.install(clean_switch_env)
    clean_switch_env.setenv("HEIMDEX_STATE_DIR", str(tmp_path / "state"))
    clean_switch_env.setenv("HEIMDEX_DATA_DIR", str(tmp_path / "data"))
    clean_switch_env.setenv(name, "false")
    clean_switch_env.setenv("HEIMDEX_TENANT_BURST", "77")
    assert cli.main(["up", "--config", str(ROOT / "serve_config.yaml")]) == 0

    [config] = fake.deployed
    for app in config["applications"]:
        env_vars = app["runtime_env"]["env_vars"]
        assert env_vars[name] == "false" and env_vars["HEIMDEX_TENANT_BURST"] == "77"
        assert env_vars["HEIMDEX_DATA_DIR"] == str((tmp_path / "data").resolve())
    db = Database(get_settings().resolved_database_url)
    with db.sessions() as session:
        row = session.get_one(ServiceSwitch, REAL_EMBEDDINGS)
        assert (row.enabled, row.changed_by) == (False, f"heimdex up ({name}=false)")
    db.dispose()


def test_up_without_the_variable_leaves_the_row_alone(clean_switch_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeLocal()
    fake.install(clean_switch_env)
    clean_switch_env.setenv("HEIMDEX_STATE_DIR", str(tmp_path / "state"))
    clean_switch_env.setenv("HEIMDEX_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    url = get_settings().resolved_database_url
    upgrade_database(url)
    _set(url, False)  # an operator's `heimdex embeddings off`
    assert cli.main(["up", "--config", str(ROOT / "serve_config.yaml")]) == 0
    db = Database(url)
    with db.sessions() as session:
        assert session.get_one(ServiceSwitch, REAL_EMBEDDINGS).enabled is False
    db.dispose()
    assert not any(n in fake.deployed[0]["applications"][0]["runtime_env"]["env_vars"] for n in SWITCH_NAMES)


def test_render_serve_config_merges_env_vars_over_the_files(tmp_path: Path) -> None:
    from cluster.local import heimdex_env, render_serve_config

    config_file = tmp_path / "serve.yaml"
    config_file.write_text("applications:\n  - name: a\n    runtime_env:\n      env_vars: {KEEP: '1', HEIMDEX_X: old}\n"
                           "  - name: b\n")
    env = heimdex_env({"HEIMDEX_X": "new", "ENABLE_REAL_EMBEDDINGS": "false", "PATH": "/bin", "HOME": "/root"})
    assert env == {"HEIMDEX_X": "new", "ENABLE_REAL_EMBEDDINGS": "false"}
    config = render_serve_config(config_file, "127.0.0.1", 9000, env_vars=env)
    assert config["applications"][0]["runtime_env"]["env_vars"] == {
        "KEEP": "1", "HEIMDEX_X": "new", "ENABLE_REAL_EMBEDDINGS": "false"}
    assert config["applications"][1]["runtime_env"]["env_vars"] == env
    assert "runtime_env" not in render_serve_config(config_file, "127.0.0.1", 9000)["applications"][1]
