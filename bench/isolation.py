"""Tenant isolation: a trickle tenant's latency while another tenant floods, against its latency when idle.

``measure_isolation`` runs, side by side in one run against one stack:

1. idle: tenant ``bench-trickle``, 2 closed-loop clients of one SHORT text each: p50 / p99;
2. flood: tenant ``bench-flood``, 64 closed-loop clients of one SHORT text each, honouring ``Retry-After``
   on 429 as a well-behaved client does, in a process of its own; once it runs, the same trickle again.

The figure is ``isolation_p99_ratio`` = the trickle's p99 during the flood ÷ its idle p99 (goal <= 2).
The flood's answers (200s, 429s) and texts/s are recorded beside it, and so is the load average, since
other work on the machine moves both figures. ``python -m bench.isolation`` runs it alone on a fresh
local stack (``--url`` for a running service; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.load import LoadRunner, LoadSpec, check_loopback
from bench.texts import text_set
from bench.timing import percentiles, write_json

MODEL = "minilm-l6-v2"
FLOOD_TENANT = "bench-flood"
TRICKLE_TENANT = "bench-trickle"
FLOOD_CLIENTS = 64
TRICKLE_CLIENTS = 2


def _token(org: str) -> str:
    from serve_app.auth import mint_token
    from serve_app.settings import Settings

    return mint_token(Settings(), org_id=org, sub="bench")


def flood(url: str, token: str, texts: list[str], clients: int, seconds: float, ready_path: str) -> dict[str, Any]:
    """``clients`` closed-loop single-text clients for ``seconds`` (a subprocess entry point); a 429 waits its
    Retry-After (or the end of the run). Writes ``ready_path`` once every client has had an answer."""
    check_loopback(url)
    return asyncio.run(_flood(url, token, texts, clients, seconds, ready_path))


async def _flood(url: str, token: str, texts: list[str], clients: int, seconds: float,
                 ready_path: str) -> dict[str, Any]:
    import httpx

    statuses: dict[str, int] = {}
    latencies: list[float] = []
    answered: set[int] = set()
    deadline = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(c: int, http: Any) -> None:
        n = 0
        while time.perf_counter() < deadline:
            body = json.dumps({"input": texts[(c * 997 + n) % len(texts)], "model": MODEL}).encode()
            n += 1
            sent = time.perf_counter()
            try:
                response = await http.post(url, content=body, headers=headers)
                key = str(response.status_code)
            except httpx.HTTPError as exc:
                response, key = None, type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1
            if c not in answered:
                answered.add(c)
                if len(answered) == clients:
                    Path(ready_path).touch()
            if response is not None and response.status_code == 200:
                latencies.append((time.perf_counter() - sent) * 1000.0)
            elif response is not None and response.status_code in (429, 503):
                wait = float(response.headers.get("Retry-After", "1"))
                await asyncio.sleep(min(wait, max(0.0, deadline - time.perf_counter())))

    started = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=120.0) as http:
        await asyncio.gather(*(client(c, http) for c in range(clients)))
    elapsed = time.perf_counter() - started
    return {"clients": clients, "elapsed_s": elapsed, "status_counts": statuses,
            "texts_per_s": len(latencies) / elapsed if elapsed else 0.0, **percentiles(latencies)}


def _trickle_spec(url: str, token: str, texts: list[str], requests: int, seconds: float) -> LoadSpec:
    bodies = [{"input": text, "model": MODEL} for text in texts]
    return LoadSpec(url=url, bodies=bodies, concurrency=TRICKLE_CLIENTS, max_requests=requests,
                    max_duration_s=seconds, headers={"Authorization": f"Bearer {token}"}, warmup_requests=20)


def _wait_for(path: Path, timeout_s: float, flood_future: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if flood_future.done():
            flood_future.result()  # raises what the flood raised
            raise RuntimeError("the flood ended before every client had an answer")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the flood did not get going in {timeout_s:.0f}s")
        time.sleep(0.05)


def measure_isolation(url: str, quick: bool = False) -> dict[str, Any]:
    """The trickle's idle and flood latencies against the service at ``url``; see the module docstring."""
    check_loopback(url)
    endpoint = f"{url}/v1/embeddings"
    texts = text_set("short")
    trickle_texts, flood_texts = texts[: len(texts) // 2], texts[len(texts) // 2:]
    requests, seconds = (150, 5.0) if quick else (600, 12.0)
    trickle_token, flood_token = _token(TRICKLE_TENANT), _token(FLOOD_TENANT)
    load_before = os.getloadavg()
    with LoadRunner() as runner, tempfile.TemporaryDirectory(prefix="heimdex-isolation-") as tmp, \
            ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        idle = runner.run(_trickle_spec(endpoint, trickle_token, trickle_texts, requests, seconds)).as_dict()
        ready = Path(tmp) / "flood-ready"
        flood_seconds = seconds + 30.0  # outlasts the trickle's warm-up and run; the trickle ends it early
        future = pool.submit(flood, endpoint, flood_token, flood_texts, FLOOD_CLIENTS, flood_seconds, str(ready))
        _wait_for(ready, 60.0, future)
        during = runner.run(_trickle_spec(endpoint, trickle_token, trickle_texts, requests, seconds)).as_dict()
        load_during = os.getloadavg()
        flooded = future.result(timeout=flood_seconds + 180)
    ratio = during["p99_ms"] / idle["p99_ms"] if during.get("p99_ms") and idle.get("p99_ms") else None
    p50_ratio = during["p50_ms"] / idle["p50_ms"] if during.get("p50_ms") and idle.get("p50_ms") else None
    return {"isolation_p99_ratio": ratio, "isolation_p50_ratio": p50_ratio, "trickle_idle": idle,
            "trickle_during_flood": during, "flood": flooded,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_during": [round(x, 2) for x in load_during]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.isolation", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", default=None,
                        help="a running service at this loopback URL (default: a fresh local stack)")
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    from bench.stack import open_stack

    with open_stack(args.url) as stack:
        result = measure_isolation(stack.url, quick=args.quick)
    idle, during, flooded = result["trickle_idle"], result["trickle_during_flood"], result["flood"]
    print(f"trickle idle p50 {idle['p50_ms']:.1f} / p99 {idle['p99_ms']:.1f} ms; during the flood p50 "
          f"{during['p50_ms']:.1f} / p99 {during['p99_ms']:.1f} ms; ratio p99 {result['isolation_p99_ratio']:.2f} "
          f"(goal <= 2), p50 {result['isolation_p50_ratio']:.2f}")
    print(f"flood: {flooded['status_counts']}, {flooded['texts_per_s']:.1f} texts/s answered; load average "
          f"{result['load_average_before']} before, {result['load_average_during']} during")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
