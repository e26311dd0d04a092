"""How many embedding actors a re-embed runs and what each asks of the cluster: fitted to what is
FREE, so the job runs beside the Serve app on the user's own cluster (on a 2-core `make run` the app
holds 1.35 of the 2 logical CPUs, leaving 0.65).

Logical CPUs only decide placement; the actors' ONNX Runtime threads use the node's real cores
(``threads``), sharing them with an idle-or-busy Embedder exactly as two processes share a machine.
A plan that cannot be placed fails at once with what is missing and the flag that fixes it, never
a silent wait; ``jobs.reembed.ProgressReporter`` bounds the wait for one that was placeable when planned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

# Ray Data tasks that scroll, prepare and write: I/O bound, they must never be why a re-embed waits.
TASK_CPUS = 0.05
# Room kept for those tasks (a few run at once) when sizing the embedding actors.
TASK_RESERVE_CPUS = 0.2
# The smallest CPU share an embedding actor is given (a placement token; its threads use real cores).
MIN_ACTOR_CPUS = 0.1
MAX_CONCURRENCY = 8


class InsufficientResourcesError(RuntimeError):
    """The plan cannot be placed on the cluster as it is now; the message says what to change."""


@dataclass(frozen=True)
class ResourcePlan:
    concurrency: int
    num_cpus: float
    num_gpus: float
    threads: int
    device: str
    task_cpus: float = TASK_CPUS

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _floor_to(value: float, step: float) -> float:
    return math.floor(value / step + 1e-9) * step


def plan_resources(
    *, total: dict[str, float], free: dict[str, float], node_cores: int,
    num_cpus: float | None = None, num_gpus: float | None = None, concurrency: int | None = None,
) -> ResourcePlan:
    """The embedding actors' plan from the cluster's ``total`` and ``free`` logical resources."""
    gpus_total, gpus_free = float(total.get("GPU", 0.0)), float(free.get("GPU", 0.0))
    cpus_total, cpus_free = float(total.get("CPU", 0.0)), float(free.get("CPU", 0.0))
    want_gpus = num_gpus if num_gpus is not None else (1.0 if gpus_free >= 1 else 0.0)
    if want_gpus > 0:
        actor_cpus = num_cpus if num_cpus is not None else min(1.0, _floor_to(cpus_free - TASK_RESERVE_CPUS, 0.05))
        n = concurrency or max(1, min(MAX_CONCURRENCY, int(gpus_free // want_gpus)))
        _check_fits(n, actor_cpus, want_gpus, cpus_free, cpus_total, gpus_free, gpus_total)
        return ResourcePlan(n, actor_cpus, want_gpus, 1, "cuda")
    budget = cpus_free - TASK_RESERVE_CPUS
    if num_cpus is not None:
        actor_cpus = num_cpus
    elif budget >= 8:
        actor_cpus = 2.0
    elif budget >= 1:
        actor_cpus = 1.0
    else:
        actor_cpus = max(MIN_ACTOR_CPUS, _floor_to(budget, 0.05))
    n = concurrency or max(1, min(MAX_CONCURRENCY, int((budget + 1e-9) // actor_cpus)))
    _check_fits(n, actor_cpus, 0.0, cpus_free, cpus_total, gpus_free, gpus_total)
    threads = max(1, node_cores // n)
    return ResourcePlan(n, round(actor_cpus, 2), 0.0, threads, "cpu")


def _check_fits(n: int, actor_cpus: float, actor_gpus: float, cpus_free: float, cpus_total: float,
                gpus_free: float, gpus_total: float) -> None:
    need_cpus = n * actor_cpus + TASK_RESERVE_CPUS
    if need_cpus > cpus_free + 1e-9:
        fit = _floor_to(cpus_free - TASK_RESERVE_CPUS, 0.05)
        hint = (f"pass --num-cpus {fit:g} --concurrency 1" if fit >= MIN_ACTOR_CPUS
                else "stop other Ray work or add a node (the Serve app and running jobs hold the rest)")
        raise InsufficientResourcesError(
            f"the re-embed needs {need_cpus:.2f} CPU ({n} embedding actor(s) x {actor_cpus:g} + "
            f"{TASK_RESERVE_CPUS:g} for its read/write tasks) but the cluster has {cpus_free:.2f} of "
            f"{cpus_total:g} CPU free; {hint}")
    if actor_gpus > 0 and n * actor_gpus > gpus_free + 1e-9:
        raise InsufficientResourcesError(
            f"the re-embed needs {n * actor_gpus:g} GPU ({n} actor(s) x {actor_gpus:g}) but the cluster has "
            f"{gpus_free:g} of {gpus_total:g} GPU free; pass --num-gpus {gpus_free / n:g} or --num-gpus 0 (CPU)")
