"""A Gateway replica's admission of a tenant's requests: its rate budget and its fair share of calls in flight.

Decided locally on every request (a lock held for a few arithmetic operations, no remote call) and
reconciled with the other replicas through the shared :class:`~serve_app.budget_ledger.BudgetLedger`
every ``sync_interval_s`` by a background task, so a tenant's budget is the same with one Gateway
replica or several. Without a ledger (in-process tests and tools, or while the ledger cannot be
reached) the replica admits on its own figures alone, as one replica would.

* Rate: a token bucket of ``rate_per_s`` and ``burst`` per tenant; this replica holds the part of it the
  ledger gives it. Refused: 429 ``tenant_rate_limited`` with the wait until a token is there.
* Concurrency: embedding calls in flight, across replicas, shared max-min fair. ``in_flight_pool`` is
  what the service holds before requests queue for long. Below it anyone may add a call, and a tenant
  alone may use the whole service; once it is full, while ``n`` tenants are active (a call in flight,
  here or at another replica as of the last sync), a tenant holding ``max(min_in_flight,
  in_flight_pool // n)`` or more is refused: 429 ``tenant_concurrency_limited`` with Retry-After 1,
  before the call reaches the Embedder, so a flooding tenant's excess costs the model nothing and a
  client that honours Retry-After backs off, while a tenant under its share is always let in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from serve_app.budget_ledger import BudgetLedgerActor

logger = logging.getLogger("heimdex.admission")

SYNC_INTERVAL_S = 0.1
IDLE_SYNC_INTERVAL_S = 1.0
CONCURRENCY_RETRY_AFTER_S = 1.0


class LedgerLink(Protocol):
    """How a replica reaches the ledger (the Ray actor, or one in this process)."""

    async def sync(self, replica: str, reports: dict[str, tuple[int, float]], rate_per_s: float,
                   burst: float) -> tuple[dict[str, tuple[float, float, int]], int, int]:
        """``(replies by tenant, active tenants, calls in flight at the other replicas)`` for a report."""
        ...


class RayLedgerLink:
    """The ledger actor through its Ray handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def sync(self, replica: str, reports: dict[str, tuple[int, float]], rate_per_s: float,
                   burst: float) -> tuple[dict[str, tuple[float, float, int]], int, int]:
        result: tuple[dict[str, tuple[float, float, int]], int, int] = await self.handle.sync.remote(
            replica, reports, rate_per_s, burst)
        return result


def ledger_link(name: str) -> RayLedgerLink | None:
    """The shared ledger actor ``name`` (created by the first replica that asks), or None where Ray or the
    actor cannot be reached: the replica then admits on its own figures, and says so in its log."""
    try:
        from serve_app.budget_ledger import get_ledger_actor

        return RayLedgerLink(get_ledger_actor(name))
    except Exception as exc:
        logger.warning("tenant budgets are per replica: the budget ledger %r is unreachable (%s)", name, exc)
        return None


class InProcessLedgerLink:
    """A ledger in this process (tests, tools): several admissions sharing it act as several replicas."""

    def __init__(self, actor: BudgetLedgerActor | None = None) -> None:
        self.actor = actor if actor is not None else BudgetLedgerActor()

    async def sync(self, replica: str, reports: dict[str, tuple[int, float]], rate_per_s: float,
                   burst: float) -> tuple[dict[str, tuple[float, float, int]], int, int]:
        return self.actor.sync(replica, reports, rate_per_s, burst)


@dataclass
class _Tenant:
    tokens: float
    updated: float
    share: float = 1.0  # this replica's part of the tenant's bucket and refill
    spent: float = 0.0  # tokens taken since the last report was built
    in_flight: int = 0
    others_in_flight: int = 0


