"""Request and response bodies of the public API (documented in the OpenAPI schema at /docs)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator
from pydantic_core import PydanticCustomError

# C0 control characters other than tab, LF and CR, and DEL. NUL cannot be stored in a PostgreSQL text
# column, and none of them carries meaning for an embedding model.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_text(text: str) -> str:
    """The one rule for every text the API embeds (``input``, ``text``, ``query``): no control characters."""
    found = CONTROL_CHARACTERS.search(text)
    if found is not None:
        raise PydanticCustomError(
            "control_characters",
            "contains the control character {character} at position {position}; only tab, LF and CR are allowed",
            {"character": f"U+{ord(found.group()):04X}", "position": found.start()})
    return text


# Every text that is embedded: non-empty, no control characters (check_text).
EmbedText = Annotated[StrictStr, Field(min_length=1), AfterValidator(check_text)]
# The length bound sits before check_text so that pydantic reports it as a string length.
SearchQuery = Annotated[StrictStr, Field(min_length=1, max_length=2000), AfterValidator(check_text)]


class EmbeddingsRequest(BaseModel):
    """OpenAI-compatible ``POST /v1/embeddings`` body."""

    model_config = ConfigDict(extra="forbid")

    input: EmbedText | Annotated[list[EmbedText], Field(min_length=1)] = Field(
        ..., description="A string or a non-empty list of non-empty strings; no control characters but tab, LF, CR.")
    model: StrictStr | None = Field(None, description="Registered model name; the default model when omitted.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: JSON numbers; base64: little-endian float32 bytes, base64-encoded.")
    dimensions: int | None = Field(None, description="Must equal the model's dimension when given.")
    user: str | None = Field(None, max_length=256, description="Accepted for compatibility; not stored.")


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: Usage
    truncated_inputs: list[int] = Field(
        default_factory=list,
        description="Indices of inputs cut to the model's max tokens before embedding.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "heimdex"
    version: str
    dimension: int
    max_tokens: int
    normalized: bool
    installed: bool
    served: bool
    backends: list[str]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthStatus(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


# Identifiers a client chooses (asset and segment ids): printable, no control characters.
Identifier = Annotated[StrictStr, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]


class SearchRequest(BaseModel):
    """``POST /vectors/search``: a text ``query`` (embedded by the Embedder) or a precomputed ``vector``."""

    model_config = ConfigDict(extra="forbid")

    query: SearchQuery | None = Field(
        None, description="Text to search for; embedded with the same model and batching as the write path.")
    vector: list[float] | None = Field(None, description="A precomputed query vector of the model's dimension.")
    limit: int = Field(10, ge=1, le=100)
    asset_id: Identifier | None = Field(None, description="Only search this asset's segments.")
    score_threshold: float | None = Field(None, ge=0.0, le=1.0,
                                         description="Minimum cosine similarity (mode dense only).")
    model: StrictStr | None = Field(None, description="Model whose vectors to search; the default when omitted.")
    mode: Literal["dense", "sparse", "hybrid"] | None = Field(
        None, description="dense: cosine over the model's vectors; sparse: BM25 over the segment text (exact "
        "words, names, codes); hybrid: both lists fused by reciprocal rank. Sparse and hybrid need `query`. "
        "Omitted: dense for a `vector` or a `score_threshold`, else the deployment's default "
        "(HEIMDEX_SEARCH_MODE).")


class SearchResult(BaseModel):
    point_id: str
    score: float
    asset_id: str
    segment_id: str
    text_preview: str
    chunk_index: int | None = Field(None, description="A document chunk's position in its document "
                                    "(POST /vectors/documents); null for segments written one by one.")
    char_start: int | None = Field(None, description="Where the chunk starts in its document (characters).")
    char_end: int | None = Field(None, description="Where it ends: document[char_start:char_end] is the chunk.")


def chunk_fields(payload: dict[str, Any]) -> dict[str, int]:
    """A point payload's document-chunk fields (SearchResult's chunk_index, char_start, char_end), where set."""
    return {name: int(payload[name]) for name in ("chunk_index", "char_start", "char_end")
            if isinstance(payload.get(name), int)}


class SearchResponse(BaseModel):
    results: list[SearchResult]
    query: str | None
    limit: int
    mode: Literal["dense", "sparse", "hybrid"] = Field(
        "dense", description="The mode that ranked `results`; `score` is a cosine (dense), a BM25 score (sparse) "
        "or a reciprocal-rank-fusion score (hybrid).")
    model: str = Field(description="The model the request named (or the default): the tenant route searched.")
    embedding_model: str = Field(description="The model that embedded the query: the one the tenant's live "
                                 "collection was built with (differs from `model` after a cross-model migration).")


class DeleteAssetResponse(BaseModel):
    asset_id: str
    deleted: int
    models: list[str]


class TenantRouteView(BaseModel):
    """Where one model's vectors of the tenant live, and whether a migration holds them."""

    live: str = Field(description="The collection search reads and writes land in.")
    live_model: str = Field(description="The model `live` holds vectors of: it embeds this route's queries.")
    state: str = Field(description="steady | migrating (a re-embed fills `pending`) | switched (`previous` kept).")
    pending: str | None = Field(None, description="The collection a running re-embed fills (writes reach it too).")
    previous: str | None = Field(None, description="The collection a rollback returns to (writes reach it too).")
    job_id: str | None = Field(None, description="The re-embed job that set this state.")
    source: str | None = Field(None, description="What that re-embed read.")
    verified_at: str | None = Field(None, description="When that re-embed's counts were verified.")
    live_points: int = Field(description="This tenant's points in `live`.")


