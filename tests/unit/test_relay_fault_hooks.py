"""The relay's fault-injection hook exists for the fault suite and is refused in production."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.relay import RelayCore
from serve_app.settings import Settings

SECRET = "unit-test-secret-0123456789abcdef0123456789"


def relay(tmp_path: Path, env: str) -> RelayCore:
    settings = Settings(data_dir=tmp_path, jwt_secret=SECRET, env=env)  # type: ignore[arg-type]
    return RelayCore(settings, embedders=None, store=None)  # type: ignore[arg-type]


def test_arm_crash_refused_in_production(tmp_path: Path) -> None:
    core = relay(tmp_path, "production")
    with pytest.raises(RuntimeError, match="disabled in production"):
        core.arm_crash("after_claim")
    assert core.crash_at is None


def test_arm_crash_outside_production_takes_known_points_only(tmp_path: Path) -> None:
    core = relay(tmp_path, "development")
    core.arm_crash("after_upsert")
    assert core.crash_at == "after_upsert"
    with pytest.raises(ValueError, match="unknown crash point"):
        core.arm_crash("before_breakfast")
