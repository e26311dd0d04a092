"""Peak memory of the local stack: the summed RSS of its Ray processes, sampled in a thread.

With a local stack (``ray.init(address="local")``) every Ray process — gcs_server, raylet, the
dashboard and its agents, the Serve controller / proxy / replicas, the store actor, idle workers — is
a descendant of the bench driver, so the sampler walks the driver's process tree and keeps the
processes whose command line mentions ``ray`` (that leaves out the bench driver itself, which holds
its own copy of the model for the baseline, and the load-generator subprocess). Against a remote
service (``--url``) it falls back to every process on the machine whose command line mentions
``ray``, which also counts any other Ray cluster running there: the result says which scope it used.

RSS double counts pages shared between processes (the torch libraries each worker maps, the object
store's shared memory), so PSS (proportional set size, shared pages split between their users) is
sampled too, less often because it reads ``/proc/<pid>/smaps``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

MB = 1024 * 1024


def _is_ray(proc: psutil.Process) -> bool:
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "ray" in cmd.lower()


def _label(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "gone"
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split(" ")[0].split(".")[0]  # "ray::VectorStoreActor.upsert" -> the actor
    for part in cmd:
        base = os.path.basename(part)
        if base in {"raylet", "gcs_server"} or base.endswith(".py"):
            return base
    return name


@dataclass
class MemoryPeak:
    scope: str
    samples: int = 0
    peak_rss_mb: float = 0.0
    peak_pss_mb: float | None = None
    peak_processes: int = 0
    peak_breakdown_mb: dict[str, float] = field(default_factory=dict)  # label -> RSS at the RSS peak
    peak_phase: str = ""
    peak_rss_mb_by_phase: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "samples": self.samples,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "peak_pss_mb": None if self.peak_pss_mb is None else round(self.peak_pss_mb, 1),
            "peak_processes": self.peak_processes,
            "peak_phase": self.peak_phase,
            "peak_rss_mb_by_phase": {k: round(v, 1) for k, v in self.peak_rss_mb_by_phase.items()},
            "peak_breakdown_mb": {k: round(v, 1) for k, v in
                                  sorted(self.peak_breakdown_mb.items(), key=lambda kv: -kv[1])},
        }


class RssSampler:
    """Samples the stack's summed RSS every ``interval_s`` (PSS every ``pss_every`` samples)."""

    def __init__(self, local: bool, exclude_pids: Iterable[int] = (), interval_s: float = 1.0,
                 pss_every: int = 10) -> None:
        self.local = local
        self.exclude = set(exclude_pids)
        self.interval_s = interval_s
        self.pss_every = pss_every
        self.phase = "start"
        self.peak = MemoryPeak(scope="driver process tree, cmdline contains 'ray'" if local
                               else "all processes, cmdline contains 'ray' (may include other clusters)")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)
        self._me = psutil.Process()

    def _processes(self) -> list[psutil.Process]:
        if self.local:
            candidates = self._me.children(recursive=True)
        else:
            mine = {self._me.pid, *(p.pid for p in self._me.children(recursive=True))}
            candidates = [p for p in psutil.process_iter() if p.pid not in mine]
        return [p for p in candidates if p.pid not in self.exclude and _is_ray(p)]

    def sample(self, with_pss: bool = False) -> None:
        total = 0.0
        pss_total = 0.0
        breakdown: dict[str, float] = {}
        procs = self._processes()
        for proc in procs:
            try:
                rss = proc.memory_info().rss / MB
                if with_pss:
                    pss_total += getattr(proc.memory_full_info(), "pss", 0) / MB
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total += rss
            label = _label(proc)
            breakdown[label] = breakdown.get(label, 0.0) + rss
        self.peak.samples += 1
        by_phase = self.peak.peak_rss_mb_by_phase
        by_phase[self.phase] = max(by_phase.get(self.phase, 0.0), total)
        if total > self.peak.peak_rss_mb:
            self.peak.peak_rss_mb = total
            self.peak.peak_processes = len(procs)
            self.peak.peak_breakdown_mb = breakdown
            self.peak.peak_phase = self.phase
        if with_pss and pss_total > (self.peak.peak_pss_mb or 0.0):
            self.peak.peak_pss_mb = pss_total

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # sampling must never take the bench down
                self.sample(with_pss=n % self.pss_every == 0)
            n += 1
            self._stop.wait(self.interval_s)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> MemoryPeak:
        self._stop.set()
        self._thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self.sample(with_pss=True)
        return self.peak

    def mark(self, phase: str) -> None:
        """Name the phase now running, so the peak says when it happened."""
        self.phase = phase
