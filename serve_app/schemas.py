"""Request and response bodies of the public API (documented in the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

NonEmptyText = Annotated[StrictStr, Field(min_length=1)]


class EmbeddingsRequest(BaseModel):
    """OpenAI-compatible ``POST /v1/embeddings`` body."""

    model_config = ConfigDict(extra="forbid")

    input: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1)] = Field(
        ..., description="A string or a non-empty list of non-empty strings.")
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

    query: Annotated[StrictStr, Field(min_length=1, max_length=2000)] | None = Field(
        None, description="Text to search for; embedded with the same model and batching as the write path.")
    vector: list[float] | None = Field(None, description="A precomputed query vector of the model's dimension.")
    limit: int = Field(10, ge=1, le=100)
    asset_id: Identifier | None = Field(None, description="Only search this asset's segments.")
    score_threshold: float | None = Field(None, ge=0.0, le=1.0, description="Minimum cosine similarity.")
    model: StrictStr | None = Field(None, description="Model whose vectors to search; the default when omitted.")


class SearchResult(BaseModel):
    point_id: str
    score: float
    asset_id: str
    segment_id: str
    text_preview: str


class SearchResponse(BaseModel):
    results: list[SearchResult]
    query: str | None
    limit: int
    model: str


class DeleteAssetResponse(BaseModel):
    asset_id: str
    deleted: int
    models: list[str]


class VectorStats(BaseModel):
    org_id: str
    models: dict[str, int] = Field(description="Points of this tenant per model (through the model's alias).")
    collections: dict[str, int] = Field(description="Points of this tenant per physical collection.")
