"""Where model files are: Settings reads the variables users set (the names deployments/ read before), and
hands deployments/ a ModelPaths value; the registry, the ONNX cache and the model packages use only that."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments import model_packages
from deployments.backends.onnx_export import cache_path
from deployments.model_paths import ModelPaths
from deployments.registry import MODELS, ModelNotInstalledError, get_model
from serve_app.settings import Settings

NAMES = ("HEIMDEX_MODEL_CACHE", "HEIMDEX_ONNX_CACHE", "XDG_CACHE_HOME", "HEIMDEX_MINILM_DIR", "HEIMDEX_MPNET_DIR")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """None of the variables set, the home directory a temporary one."""
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield monkeypatch


def paths() -> ModelPaths:
    return Settings(_env_file=None).model_paths()  # type: ignore[call-arg]


def test_nothing_set_gives_the_caches_under_the_home_directory(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = tmp_path / "home" / ".cache" / "heimdex"
    assert paths() == ModelPaths.default() == ModelPaths(cache / "models", cache / "onnx", {})


def test_xdg_cache_home_moves_the_model_cache_only(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    found = paths()
    assert found.model_cache == tmp_path / "xdg" / "heimdex" / "models"
    assert found.onnx_cache == tmp_path / "home" / ".cache" / "heimdex" / "onnx", "as before: ~/.cache, not XDG"


def test_the_heimdex_variables_win(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    env.setenv("HEIMDEX_MODEL_CACHE", str(tmp_path / "models"))
    env.setenv("HEIMDEX_ONNX_CACHE", str(tmp_path / "onnx"))
    env.setenv("HEIMDEX_MINILM_DIR", str(tmp_path / "minilm"))
    env.setenv("HEIMDEX_MPNET_DIR", str(tmp_path / "mpnet"))
    assert paths() == ModelPaths(tmp_path / "models", tmp_path / "onnx",
                                 {"minilm-l6-v2": tmp_path / "minilm", "all-mpnet-base-v2": tmp_path / "mpnet"})
    assert set(paths().weights) <= set(MODELS), "the overrides name registered models"


def test_an_empty_variable_is_unset_and_a_relative_one_is_made_absolute(
        env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("HEIMDEX_MODEL_CACHE", "")
    env.setenv("XDG_CACHE_HOME", "")
    env.setenv("HEIMDEX_MINILM_DIR", "")
    env.chdir(tmp_path)
    env.setenv("HEIMDEX_ONNX_CACHE", "rel/onnx")
    found = paths()
    assert found.model_cache == ModelPaths.default().model_cache and found.weights == {}
    assert found.onnx_cache == tmp_path / "rel" / "onnx"


def test_the_registry_and_the_caches_use_the_paths_they_are_given(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    minilm, mpnet = get_model("minilm-l6-v2"), get_model("all-mpnet-base-v2")
    weights = tmp_path / "weights"
    weights.mkdir()
    given = ModelPaths(tmp_path / "models", tmp_path / "onnx", {"all-mpnet-base-v2": weights})
    assert not mpnet.is_installed(given), "an override without config.json is no model"
    (weights / "config.json").write_text("{}")
    assert mpnet.weights_dir(given) == weights and mpnet.is_installed(given)
    with pytest.raises(ModelNotInstalledError):
        mpnet.weights_dir(ModelPaths(tmp_path / "models", tmp_path / "onnx"))
    assert cache_path(minilm, "fp32", given) == tmp_path / "onnx" / "minilm-l6-v2-v1" / "model.fp32.onnx"
    packaged = model_packages.PACKAGED["all-mpnet-base-v2"]
    assert model_packages.model_dir(packaged, given) == tmp_path / "models" / "all-mpnet-base-v2"


def test_model_paths_travel_to_ray_and_key_a_cache() -> None:
    """Pickled into Serve replicas and Ray Data actors; a key of the Gateway's tokenizer cache."""
    given = ModelPaths(Path("/m"), Path("/o"), {"minilm-l6-v2": Path("/w")})
    assert pickle.loads(pickle.dumps(given)) == given
    assert {given: 1}[ModelPaths(Path("/m"), Path("/o"), {"minilm-l6-v2": Path("/w")})] == 1


def test_heimdex_models_status_and_path_use_the_settings(env: pytest.MonkeyPatch, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from serve_app.cli import main
    from serve_app.settings import get_settings

    env.setenv("HEIMDEX_MODEL_CACHE", str(tmp_path / "models"))
    get_settings.cache_clear()
    try:
        assert main(["models", "status"]) == 0
        out = capsys.readouterr().out
        assert f"model cache: {tmp_path / 'models'}" in out and "all-mpnet-base-v2\tnot installed" in out
        assert main(["models", "path", "all-mpnet-base-v2"]) == 1
        assert main(["models", "path", "no-such-model"]) == 2
    finally:
        get_settings.cache_clear()


def test_python_m_model_packages_names_its_cache() -> None:
    with pytest.raises(SystemExit):
        model_packages.main(["path", "all-mpnet-base-v2"])  # no --cache: refused, not a guess


def test_heimdex_up_hands_xdg_cache_home_to_the_replicas() -> None:
    """build_app and the Gateway must agree on where the model cache is, whatever the Ray head was started with."""
    from cluster.local import heimdex_env

    assert heimdex_env({"XDG_CACHE_HOME": "/c", "HEIMDEX_ONNX_CACHE": "/o", "HOME": "/h"}) == {
        "XDG_CACHE_HOME": "/c", "HEIMDEX_ONNX_CACHE": "/o"}
