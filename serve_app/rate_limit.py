"""Overload guards for one gateway replica: a per-tenant token bucket and a global in-flight gate.

Both are in-process and thread-safe (a lock held for a few arithmetic operations, never across an
``await``), so they are safe to call from async route handlers and from worker threads alike. Limits are
per replica: with N replicas a tenant's effective ceiling is about N times the configured rate. The Gateway
uses :class:`serve_app.tenant_admission.TenantAdmission` instead, whose budgets hold across replicas;
this bucket serves the in-process apps of tests and tools.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["ConcurrencyGate", "TenantRateLimiter", "retry_after_seconds"]


def retry_after_seconds(wait_s: float) -> int:
    """A ``Retry-After`` value: the wait rounded up to whole seconds, at least 1."""
    return max(1, math.ceil(wait_s))


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class TenantRateLimiter:
    """A token bucket per tenant: ``burst`` requests at once, refilled at ``rate_per_s``.

    Memory is bounded: at most ``max_tenants`` buckets are kept, the least recently used one is dropped
    first. A dropped tenant comes back with a full bucket, which is what it would have had anyway unless it
    was active within the last ``burst / rate_per_s`` seconds while ``max_tenants`` others were too.
    ``clock`` (monotonic seconds) is injectable for tests.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        max_tenants: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
            raise ValueError("rate_per_s must be a positive finite number")
        if not (burst >= 1 and math.isfinite(burst)):
            raise ValueError("burst must be at least 1")
        if max_tenants < 1:
            raise ValueError("max_tenants must be at least 1")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self.max_tenants = max_tenants
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def try_acquire(self, tenant: str, cost: float = 1.0) -> float | None:
        """Take ``cost`` tokens from ``tenant``'s bucket.

        Returns ``None`` when admitted, otherwise the seconds until ``cost`` tokens will be available
        (nothing is taken then). ``cost`` must be in ``(0, burst]``; a larger cost could never be admitted.
        """
        if not (0 < cost <= self.burst):
            raise ValueError(f"cost must be in (0, {self.burst:g}]")
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = _Bucket(self.burst, now)
                self._buckets[tenant] = bucket
                while len(self._buckets) > self.max_tenants:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(tenant)
                elapsed = now - bucket.updated
                if elapsed > 0:  # a clock that steps back refills nothing
                    bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate_per_s)
                    bucket.updated = now
            if bucket.tokens >= cost:
                bucket.tokens -= cost
                return None
            return (cost - bucket.tokens) / self.rate_per_s

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)

    def __contains__(self, tenant: object) -> bool:
        with self._lock:
            return tenant in self._buckets


class ConcurrencyGate:
    """A global cap on requests in flight in this replica; refuse (503 + Retry-After) when saturated."""

    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        """Take a slot if one is free; every ``True`` must be paired with exactly one :meth:`leave`."""
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            if self._in_flight <= 0:
                raise RuntimeError("ConcurrencyGate.leave() without a matching try_enter()")
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight
