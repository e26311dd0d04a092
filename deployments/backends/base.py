"""The contract every embedding backend implements, and the shared pre/post-processing.

A backend turns texts into L2-normalised float32 vectors. The steps around the model itself —
tokenising with truncation to the model's token limit, sorting by length so short texts are not
padded to long ones, chunking by a padded-token budget, restoring input order, normalising — live
here once, so the online path (Embedder replicas) and the bulk path (Ray Data) produce identical
vectors whatever backend runs the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from deployments.registry import ModelSpec

# Padded tokens per forward pass: large enough to amortise per-call overhead, small enough that
# one long batch does not hold the model thread (and the batch queue behind it) for long.
DEFAULT_TOKEN_BUDGET = 8192
# Most texts in one forward pass, whatever their length.
DEFAULT_MAX_TEXTS_PER_FORWARD = 128

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class EmbedOutput:
    """Vectors in input order, with what the model actually saw of each text."""

    vectors: FloatArray  # shape (n, dimension), float32, L2-normalised when the model asks for it
    token_counts: list[int]  # tokens fed to the model per text, special tokens included
    truncated: list[bool]  # True where the text was cut to the model's max tokens
    # L2 norm of each pooled vector before normalisation: ``vectors * norms[:, None]`` is the raw mean-pooled
    # vector (TEI's ``normalize=false``). None from producers that do not know it.
    norms: FloatArray | None = None

    def rows(self, start: int, end: int) -> EmbedOutput:
        """The outputs of texts ``start..end`` (one caller's slice of a merged pass)."""
        return EmbedOutput(self.vectors[start:end], self.token_counts[start:end], self.truncated[start:end],
                           None if self.norms is None else self.norms[start:end])

    @staticmethod
    def concat(parts: list[EmbedOutput]) -> EmbedOutput:
        """Several outputs as one, in order (norms only when every part has them)."""
        if len(parts) == 1:
            return parts[0]
        norms = [p.norms for p in parts if p.norms is not None]
        return EmbedOutput(
            vectors=np.concatenate([p.vectors for p in parts]),
            token_counts=[c for p in parts for c in p.token_counts],
            truncated=[t for p in parts for t in p.truncated],
            norms=np.concatenate(norms) if len(norms) == len(parts) else None,
        )


@dataclass(frozen=True)
class Tokenized:
    ids: list[list[int]]
    truncated: list[bool]


class EmbeddingBackend(ABC):
    """Pre (tokenise) → core (model forward) → post (pool already done, normalise).

    ``forward`` returns the raw mean-pooled vectors (no normalisation inside the model): ``embed`` records
    their norms before normalising, so callers can recover the un-normalised vectors."""

    name: str = "abstract"

    def __init__(
        self,
        spec: ModelSpec,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        max_texts_per_forward: int = DEFAULT_MAX_TEXTS_PER_FORWARD,
    ) -> None:
        self.spec = spec
        self.token_budget = token_budget
        self.max_texts_per_forward = max_texts_per_forward

    @property
    def dimension(self) -> int:
        return self.spec.dimension

    @abstractmethod
    def tokenize(self, texts: list[str]) -> Tokenized:
        """Token ids per text, truncated to ``spec.max_tokens`` (special tokens included)."""

    @abstractmethod
    def forward(self, input_ids: IntArray, attention_mask: IntArray) -> FloatArray:
        """Pooled, NOT normalised sentence embeddings for one padded chunk, shape (rows, dimension)."""

    def warmup(self) -> None:
        """Run one tiny batch so the first real request does not pay for lazy initialisation."""
        self.embed(["warm up the model"])

    def embed(self, texts: list[str]) -> EmbedOutput:
        if not texts:
            return EmbedOutput(np.zeros((0, self.dimension), dtype=np.float32), [], [],
                               np.zeros((0,), dtype=np.float32))
        tokenized = self.tokenize(texts)
        lengths = np.fromiter((len(ids) for ids in tokenized.ids), dtype=np.int64, count=len(texts))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for chunk in self._chunks(order, lengths):
            width = int(lengths[chunk].max())
            input_ids = np.zeros((len(chunk), width), dtype=np.int64)
            attention_mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, index in enumerate(chunk):
                ids = tokenized.ids[index]
                input_ids[row, : len(ids)] = ids
                attention_mask[row, : len(ids)] = 1
            out[chunk] = self.forward(input_ids, attention_mask)
        norms = np.linalg.norm(out, axis=1).astype(np.float32)
        if self.spec.normalize:
            out = l2_normalize(out)
        return EmbedOutput(out, lengths.tolist(), tokenized.truncated, norms)

    def _chunks(self, order: IntArray, lengths: IntArray) -> list[IntArray]:
        """Split length-sorted indices into chunks whose padded size fits the token budget."""
        chunks: list[IntArray] = []
        start = 0
        n = len(order)
        while start < n:
            end = start + 1
            # Sorted ascending, so the padded width of [start, end) is the length at end - 1.
            while (
                end < n
                and end - start < self.max_texts_per_forward
                and int(lengths[order[end]]) * (end + 1 - start) <= self.token_budget
            ):
                end += 1
            chunks.append(order[start:end])
            start = end
        return chunks


def l2_normalize(vectors: FloatArray) -> FloatArray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return (vectors / norms).astype(np.float32, copy=False)


class FastTokenizer:
    """The model's Rust tokenizer with truncation to the model's limit and no padding."""

    def __init__(self, weights_dir: Path, max_tokens: int) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(weights_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_tokens)

    def __call__(self, texts: list[str]) -> Tokenized:
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=True)
        return Tokenized(
            ids=[e.ids for e in encodings],
            truncated=[bool(e.overflowing) for e in encodings],
        )
