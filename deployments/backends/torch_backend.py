"""The reference backend: the packaged sentence-transformers model on PyTorch (CPU fp32, CUDA fp16)."""

from __future__ import annotations

import os

import numpy as np

from deployments.backends.base import EmbeddingBackend, FastTokenizer, FloatArray, IntArray, Tokenized
from deployments.model_paths import ModelPaths
from deployments.registry import ModelSpec


class TorchBackend(EmbeddingBackend):
    name = "torch"

    def __init__(self, spec: ModelSpec, paths: ModelPaths, device: str = "auto", threads: int | None = None) -> None:
        super().__init__(spec)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        # Ray sets OMP_NUM_THREADS to the actor's num_cpus (1 for the Embedder), which would leave
        # torch on one core; default to every core this process may run on.
        torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        weights = spec.weights_dir(paths)
        self._torch = torch
        self._model = SentenceTransformer(str(weights), device=device)
        self._model.max_seq_length = spec.max_tokens
        if device.startswith("cuda"):
            self._model.half()
        self._model.eval()
        # The model's modules minus its Normalize: forward returns the raw pooled vector (as the ONNX graphs do);
        # base.embed records its norm, then normalises.
        self._modules = [m for m in self._model if type(m).__name__ != "Normalize"]
        self._tokenizer = FastTokenizer(weights, spec.max_tokens)

    def tokenize(self, texts: list[str]) -> Tokenized:
        return self._tokenizer(texts)

    def forward(self, input_ids: IntArray, attention_mask: IntArray) -> FloatArray:
        torch = self._torch
        ids = torch.from_numpy(input_ids).to(self.device)
        mask = torch.from_numpy(attention_mask).to(self.device)
        features = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        with torch.inference_mode():
            for module in self._modules:
                features = module(features)
        return np.asarray(features["sentence_embedding"].float().cpu().numpy(), dtype=np.float32)
