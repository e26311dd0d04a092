"""Unit tests for serve_app.rate_limit: per-tenant token buckets and the in-flight gate."""

from __future__ import annotations

import threading

import pytest

from serve_app.rate_limit import ConcurrencyGate, TenantRateLimiter, retry_after_seconds


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def admitted(limiter: TenantRateLimiter, tenant: str, n: int) -> int:
    return sum(limiter.try_acquire(tenant) is None for _ in range(n))


def test_burst_admitted_then_refused_with_positive_wait() -> None:
    clock = FakeClock()
    limiter = TenantRateLimiter(rate_per_s=2.0, burst=5, clock=clock)
    assert admitted(limiter, "org-a", 5) == 5
    wait = limiter.try_acquire("org-a")
    assert wait is not None
    assert wait == pytest.approx(0.5)  # one token at 2 tokens/s
    assert retry_after_seconds(wait) == 1


def test_refusal_takes_nothing() -> None:
    clock = FakeClock()
    limiter = TenantRateLimiter(rate_per_s=1.0, burst=1, clock=clock)
    assert limiter.try_acquire("t") is None
    for _ in range(10):
        assert limiter.try_acquire("t") is not None
    clock.advance(1.0)
    assert limiter.try_acquire("t") is None


def test_refills_over_time() -> None:
    clock = FakeClock()
    limiter = TenantRateLimiter(rate_per_s=10.0, burst=10, clock=clock)
    assert admitted(limiter, "org-a", 10) == 10
    assert limiter.try_acquire("org-a") is not None
    clock.advance(0.35)  # 3.5 tokens
    assert admitted(limiter, "org-a", 10) == 3
    wait = limiter.try_acquire("org-a")
    assert wait == pytest.approx(0.05)
    clock.advance(100.0)  # refill is capped at burst
    assert admitted(limiter, "org-a", 20) == 10


def test_wait_reflects_cost() -> None:
    clock = FakeClock()
    limiter = TenantRateLimiter(rate_per_s=4.0, burst=8, clock=clock)
    assert limiter.try_acquire("t", cost=8) is None
    assert limiter.try_acquire("t", cost=4) == pytest.approx(1.0)
    clock.advance(1.0)
    assert limiter.try_acquire("t", cost=4) is None


@pytest.mark.parametrize("cost", [0.0, -1.0, 9.0])
def test_cost_outside_bucket_is_refused(cost: float) -> None:
    limiter = TenantRateLimiter(rate_per_s=1.0, burst=8, clock=FakeClock())
    with pytest.raises(ValueError):
        limiter.try_acquire("t", cost=cost)


def test_clock_going_backwards_does_not_refill() -> None:
    clock = FakeClock()
    limiter = TenantRateLimiter(rate_per_s=1.0, burst=2, clock=clock)
    assert admitted(limiter, "t", 2) == 2
    clock.advance(-50.0)
    assert limiter.try_acquire("t") is not None
    clock.advance(50.5)  # back to where it was plus half a second: still not a whole token
    assert limiter.try_acquire("t") is not None


def test_tenants_are_independent() -> None:
    clock = FakeClock()
    limiter = TenantRateLimiter(rate_per_s=1.0, burst=3, clock=clock)
    assert admitted(limiter, "org-a", 3) == 3
    assert limiter.try_acquire("org-a") is not None
    assert admitted(limiter, "org-b", 3) == 3
    assert limiter.try_acquire("org-b") is not None


def test_memory_bound_respected() -> None:
    clock = FakeClock()
    limiter = TenantRateLimiter(rate_per_s=1.0, burst=1, max_tenants=100, clock=clock)
    for i in range(10_000):
        limiter.try_acquire(f"tenant-{i}")
        assert len(limiter) <= 100
    assert len(limiter) == 100
    assert "tenant-9999" in limiter
    assert "tenant-0" not in limiter


def test_eviction_is_least_recently_used() -> None:
    clock = FakeClock()
    limiter = TenantRateLimiter(rate_per_s=1.0, burst=1, max_tenants=2, clock=clock)
    assert limiter.try_acquire("hot") is None
    limiter.try_acquire("cold")
    assert limiter.try_acquire("hot") is not None  # touch "hot": now "cold" is the oldest
    limiter.try_acquire("new")
    assert "hot" in limiter
    assert "cold" not in limiter
    # "hot" kept its (empty) bucket rather than getting a fresh burst
    assert limiter.try_acquire("hot") is not None


def test_thread_safe_admits_exactly_the_burst() -> None:
    limiter = TenantRateLimiter(rate_per_s=1e-6, burst=500, clock=FakeClock())
    results: list[bool] = []
    results_lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        local = [limiter.try_acquire("shared") is None for _ in range(200)]
        with results_lock:
            results.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1600
    assert sum(results) == 500


@pytest.mark.parametrize(
    ("rate", "burst", "max_tenants"), [(0.0, 1, 10), (-1.0, 1, 10), (1.0, 0, 10), (1.0, 1, 0)]
)
def test_invalid_configuration(rate: float, burst: float, max_tenants: int) -> None:
    with pytest.raises(ValueError):
        TenantRateLimiter(rate_per_s=rate, burst=burst, max_tenants=max_tenants)


@pytest.mark.parametrize(("wait", "expected"), [(0.0, 1), (0.001, 1), (1.0, 1), (1.01, 2), (7.5, 8)])
def test_retry_after_seconds(wait: float, expected: int) -> None:
    assert retry_after_seconds(wait) == expected


# --- ConcurrencyGate ---------------------------------------------------------------------------------


def test_gate_admits_up_to_max_then_refuses() -> None:
    gate = ConcurrencyGate(max_in_flight=2)
    assert gate.try_enter()
    assert gate.try_enter()
    assert not gate.try_enter()
    assert gate.in_flight == 2
    gate.leave()
    assert gate.in_flight == 1
    assert gate.try_enter()
    assert not gate.try_enter()


def test_gate_leave_without_enter_raises() -> None:
    gate = ConcurrencyGate(max_in_flight=1)
    with pytest.raises(RuntimeError):
        gate.leave()
    assert gate.in_flight == 0


def test_gate_is_thread_safe() -> None:
    gate = ConcurrencyGate(max_in_flight=10)
    entered: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def worker() -> None:
        start.wait()
        ok = [gate.try_enter() for _ in range(50)]
        with lock:
            entered.extend(ok)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(entered) == 10
    assert gate.in_flight == 10
    for _ in range(10):
        gate.leave()
    assert gate.in_flight == 0


def test_gate_invalid_configuration() -> None:
    with pytest.raises(ValueError):
        ConcurrencyGate(max_in_flight=0)