class TenantAdmission:
    """Per-tenant rate and concurrency admission of one Gateway replica (see the module docstring)."""

    def __init__(self, rate_per_s: float, burst: float, in_flight_pool: int = 4, min_in_flight: int = 2, *,
                 ledger: LedgerLink | None = None, replica: str | None = None, max_tenants: int = 100_000,
                 sync_interval_s: float = SYNC_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
            raise ValueError("rate_per_s must be a positive finite number")
        if not (burst >= 1 and math.isfinite(burst)):
            raise ValueError("burst must be at least 1")
        if in_flight_pool < 1 or min_in_flight < 1:
            raise ValueError("in_flight_pool and min_in_flight must be at least 1")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.in_flight_pool = in_flight_pool
        self.min_in_flight = min_in_flight
        self.ledger = ledger
        self.replica = replica or f"gateway-{uuid.uuid4().hex[:12]}"
        self.max_tenants = max_tenants
        self.sync_interval_s = sync_interval_s
        self._clock = clock
        self._tenants: OrderedDict[str, _Tenant] = OrderedDict()
        self._reported: set[str] = set()  # tenants to put in the next report
        self._busy: set[str] = set()  # tenants with a call in flight here
        self._global_active = 0  # tenants active anywhere, as the ledger last said
        self._in_flight = 0  # calls in flight here, all tenants
        self._in_flight_elsewhere = 0  # at the other replicas, as the ledger last said
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._last_call = float("-inf")
        self.syncs = 0
        self.sync_errors = 0

    # ------------------------------------------------------------------ rate

    def try_acquire(self, tenant: str, cost: float = 1.0) -> float | None:
        """Take ``cost`` tokens of ``tenant``'s budget: None when admitted, else the seconds to wait."""
        if not (0 < cost <= self.burst):
            raise ValueError(f"cost must be in (0, {self.burst:g}]")
        self._ensure_sync()
        with self._lock:
            state = self._state(tenant)
            now = self._clock()
            elapsed = now - state.updated
            if elapsed > 0:  # a clock that steps back refills nothing
                state.tokens = min(self.burst * state.share, state.tokens + elapsed * self.rate_per_s * state.share)
                state.updated = now
            self._reported.add(tenant)
            if state.tokens >= cost:
                state.tokens -= cost
                state.spent += cost
                return None
            rate = self.rate_per_s * max(state.share, 1e-3)
            return min((cost - state.tokens) / rate, self.burst / self.rate_per_s)

    # ------------------------------------------------------------------ concurrency

    def limit(self, tenant: str) -> int | None:
        """``tenant``'s fair share of calls in flight across replicas while the pool is full; None: no
        share applies (it is the only active tenant)."""
        with self._lock:
            return self._share(tenant, self._clock())

    def _share(self, tenant: str, now: float) -> int | None:
        state = self._tenants.get(tenant)
        is_active = state is not None and state.in_flight + state.others_in_flight > 0
        active = max(len(self._busy), self._global_active) + (0 if is_active else 1)
        if active <= 1:
            return None
        return max(self.min_in_flight, self.in_flight_pool // active)

    def enter(self, tenant: str) -> bool:
        """Take a slot for one call of ``tenant``; every True must be paired with one :meth:`leave`."""
        self._ensure_sync()
        with self._lock:
            now = self._clock()
            state = self._state(tenant)
            if self._in_flight + self._in_flight_elsewhere >= self.in_flight_pool:  # full: shares apply
                share = self._share(tenant, now)
                if share is not None and state.in_flight + state.others_in_flight >= share:
                    return False
            self._busy.add(tenant)
            state.in_flight += 1
            self._in_flight += 1
            self._reported.add(tenant)
            return True

    def leave(self, tenant: str) -> None:
        with self._lock:
            state = self._tenants.get(tenant)
            if state is None or state.in_flight <= 0:
                raise RuntimeError("TenantAdmission.leave() without a matching enter()")
            state.in_flight -= 1
            self._in_flight -= 1
            if state.in_flight == 0:
                self._busy.discard(tenant)
            self._reported.add(tenant)

    def in_flight(self, tenant: str) -> int:
        with self._lock:
            state = self._tenants.get(tenant)
            return 0 if state is None else state.in_flight

    # ------------------------------------------------------------------ shared state

    def _state(self, tenant: str) -> _Tenant:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant(self.burst, self._clock())
            while len(self._tenants) > self.max_tenants:
                oldest, dropped = next(iter(self._tenants.items()))
                if dropped.in_flight > 0:  # never forget a tenant with calls in flight
                    self._tenants.move_to_end(oldest)
                    break
                self._tenants.popitem(last=False)
        else:
            self._tenants.move_to_end(tenant)
        return state

    async def sync_once(self) -> None:
        """Report to the ledger and take its figures (one round trip)."""
        with self._lock:
            now = self._clock()
            names = self._reported | self._busy
            self._reported = set()
            reports: dict[str, tuple[int, float]] = {}
            for tenant in names:
                state = self._tenants.get(tenant)
                if state is not None:
                    reports[tenant] = (state.in_flight, state.spent)
                    state.spent = 0.0
        if self.ledger is None or (not reports and now - self._last_call < IDLE_SYNC_INTERVAL_S):
            return  # an idle replica asks only now and then (for the count of active tenants)
        self._last_call = now
        try:
            replies, active, elsewhere = await self.ledger.sync(self.replica, reports, self.rate_per_s, self.burst)
        except Exception as exc:  # keep admitting on this replica's figures; the next sync tries again
            self.sync_errors += 1
            with self._lock:  # what was spent must still be charged next time
                for tenant, (_, spent) in reports.items():
                    state = self._tenants.get(tenant)
                    if state is not None:
                        state.spent += spent
                        self._reported.add(tenant)
            logger.debug("budget ledger sync failed: %s", exc)
            return
        with self._lock:
            now = self._clock()
            self._global_active = active
            self._in_flight_elsewhere = elsewhere
            for tenant, (tokens, share, others) in replies.items():
                state = self._tenants.get(tenant)
                if state is None:
                    continue
                # Tokens spent while the report travelled are not in the ledger's answer yet.
                state.tokens = min(self.burst * share, tokens - state.spent)
                state.share = share
                state.others_in_flight = others
                state.updated = now
            self.syncs += 1

    def _ensure_sync(self) -> None:
        """Start the sync loop on the running event loop (first request of the replica)."""
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # called outside an event loop (tests, threads): sync_once() is called by hand
        self._task = loop.create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sync_interval_s)
            with contextlib.suppress(Exception):
                await self.sync_once()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
