"""BM25 term weights of a segment's text: the one encoder every writer and every sparse search uses.

Tokenisation, stemming, stopwords and the BM25 term-frequency weight come from ``qdrant_edge.Bm25``
(Qdrant's own implementation; the same code behind Qdrant's server-side BM25), run here in Python on
both backends: the edge shard gets its ``SparseVector``, a Qdrant server gets the same indices and
values through ``qdrant-client``. IDF is NOT in these weights: the collection's sparse vector is
created with Qdrant's IDF modifier, so the engine computes document frequencies at query time from
what is stored (restricted to the searching tenant's points, see the backends), and weights stay
right as tenants write and delete.

Changing :data:`BM25_CONFIG` changes what documents encode to: collections written before the
change must be re-embedded (a new version) for sparse search to score them consistently.
"""

from __future__ import annotations

import threading

import qdrant_edge as qe

from deployments.vector_store.base import SparseTerms

# The name of the sparse vector beside the (unnamed) dense one in every collection.
SPARSE_VECTOR = "bm25"
# k and b are BM25's usual values; avg_len is in tokens after stopword removal: segments are short
# (a sentence or a few), so the document-length normalisation is centred on ~40 tokens, not 256.
BM25_K = 1.2
BM25_B = 0.75
BM25_AVG_LEN = 40.0


_LOCAL = threading.local()


def _model() -> qe.Bm25:
    # One encoder per thread: a Bm25 object is cheap (~µs) to use but not documented as thread-safe.
    model: qe.Bm25 | None = getattr(_LOCAL, "model", None)
    if model is None:
        model = _LOCAL.model = qe.Bm25(qe.Bm25Config(k=BM25_K, b=BM25_B, avg_len=BM25_AVG_LEN))
    return model


def _terms(vector: qe.SparseVector) -> SparseTerms:
    return SparseTerms(tuple(int(i) for i in vector.indices), tuple(float(v) for v in vector.values))


def encode_document(text: str) -> SparseTerms:
    """BM25 term-frequency weights of a stored segment's text (no IDF: the collection applies it)."""
    return _terms(_model().embed_document(text or ""))


def encode_query(text: str) -> SparseTerms:
    """The query's terms, each weighted 1 (IDF applied by the collection); empty for stopwords only."""
    return _terms(_model().embed_query(text or ""))
