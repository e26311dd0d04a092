"""The re-embed's resource plan and per-tenant move plan, on the cluster shapes users have."""

from __future__ import annotations

import pytest

from jobs.migration import MigrationPlanError, plan_moves
from jobs.resources import TASK_RESERVE_CPUS, InsufficientResourcesError, plan_resources

# `make run` on a 2-core machine: the Serve app (Gateway 0.25 + Embedder 1 + relay 0.1) holds 1.35 CPU.
MAKE_RUN_2_CORES = {"total": {"CPU": 2.0}, "free": {"CPU": 0.65}}


def test_plan_fits_beside_the_serve_app_on_two_cores() -> None:
    plan = plan_resources(**MAKE_RUN_2_CORES, node_cores=2)
    assert plan.concurrency == 1 and plan.device == "cpu"
    assert plan.concurrency * plan.num_cpus + TASK_RESERVE_CPUS <= 0.65 + 1e-9
    assert plan.threads == 2, "the actor's threads use the node's real cores, not its logical share"


def test_plan_on_a_big_free_node_uses_whole_cpus() -> None:
    plan = plan_resources(total={"CPU": 16.0}, free={"CPU": 16.0}, node_cores=16)
    assert plan.num_cpus == 2.0 and plan.concurrency == 7 and plan.threads == 2


def test_plan_that_cannot_be_placed_names_the_resource_and_the_flag() -> None:
    with pytest.raises(InsufficientResourcesError) as caught:
        plan_resources(**MAKE_RUN_2_CORES, node_cores=2, num_cpus=1.0)
    message = str(caught.value)
    assert "0.65 of 2 CPU free" in message and "--num-cpus 0.45" in message


def test_full_cluster_is_refused_at_once() -> None:
    with pytest.raises(InsufficientResourcesError, match="CPU free"):
        plan_resources(total={"CPU": 2.0}, free={"CPU": 0.1}, node_cores=2)


def test_gpu_plan_and_refusal() -> None:
    plan = plan_resources(total={"CPU": 8.0, "GPU": 1.0}, free={"CPU": 4.0, "GPU": 0.75}, node_cores=8,
                          num_gpus=0.25)
    assert plan.device == "cuda" and plan.concurrency == 3
    with pytest.raises(InsufficientResourcesError, match="GPU"):
        plan_resources(total={"CPU": 8.0, "GPU": 1.0}, free={"CPU": 4.0, "GPU": 0.75}, node_cores=8, num_gpus=1.0)


def test_moves_fill_in_place_or_migrate_per_tenant() -> None:
    v1, v2, mock = "embeddings__m__v1", "embeddings__m__v2", "embeddings__mock__v1"
    moves = plan_moves(v2, {"a": v1, "b": v2}, {"a": v1, "b": mock}, {"a": 10, "b": 3})
    assert [(m.org_id, m.mode) for m in moves] == [("a", "migrate"), ("b", "fill")]


def test_switch_that_would_drop_live_points_is_refused() -> None:
    v1, v2, mock = "embeddings__m__v1", "embeddings__m__v2", "embeddings__mock__v1"
    with pytest.raises(MigrationPlanError, match="would drop"):
        plan_moves(v2, {"a": v1}, {"a": mock}, {"a": 4})
    assert plan_moves(v2, {"a": v1}, {"a": mock}, {"a": 0})[0].mode == "migrate", "nothing live to lose"
