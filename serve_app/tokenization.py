"""The packaged model's own tokenizer in the Gateway process: document chunking, ``/tokenize``, TEI's
left truncation. The same ``tokenizer.json`` the backends load (deployments/backends/base.py), so token
counts and offsets here are the model's.

Loaded lazily, once per model and process, on first use (never at import); its calls are CPU work, so the
routes run them on a worker thread (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployments.model_paths import ModelPaths
from deployments.registry import ModelSpec


@dataclass(frozen=True)
class ModelTokenizer:
    """One model's tokenizer (no padding, no truncation) and what TEI's /info says about the model."""

    spec: ModelSpec
    tokenizer: Any  # tokenizers.Tokenizer
    special_tokens: int  # tokens the model's template adds around one text ([CLS] ... [SEP]: 2)
    pooling: str = "mean"
    prompts: dict[str, str] = field(default_factory=dict)

    @property
    def window(self) -> int:
        """Most tokens of text one model input holds: the max sequence length minus the special tokens."""
        return self.spec.max_tokens - self.special_tokens

    def encode(self, texts: list[str], add_special_tokens: bool = False) -> list[Any]:
        """One ``tokenizers.Encoding`` per text (ids, offsets as character positions, special-token mask)."""
        return list(self.tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens))

    def prompt(self, name: str | None) -> str:
        """The text ``prompt_name`` prepends (sentence-transformers' ``prompts``); KeyError when unknown."""
        return "" if name is None else self.prompts[name]


_LOADED: dict[tuple[str, ModelPaths], ModelTokenizer] = {}
_LOCK = threading.Lock()


def model_tokenizer(spec: ModelSpec, paths: ModelPaths) -> ModelTokenizer:
    """The tokenizer of ``spec``'s installed weights (found through ``paths``), loaded on first use and then
    shared (thread-safe)."""
    key = (spec.name, paths)
    with _LOCK:
        found = _LOADED.get(key)
        if found is None:
            found = _LOADED[key] = _load(spec, paths)
        return found


def _load(spec: ModelSpec, paths: ModelPaths) -> ModelTokenizer:
    from tokenizers import Tokenizer

    weights = spec.weights_dir(paths)
    tokenizer = Tokenizer.from_file(str(weights / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    special = len(tokenizer.encode("", add_special_tokens=True).ids)
    prompts = _json(weights / "config_sentence_transformers.json").get("prompts") or {}
    return ModelTokenizer(spec, tokenizer, special, _pooling(weights), {str(k): str(v) for k, v in prompts.items()})


def _json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _pooling(weights: Path) -> str:
    """TEI's name for the model's pooling (1_Pooling/config.json); mean when it says nothing."""
    config = _json(weights / "1_Pooling" / "config.json")
    for key, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_lasttoken", "last_token"),
                      ("pooling_mode_mean_tokens", "mean")):
        if config.get(key):
            return name
    return "mean"