class VectorStats(BaseModel):
    org_id: str
    models: dict[str, int] = Field(description="Points of this tenant per model, in its live collection.")
    collections: dict[str, int] = Field(description="Points of this tenant per physical collection.")
    routes: dict[str, TenantRouteView] = Field(
        default_factory=dict, description="Per model: the live collection and any migration state.")
    real_embeddings_enabled: bool = Field(
        description="The live real-embeddings switch: false while `heimdex embeddings off` holds real-model "
        "writes (they stay queued) and the real-model routes answer 503.")


class EmbedRequest(BaseModel):
    """``POST /vectors/embed``: one text segment to embed and store as the caller's tenant."""

    model_config = ConfigDict(extra="forbid")

    asset_id: Identifier
    segment_id: Identifier
    text: EmbedText = Field(description="Text to embed; no control characters but tab, LF and CR.")
    model: StrictStr | None = Field(None, description="Registered model; the default when omitted.")


class EmbedBatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    segments: list[EmbedRequest] = Field(..., min_length=1)


class MockEmbedRequest(BaseModel):
    """``POST /vectors/mock`` (deprecated): a deterministic random vector for (asset, segment)."""

    model_config = ConfigDict(extra="forbid")

    asset_id: Identifier
    segment_id: Identifier
    text: EmbedText | None = Field(
        None, description="Optional text, stored so a later re-embed can replace the mock vector.")


class EmbedJobAccepted(BaseModel):
    job_id: str
    status: str
    created: bool = Field(description="False when an identical request already made this job.")
    asset_id: str
    segment_id: str
    model: str
    model_version: str = Field(description="The version of the tenant's live collection for `model`.")
    embedding_model: str = Field(description="The model that collection holds vectors of (differs from `model` "
                                 "after a cross-model migration); `point_id` is its point there.")
    point_id: str


class EmbedBatchAccepted(BaseModel):
    jobs: list[EmbedJobAccepted]


class JobEventView(BaseModel):
    prev_status: str | None
    next_status: str
    stage: str | None
    message: str | None
    created_at: str


class JobView(BaseModel):
    id: str
    type: str
    status: str
    stage: str | None
    progress: int
    attempts: int
    result: dict[str, object] | None
    error: str | None
    requested_by: str | None
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    events: list[JobEventView] | None = None


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None


class JobCounts(BaseModel):
    counts: dict[str, int] = Field(description="This tenant's jobs per status, every status listed.")
    total: int


VersionName = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


class ReembedRequest(BaseModel):
    """``POST /jobs/reembed`` (admin scope): re-embed this tenant's segments as a Ray Job."""

    model_config = ConfigDict(extra="forbid")

    source: Annotated[StrictStr, Field(
        min_length=1, max_length=1024, pattern=r"^(collection:[A-Za-z0-9._-]+(@[A-Za-z0-9._-]+)?|(jsonl|parquet):\S+)$",
        description="collection:<model>[@<version>] (e.g. collection:mock), jsonl:<path> or parquet:<path>")]
    model: StrictStr = Field(description="Registered model to embed with.")
    to_version: VersionName | None = Field(None, description="Target collection version; the registry's when omitted.")
    dry_run: bool = Field(False, description="Report what would happen; write nothing.")
    switch: bool = Field(True, description="Switch this tenant to the target once verified (false: verify only).")


