"""Two real models served at once, and one tenant migrated minilm -> mpnet and back, on the session's real cluster.

The session app is redeployed from serve_config.two-models.yaml (both Embedders at 0.5 CPU, so it places on the
machine's 2 CPUs next to the Gateway, the relay and the re-embed job) and restored afterwards. Then, as users do:
mpnet through /v1/embeddings (the same vectors as sentence-transformers' ``encode``) and the write path; a
re-embed `--source collection:minilm-l6-v2 --model all-mpnet-base-v2 --org T` while T keeps writing; T's
searches embedded by mpnet after the switch; a rollback to minilm at once with every write since; and another
tenant that never sees a change. Skipped only when the model is not installed (`make models`; CI installs it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from bench.texts import short_texts
from cluster.local import render_serve_config
from deployments.registry import get_model
from deployments.vector_store import collection_name
from serve_app.settings import Settings
from tests.conftest import ROOT, ServeApp
from tests.serve.helpers import (
    JOB_TIMEOUT_S,
    Segment,
    api_vectors,
    finished,
    heimdex,
    stats,
    submit,
    until,
    write,
)
from tests.serve.helpers import found as found_by

MINILM, MPNET = "minilm-l6-v2", "all-mpnet-base-v2"
PATHS = Settings().model_paths()  # where the app finds the weights: the same environment
MINI_V1, MPNET_V1 = collection_name(MINILM, "v1"), collection_name(MPNET, "v1")
DEPLOY_TIMEOUT_S = 600.0

pytestmark = [
    pytest.mark.serve,
    pytest.mark.skipif(not get_model(MPNET).is_installed(PATHS), reason=f"{MPNET} not installed (make models)"),
]


def _app_running() -> bool:
    from ray import serve

    app = serve.status().applications.get("heimdex")
    return app is not None and str(app.status).endswith("RUNNING")


def deploy(serve_app: ServeApp, config: dict[str, Any], served: set[str]) -> None:
    """Redeploy and wait (with a deadline) until the app runs, serves exactly ``served`` and is ready."""
    serve_app.redeploy(config)

    def ready() -> bool:
        try:
            models = httpx.get(f"{serve_app.url}/v1/models", timeout=10).json()["data"]
            ok = httpx.get(f"{serve_app.url}/readyz", timeout=30).status_code == 200
        except (httpx.HTTPError, ValueError, KeyError):
            return False
        return ok and {m["id"] for m in models if m["served"]} == served and _app_running()

    until(ready, DEPLOY_TIMEOUT_S, f"the app serving {sorted(served)}")


@pytest.fixture(scope="module")
def two_models(serve_app: ServeApp) -> Iterator[ServeApp]:
    original = serve_app.config
    port = int(serve_app.url.rsplit(":", 1)[1])
    config = render_serve_config(ROOT / "serve_config.two-models.yaml", "127.0.0.1", port)
    try:
        deploy(serve_app, config, {MINILM, MPNET})
        yield serve_app
    finally:
        deploy(serve_app, original, {MINILM})


def found(url: str, org: str, segments: list[Segment], embedded_by: str, model: str = MINILM) -> int:
    return found_by(url, org, segments, model=model, embedded_by=embedded_by)


def test_a_cross_model_migration_is_refused_while_the_app_serves_one_model(serve_app: ServeApp) -> None:
    """The job's own check, against the session app as shipped (minilm only): writes during and after a
    minilm -> mpnet migration need both models, so it refuses to begin, naming the config that serves both."""
    from jobs.migration import MigrationPlanError
    from jobs.reembed import check_served

    models = httpx.get(f"{serve_app.url}/v1/models", timeout=30).json()["data"]
    assert {m["id"] for m in models if m["served"]} == {MINILM}
    with pytest.raises(MigrationPlanError, match=r"serve_config\.two-models\.yaml"):
        check_served(MINILM, MPNET)


def test_mpnet_through_the_api_matches_sentence_transformers(two_models: ServeApp) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    models = {m["id"]: m for m in httpx.get(f"{two_models.url}/v1/models", timeout=30).json()["data"]}
    assert models[MPNET]["served"] and models[MPNET]["dimension"] == 768 and models[MINILM]["served"]
    texts = [*short_texts(6), "A much longer passage about semantic search. " * 40]
    served = api_vectors(two_models.url, texts, model=MPNET)
    reference = SentenceTransformer(str(get_model(MPNET).weights_dir(PATHS)), device="cpu").encode(
        texts, normalize_embeddings=True)
    cosines = (served * reference).sum(axis=1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1))
    assert served.shape == (len(texts), 768) and cosines.min() >= 0.9999, cosines
    assert api_vectors(two_models.url, texts[:2], model=MINILM).shape == (2, 384)


def test_writes_and_search_naming_mpnet_use_its_own_collection(two_models: ServeApp) -> None:
    url, org = two_models.url, f"mp-{uuid.uuid4().hex[:6]}"
    segments = [("mp", str(i), t) for i, t in enumerate(short_texts(48)[40:46])]
    jobs = write(url, org, segments, model=MPNET)
    assert {(j["model"], j["embedding_model"], j["model_version"]) for j in jobs} == {(MPNET, MPNET, "v1")}
    assert found(url, org, segments, MPNET, model=MPNET) == len(segments)
    view = stats(url, org)
    assert view["routes"][MPNET]["live"] == MPNET_V1 and view["routes"][MPNET]["live_model"] == MPNET
    assert view["collections"].get(MPNET_V1) == len(segments) and not view["collections"].get(MINI_V1)


def test_one_tenant_moves_to_mpnet_and_back_and_the_other_sees_no_change(two_models: ServeApp) -> None:
    url = two_models.url
    org, other = f"x-{uuid.uuid4().hex[:6]}", f"x-other-{uuid.uuid4().hex[:6]}"
    texts = iter(short_texts(40))
    before = [(f"doc-{k}", str(i), next(texts)) for k in range(2) for i in range(4)]
    during = [("during", str(i), next(texts)) for i in range(4)]
    after = [("after", str(i), next(texts)) for i in range(4)]
    theirs = [("theirs", str(i), next(texts)) for i in range(5)]
    write(url, org, before)
    write(url, other, theirs)
    other_before = stats(url, other)
    assert other_before["routes"][MINILM]["live"] == MINI_V1

    submission = submit(two_models, ["--source", f"collection:{MINILM}", "--model", MPNET, "--org", org])
    migrating = until(lambda: (r := stats(url, org)["routes"][MINILM])["state"] == "migrating" and r,
                      JOB_TIMEOUT_S, "migrating")
    target = migrating["pending"]
    assert migrating["live"] == MINI_V1 and target.startswith(f"embeddings__{MPNET}__")
    assert target != MPNET_V1, "a cross-model target has a version of its own"
    write(url, org, during)  # accepted while the re-embed runs: embedded by both models
    result = finished(two_models, submission)
    assert result["switched"] == [org] and result["target_collection"] == target
    assert result["route_model"] == MINILM and result["model"] == MPNET
    assert result["reconciled"][org]["missing"] == 0

    switched = until(lambda: (r := stats(url, org)["routes"][MINILM])["live"] == target and r, 10, "switch seen")
    assert switched["live_model"] == MPNET and switched["previous"] == MINI_V1 and switched["state"] == "switched"
    jobs = write(url, org, after)  # new writes name minilm as always and land in mpnet
    assert {j["embedding_model"] for j in jobs} == {MPNET}
    assert found(url, org, before, MPNET) == len(before)
    assert found(url, org, during, MPNET) == len(during), "writes accepted during the re-embed are in the target"
    assert found(url, org, after, MPNET) == len(after)
    view = stats(url, org)
    assert view["collections"][target] == len(before) + len(during) + len(after)
    assert view["models"][MINILM] == view["collections"][target], "stats count the live (mpnet) collection"

    rolled = heimdex("reembed", "--rollback", "--model", MINILM, "--org", org)
    assert rolled.returncode == 0, rolled.stderr
    back = until(lambda: (r := stats(url, org)["routes"][MINILM])["live"] == MINI_V1 and r, 10, "rollback seen")
    assert back["live_model"] == MINILM and back["previous"] == target
    assert found(url, org, after, MINILM) == len(after), "rollback lost writes made after the switch"
    assert found(url, org, during, MINILM) == len(during) and found(url, org, before, MINILM) == len(before)

    assert found(url, other, theirs, MINILM) == len(theirs)
    other_after = stats(url, other)
    assert other_after["routes"] == other_before["routes"], "another tenant's routes moved"
    assert {c: n for c, n in other_after["collections"].items() if n} == {MINI_V1: len(theirs)}
