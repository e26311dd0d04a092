"""The optimised CPU backends: the model exported to ONNX, run by ONNX Runtime.

``onnx-fp32`` runs the exported fp32 graph: the same vectors as the torch backend (cosine 1.0 to
rounding) from a leaner runtime. ``onnx-int8`` runs the graph with int8 weights on most MatMuls:
faster again, at a small, measured cost in cosine (tests/integration/test_onnx_backend.py).

Tokenisation is the same Rust tokenizer with the same truncation as :class:`TorchBackend`, and the
shared chunking and normalisation in ``base.py`` are untouched, so only the forward pass differs.
The graph is exported (and cached) by :mod:`deployments.backends.onnx_export` on first use when it
is not already on disk; ``heimdex models export`` does it at set-up time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from deployments.backends.base import EmbeddingBackend, FastTokenizer, FloatArray, IntArray, Tokenized
from deployments.backends.onnx_export import Precision
from deployments.model_paths import ModelPaths
from deployments.registry import ModelSpec


class OnnxBackend(EmbeddingBackend):
    name = "onnx-int8"

    def __init__(self, spec: ModelSpec, paths: ModelPaths, threads: int | None = None, model_path: Path | None = None,
                 precision: Precision = "int8", spin: bool = False) -> None:
        super().__init__(spec)
        import onnxruntime as ort

        from deployments.backends.onnx_export import export_onnx

        self.name = f"onnx-{precision}"
        weights = spec.weights_dir(paths)
        self.model_path = model_path if model_path is not None else export_onnx(spec, precision, paths)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0)) or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # ORT's pool threads busy-wait for work between and after runs by default. In an Embedder replica
        # that spinning takes the cores the event loop, the Gateway and the next batch need: 32 clients x
        # one short text measured 218 texts/s spinning and 319 without; one client's p50 10.6 vs 9.0 ms.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self._session: Any = ort.InferenceSession(
            str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input_names = {i.name for i in self._session.get_inputs()}
        self._tokenizer = FastTokenizer(weights, spec.max_tokens)

    def tokenize(self, texts: list[str]) -> Tokenized:
        return self._tokenizer(texts)

    def forward(self, input_ids: IntArray, attention_mask: IntArray) -> FloatArray:
        feeds: dict[str, IntArray] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        (pooled,) = self._session.run(["sentence_embedding"], feeds)
        return np.asarray(pooled, dtype=np.float32)