class DocumentRequest(BaseModel):
    """``POST /vectors/documents``: a whole text for an asset, cut into chunks the model takes whole."""

    model_config = ConfigDict(extra="forbid")

    asset_id: Identifier
    text: EmbedText = Field(description="The document; at most max_document_bytes (1 MiB) of UTF-8; no control "
                            "characters but tab, LF and CR.")
    model: StrictStr | None = Field(None, description="Registered model; the default when omitted. Its own "
                                    "tokenizer cuts the chunks.")
    chunk_tokens: int | None = Field(None, ge=32, description="Most tokens per chunk; the model's max sequence "
                                     "length minus its special tokens (MiniLM: 254) when omitted, never more.")
    overlap_tokens: int | None = Field(None, ge=0, description="Tokens consecutive chunks share (about: cuts fall "
                                       "between words); at most half of chunk_tokens; 32 when omitted.")


class DocumentChunkAccepted(BaseModel):
    chunk_index: int
    char_start: int
    char_end: int = Field(description="document[char_start:char_end] is the chunk's text.")
    segment_id: str = Field(description="doc:<doc_version>:<chunk_index>")
    job_id: str
    status: str
    created: bool
    point_id: str = Field(description="The chunk's point in the tenant's live collection.")


class DocumentAccepted(BaseModel):
    asset_id: str
    doc_version: str = Field(description="<generation>.<content hash>: grows on every change of the document.")
    created: bool = Field(description="False when this exact document (text, model, chunking) is already the "
                          "current one: nothing new was created.")
    replaced_version: str | None = Field(None, description="The version this one replaces; its chunks are "
                                         "deleted by cleanup_job_id (and any still in flight delete themselves).")
    cleanup_job_id: str | None = None
    model: str
    model_version: str
    embedding_model: str
    chunk_tokens: int
    overlap_tokens: int
    chunks: list[DocumentChunkAccepted]


class TeiEmbedRequest(BaseModel):
    """Hugging Face text-embeddings-inference's ``POST /embed`` body. Unknown keys are ignored, as TEI does;
    the ``parameters`` object of the Hugging Face Inference API form (huggingface_hub's InferenceClient) is
    read too."""

    model_config = ConfigDict(extra="ignore")

    inputs: EmbedText | Annotated[list[EmbedText], Field(min_length=1)] = Field(
        ..., description="A string or a non-empty list of strings (token-id inputs are not supported).")
    normalize: StrictBool = Field(True, description="false: the raw mean-pooled vectors.")
    truncate: StrictBool | None = Field(None, description="false/null: an input longer than max_input_length "
                                        "is refused (413); true: it is cut to it.")
    truncation_direction: Literal["Right", "Left", "right", "left"] = Field(
        "Right", description="Which end truncate=true cuts.")
    prompt_name: StrictStr | None = Field(None, description="A key of the model's sentence-transformers prompts.")
    model: StrictStr | None = Field(None, description="Heimdex extension: a registered model; the default when "
                                    "omitted.")

    @model_validator(mode="before")
    @classmethod
    def _lift_parameters(cls, data: Any) -> Any:
        return lift_parameters(data, ("normalize", "truncate", "truncation_direction", "prompt_name"))


class TeiTokenizeRequest(BaseModel):
    """TEI's ``POST /tokenize`` body."""

    model_config = ConfigDict(extra="ignore")

    inputs: EmbedText | Annotated[list[EmbedText], Field(min_length=1)]
    add_special_tokens: StrictBool = True
    prompt_name: StrictStr | None = None
    model: StrictStr | None = Field(None, description="Heimdex extension: a registered model.")

    @model_validator(mode="before")
    @classmethod
    def _lift_parameters(cls, data: Any) -> Any:
        return lift_parameters(data, ("add_special_tokens", "prompt_name"))


def lift_parameters(data: Any, names: tuple[str, ...]) -> Any:
    """The Inference API form ``{"inputs", "parameters": {...}}`` as TEI's flat form (top-level keys win)."""
    if isinstance(data, dict) and isinstance(data.get("parameters"), dict):
        lifted = {k: v for k, v in data["parameters"].items() if k in names and v is not None}
        return {**lifted, **{k: v for k, v in data.items() if k != "parameters"}}
    return data


class TeiToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None = Field(description="Character offset in the input; null for special tokens.")
    stop: int | None


class TeiEmbeddingModel(BaseModel):
    pooling: str


class TeiModelType(BaseModel):
    embedding: TeiEmbeddingModel


class TeiInfo(BaseModel):
    """TEI's ``GET /info``."""

    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: TeiModelType
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None = None
    docker_label: str | None = None
