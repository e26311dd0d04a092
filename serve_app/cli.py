"""The ``heimdex`` command: run the service locally and do the common tasks."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from serve_app.settings import get_settings

STATE_DIR = Path(os.environ.get("HEIMDEX_STATE_DIR", ".heimdex"))


def cmd_up(args: argparse.Namespace) -> int:
    from cluster import local

    cluster = local.LocalCluster(STATE_DIR.resolve())
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    cluster.ensure_token()
    env = cluster.ray_env({"HEIMDEX_DATA_DIR": str(data_dir)})
    if local.is_running(cluster):
        print("Ray is already running; redeploying the app.")
    else:
        print("Starting a local Ray head (dashboard on 127.0.0.1:8265, token auth)...")
        local.start_head(cluster, env, num_cpus=args.num_cpus)
    config = local.render_serve_config(Path(args.config), settings.host, settings.port)
    print(f"Deploying {args.config} ...")
    local.deploy(cluster, config, env)
    url = f"http://{settings.host}:{settings.port}"
    print("Waiting for the model to load and the store to answer...")
    ready = local.wait_ready(url, timeout_s=args.timeout)
    print(f"""
Heimdex is up.
  API:        {url}    (OpenAPI docs: {url}/docs)
  Readiness:  {ready}
  Dashboard:  {cluster.dashboard_url}  (Ray token: {cluster.token_path})
  Token:      heimdex token --org my-org --sub me
  Try:        curl -s {url}/v1/embeddings -H 'Content-Type: application/json' \\
                -d '{{"input":["a","b"],"model":"minilm-l6-v2"}}'
  Stop:       make stop   (or: heimdex down)
""")
    return 0


def cmd_down(_: argparse.Namespace) -> int:
    from cluster import local

    local.stop(local.LocalCluster(STATE_DIR.resolve()))
    print("Heimdex stopped.")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from serve_app.auth import mint_token

    scopes = tuple(args.scope or ())
    print(mint_token(get_settings(), org_id=args.org, sub=args.sub, scopes=scopes, ttl_s=args.ttl))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heimdex", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a local Ray head and deploy the service")
    up.add_argument("--config", default="serve_config.yaml")
    up.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for Ray (default: detected)")
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop what `heimdex up` started")
    down.set_defaults(func=cmd_down)

    token = sub.add_parser("token", help="mint a development JWT")
    token.add_argument("--org", required=True)
    token.add_argument("--sub", required=True)
    token.add_argument("--scope", action="append", help="repeatable, e.g. --scope admin")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
