"""TEI-compatible routes in-process (no Ray): shapes, normalize=false, truncation, prompts, TEI error bodies.

FakeHashBackend stands in for the model behind LocalEmbedderClient; /tokenize and the truncation checks
use the packaged model's real tokenizer (serve_app/tokenization.py), as the Gateway does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deployments.model_paths import ModelPaths
from deployments.registry import get_model
from serve_app.tokenization import model_tokenizer
from tests.unit.test_api_inprocess import bearer, make_client

MODEL = "minilm-l6-v2"


async def test_embed_answers_a_json_array_of_vectors_equal_to_v1_embeddings(tmp_path: Path) -> None:
    async with make_client(tmp_path) as client:
        tei = await client.post("/embed", json={"inputs": ["a quick fox", "lazy dog"]}, headers=bearer())
        openai = await client.post("/v1/embeddings", json={"input": ["a quick fox", "lazy dog"]}, headers=bearer())
        single = await client.post("/embed", json={"inputs": "a quick fox"}, headers=bearer())
    assert tei.status_code == 200, tei.text
    vectors = tei.json()
    assert isinstance(vectors, list) and len(vectors) == 2 and len(vectors[0]) == 384
    assert np.allclose(vectors, [d["embedding"] for d in openai.json()["data"]])
    assert np.allclose(single.json(), vectors[:1])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


async def test_normalize_false_gives_the_raw_pooled_vectors(tmp_path: Path) -> None:
    async with make_client(tmp_path) as client:
        raw = await client.post("/embed", json={"inputs": ["a quick fox"], "normalize": False}, headers=bearer())
        unit = await client.post("/embed", json={"inputs": ["a quick fox"]}, headers=bearer())
    assert raw.status_code == 200, raw.text
    raw_vector, unit_vector = np.asarray(raw.json()[0]), np.asarray(unit.json()[0])
    norm = np.linalg.norm(raw_vector)
    assert abs(norm - 1.0) > 0.1, "FakeHashBackend's pooled vectors are standard normal: far from unit length"
    assert np.allclose(raw_vector / norm, unit_vector, atol=1e-5)


async def test_truncate_off_refuses_a_long_input_with_tei_413_naming_it(tmp_path: Path) -> None:
    long_text = "word " * 600
    async with make_client(tmp_path) as client:
        refused = await client.post("/embed", json={"inputs": ["short", long_text]}, headers=bearer())
        cut = await client.post("/embed", json={"inputs": ["short", long_text], "truncate": True}, headers=bearer())
        left = await client.post("/embed", json={"inputs": [long_text + "tail"], "truncate": True,
                                                 "truncation_direction": "Left"}, headers=bearer())
    assert refused.status_code == 413
    body = refused.json()
    assert body["error_type"] == "Validation" and body["field"] == "inputs.1" and body["code"] == "input_too_long"
    assert "must have less than 256 tokens. Given: 602" in body["error"]
    assert cut.status_code == 200 and len(cut.json()) == 2
    assert left.status_code == 200, left.text


def test_left_truncation_keeps_the_tail_within_the_window() -> None:
    from serve_app.routes.tei_compat import _keep_tail

    tokenizer = model_tokenizer(get_model(MODEL), ModelPaths.default())
    text = " ".join(f"w{i}" for i in range(400))
    (tail,) = _keep_tail(tokenizer, [text])
    assert text.endswith(tail) and tail.startswith("w")
    assert len(tokenizer.encode([tail])[0].ids) <= tokenizer.window


async def test_tokenize_has_tei_shape_and_offsets_slice_the_input(tmp_path: Path) -> None:
    text = "Héllo, wörld: tokenizers!"
    async with make_client(tmp_path) as client:
        with_special = await client.post("/tokenize", json={"inputs": text}, headers=bearer())
        plain = await client.post("/tokenize", json={"inputs": [text, "b"], "add_special_tokens": False},
                                  headers=bearer())
    assert with_special.status_code == 200, with_special.text
    (tokens,) = with_special.json()
    assert tokens[0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert tokens[-1]["text"] == "[SEP]" and tokens[-1]["special"]
    for token in tokens[1:-1]:
        assert set(token) == {"id", "text", "special", "start", "stop"} and not token["special"]
        assert token["text"] == text[token["start"]:token["stop"]]
    assert [t["id"] for t in plain.json()[0]] == [t["id"] for t in tokens[1:-1]]
    assert len(plain.json()) == 2


async def test_info_has_tei_shape(tmp_path: Path) -> None:
    async with make_client(tmp_path) as client:
        response = await client.get("/info", headers=bearer())
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["model_id"] == MODEL and info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 256 and info["max_client_batch_size"] == 2048
    for key in ("model_sha", "model_dtype", "max_concurrent_requests", "max_batch_tokens", "tokenization_workers",
                "version", "auto_truncate", "max_batch_requests"):
        assert key in info


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    ({"inputs": []}, 422, "too_short", "inputs"),
    ({"inputs": ["ok", " "]}, 422, "empty_text", "inputs.1"),
    ({"inputs": "x", "normalize": "yes"}, 422, "bool_type", "normalize"),
    ({"inputs": "x", "truncation_direction": "Up"}, 422, "literal_error", "truncation_direction"),
    ({"inputs": "x", "prompt_name": "query"}, 422, "unknown_prompt_name", "prompt_name"),
    ({"inputs": "x", "model": "nope"}, 404, "model_not_found", "model"),
    ({"normalize": True}, 422, "missing", "inputs"),
])
async def test_bad_inputs_answer_tei_errors_naming_the_field(tmp_path: Path, body: dict[str, object], status: int,
                                                             code: str, field: str) -> None:
    async with make_client(tmp_path) as client:
        response = await client.post("/embed", json=body, headers=bearer())
    assert response.status_code == status, response.text
    error = response.json()
    assert isinstance(error["error"], str) and error["error_type"] == "Validation"
    assert (error["code"], error["field"]) == (code, field)


async def test_inference_api_parameters_form_is_read_and_unknown_keys_ignored(tmp_path: Path) -> None:
    async with make_client(tmp_path) as client:
        flat = await client.post("/embed", json={"inputs": "fox", "normalize": False}, headers=bearer())
        nested = await client.post("/embed", json={"inputs": "fox", "parameters": {"normalize": False},
                                                   "unknown": 1}, headers=bearer())
    assert nested.status_code == 200, nested.text
    assert np.allclose(flat.json(), nested.json())


async def test_tei_routes_need_a_token_where_v1_embeddings_does(tmp_path: Path) -> None:
    async with make_client(tmp_path, env="production") as client:
        for method, path, body in (("POST", "/embed", {"inputs": "x"}), ("POST", "/tokenize", {"inputs": "x"}),
                                   ("GET", "/info", None)):
            response = await client.request(method, path, json=body)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["error_type"] == "Unauthorized" and response.json()["field"] == "Authorization"
