"""FakeHashBackend: a deterministic stand-in for unit tests. Never used by the service itself.

Vectors are derived from a hash of the text, so equal texts give equal vectors and the pre/post
processing (truncation flags, ordering, normalisation) can be tested without loading a model.
"""

from __future__ import annotations

import hashlib

import numpy as np

from deployments.backends.base import EmbeddingBackend, FloatArray, IntArray, Tokenized
from deployments.registry import ModelSpec


class FakeHashBackend(EmbeddingBackend):
    name = "fake-hash"

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.forward_calls: list[int] = []

    def tokenize(self, texts: list[str]) -> Tokenized:
        ids: list[list[int]] = []
        truncated: list[bool] = []
        for text in texts:
            words = [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "little") % 30000 + 1
                     for w in text.split()]
            body_limit = self.spec.max_tokens - 2
            truncated.append(len(words) > body_limit)
            ids.append([101, *words[:body_limit], 102])
        return Tokenized(ids=ids, truncated=truncated)

    def forward(self, input_ids: IntArray, attention_mask: IntArray) -> FloatArray:
        self.forward_calls.append(len(input_ids))
        out = np.empty((len(input_ids), self.dimension), dtype=np.float32)
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask, strict=True)):
            seed = int.from_bytes(hashlib.blake2b(ids[mask == 1].tobytes(), digest_size=8).digest(), "little")
            out[row] = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
        return out
