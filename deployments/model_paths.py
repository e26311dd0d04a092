"""Where a model's files are on this machine, as one value the entry points hand down.

``deployments`` reads no configuration itself: ``serve_app.settings.Settings.model_paths()`` builds this
from the environment (HEIMDEX_MODEL_CACHE, HEIMDEX_ONNX_CACHE, HEIMDEX_MINILM_DIR, ...) and the entry
points (the app, the re-embed job, the CLI) pass it to the registry, the backends and the model packages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ModelPaths:
    """The model cache (split-zip models reassembled, deployments.model_packages), the ONNX cache (exported
    graphs, deployments.backends.onnx_export), and per-model weight directories that override both."""

    model_cache: Path
    onnx_cache: Path
    # model name -> a directory holding its weights (config.json, tokenizer.json, ...); tried first.
    weights: Mapping[str, Path] = field(default_factory=dict, hash=False)

    @classmethod
    def default(cls) -> ModelPaths:
        """The places under the home directory, as Settings gives them when nothing is set."""
        base = Path.home() / ".cache" / "heimdex"
        return cls(model_cache=base / "models", onnx_cache=base / "onnx")
