"""The KubeRay manifests, the cluster launcher config and the Dockerfile agree with the Serve configs.

No cluster needed: parse the files, compare the embedded ``serveConfigV2`` with serve_config.yaml
(as data; the one intended difference is ``http_options.host``, 127.0.0.1 locally and 0.0.0.0 in a
pod) and with the GPU profile (identical), validate both with Ray Serve's own schema, and check
the GPU profile gives the Embedder a fractional GPU.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def sync_module() -> Any:
    spec = importlib.util.spec_from_file_location("sync_kuberay", ROOT / "scripts" / "sync_kuberay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sync_kuberay"] = module
    spec.loader.exec_module(module)
    return module


def embedded(manifest: Path) -> dict[str, Any]:
    doc = load(manifest)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    text = doc["spec"]["serveConfigV2"]
    assert isinstance(text, str), "KubeRay wants serveConfigV2 as a YAML string"
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in config["applications"][0]["deployments"] if d["name"] == name)
    return found


def test_cpu_rayservice_embeds_serve_config_modulo_host() -> None:
    source = load(ROOT / "serve_config.yaml")
    config = embedded(KUBERAY / "rayservice.yaml")
    assert config["http_options"]["host"] == "0.0.0.0"  # a pod must listen on its interface
    assert source["http_options"]["host"] == "127.0.0.1"
    normalised = copy.deepcopy(config)
    normalised["http_options"]["host"] = source["http_options"]["host"]
    assert normalised == source


def test_gpu_rayservice_embeds_gpu_profile_with_fractional_gpus() -> None:
    source = load(ROOT / "cluster" / "serve_config.gpu.yaml")
    config = embedded(KUBERAY / "rayservice-gpu.yaml")
    assert config == source
    num_gpus = deployment(config, "Embedder")["ray_actor_options"]["num_gpus"]
    assert 0 < num_gpus < 1, num_gpus
    assert config["applications"][0]["args"]["device"] == "cuda"
    cluster = load(KUBERAY / "rayservice-gpu.yaml")["spec"]["rayClusterConfig"]
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert gpu_groups, "the GPU RayService needs a worker group with nvidia.com/gpu"
    assert cluster["rayVersion"] == "2.60.0"


@pytest.mark.parametrize("manifest", ["rayservice.yaml", "rayservice-gpu.yaml"])
def test_ray_serve_schema_accepts_the_embedded_config(manifest: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(embedded(KUBERAY / manifest))
    assert [app.name for app in schema.applications] == ["heimdex"]
    assert schema.applications[0].import_path == "serve_app.app:build_app"


def test_manifests_are_in_sync_with_the_serve_configs() -> None:
    sync = sync_module()
    for pair in sync.PAIRS:
        assert sync.render(pair) == pair.manifest.read_text(), f"run scripts/sync_kuberay.py: {pair.manifest}"
    assert sync.main(["--check"]) == 0


def test_rayjob_runs_the_reembed_pipeline() -> None:
    doc = load(KUBERAY / "rayjob-reembed.yaml")
    assert doc["kind"] == "RayJob" and doc["apiVersion"] == "ray.io/v1"
    assert doc["spec"]["entrypoint"] == "python -m jobs.reembed --source collection:mock --model minilm-l6-v2"
    assert doc["spec"]["shutdownAfterJobFinishes"] is True
    assert doc["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"
    from jobs import reembed

    assert hasattr(reembed, "main")


def test_cluster_launcher_config_and_dockerfile() -> None:
    launcher = load(ROOT / "cluster" / "ray-cluster.yaml")
    assert launcher["head_node_type"] in launcher["available_node_types"]
    assert launcher["docker"]["image"].endswith("-cuda")
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert "FROM rayproject/ray:2.60.0" in dockerfile and "download.pytorch.org/whl/cu" in dockerfile


def test_two_models_profile_is_serve_config_with_a_second_embedder_that_fits_two_cpus() -> None:
    """serve_config.two-models.yaml differs from serve_config.yaml only in the models and the Embedders'
    CPU share, and what it places (one Gateway, the relay, both Embedders) leaves a re-embed room on 2 CPUs."""
    from ray.serve.schema import ServeDeploySchema

    from jobs.resources import MIN_ACTOR_CPUS, TASK_RESERVE_CPUS
    from serve_app.app import AppArgs, embedder_name

    source, two = load(ROOT / "serve_config.yaml"), load(ROOT / "serve_config.two-models.yaml")
    ServeDeploySchema.model_validate(two)
    args = AppArgs.model_validate(two["applications"][0]["args"])
    assert args.models == ["minilm-l6-v2", "all-mpnet-base-v2"]
    names = [embedder_name(m, args.models[0]) for m in args.models]
    embedders = [deployment(two, name) for name in names]
    assert [e["ray_actor_options"]["num_cpus"] for e in embedders] == [0.5, 0.5]

    normalised = copy.deepcopy(two)
    normalised["applications"][0]["args"]["models"] = source["applications"][0]["args"]["models"]
    normalised["applications"][0]["deployments"] = [d for d in normalised["applications"][0]["deployments"]
                                                    if d["name"] != names[1]]
    deployment(normalised, "Embedder")["ray_actor_options"]["num_cpus"] = 1
    assert normalised == source
    for second in embedders[1:]:
        assert {k: v for k, v in second.items() if k != "name"} == {k: v for k, v in embedders[0].items()
                                                                     if k != "name"}

    from deployments.registry import get_model

    gateway = deployment(two, "Gateway")["ray_actor_options"]["num_cpus"]
    relay = deployment(two, "OutboxRelay")["ray_actor_options"]["num_cpus"]
    held = gateway * deployment(two, "Gateway")["autoscaling_config"]["max_replicas"] + relay + sum(
        e["ray_actor_options"]["num_cpus"] for e in embedders)
    assert held + TASK_RESERVE_CPUS + MIN_ACTOR_CPUS <= 2.0, f"the app holds {held} of 2 CPUs: no room for a re-embed"
    assert [get_model(m).dimension for m in args.models] == [384, 768]


def test_deployment_options_live_in_the_serve_configs_only() -> None:
    """Every Serve config names each deployment the app builds, with its CPUs; the decorators carry no
    options that a config could silently leave to them."""
    from deployments.embedder import Embedder
    from serve_app.app import AppArgs, embedder_name
    from serve_app.gateway import Gateway
    from serve_app.relay import OutboxRelay

    for path in (ROOT / "serve_config.yaml", ROOT / "serve_config.two-models.yaml",
                 ROOT / "cluster" / "serve_config.gpu.yaml"):
        config = load(path)
        args = AppArgs.model_validate(config["applications"][0]["args"])
        for name in ("Gateway", "OutboxRelay", *(embedder_name(m, args.models[0]) for m in args.models)):
            assert "num_cpus" in deployment(config, name)["ray_actor_options"], (path.name, name)
        for model in args.models:  # the Embedder's queue bounds and health checks, for every model
            entry = deployment(config, embedder_name(model, args.models[0]))
            for option in ("max_ongoing_requests", "max_queued_requests", "health_check_period_s"):
                assert option in entry, (path.name, model, option)
    for decorated in (Gateway, OutboxRelay, Embedder):
        options = decorated._deployment_config.user_configured_option_names  # type: ignore[attr-defined]
        assert options == {"name"}, (decorated, options)
