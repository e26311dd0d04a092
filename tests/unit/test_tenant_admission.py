"""Tenant budgets across Gateway replicas: two admissions sharing one in-process ledger act as two replicas.

Time is a fake clock moved by the test; every figure is a count of admitted requests.
"""

from __future__ import annotations

import asyncio

import pytest

from serve_app.budget_ledger import BudgetLedger, BudgetLedgerActor
from serve_app.rate_limit import TenantRateLimiter
from serve_app.tenant_admission import InProcessLedgerLink, TenantAdmission


class FakeClock:
    """Named fake: monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FailingLedgerFake:
    """Named fake: a ledger that cannot be reached."""

    def __init__(self) -> None:
        self.calls = 0

    async def sync(self, replica: str, reports: dict[str, tuple[int, float]], rate_per_s: float,
                   burst: float) -> tuple[dict[str, tuple[float, float, int]], int, int]:
        self.calls += 1
        raise ConnectionError("ledger unreachable (FailingLedgerFake)")


RATE, BURST = 10.0, 20


def replicas(n: int, clock: FakeClock, pool: int = 32) -> list[TenantAdmission]:
    link = InProcessLedgerLink(BudgetLedgerActor(BudgetLedger(clock=clock)))
    return [TenantAdmission(RATE, BURST, pool, 2, ledger=link, replica=f"r{i}", clock=clock) for i in range(n)]


def drive(admissions: list[TenantAdmission], clock: FakeClock, route: list[int], seconds: float = 10.0) -> int:
    """One request every 50 ms for ``seconds`` to the replicas in ``route`` (cycled); every replica syncs
    every 100 ms, as the background loop does. Returns how many requests were admitted."""
    admitted = 0
    for step in range(int(seconds / 0.05)):
        if admissions[route[step % len(route)]].try_acquire("org-a") is None:
            admitted += 1
        clock.now += 0.05
        if step % 2 == 1:
            for admission in admissions:
                asyncio.run(admission.sync_once())
    return admitted


def test_rate_budget_spread_over_two_replicas_is_one_budget_not_two() -> None:
    clock = FakeClock()
    admitted = drive(replicas(2, clock), clock, route=[0, 1])
    budget = BURST + RATE * 10  # what one bucket admits in 10 s: 120
    assert budget - 10 <= admitted <= budget + 5, admitted
    # Two per-replica buckets (what the Gateway had before) would have admitted nearly all 200.
    clock = FakeClock()
    local = [TenantRateLimiter(RATE, BURST, clock=clock) for _ in range(2)]
    per_replica = sum(local[step % 2].try_acquire("org-a") is None for step in range(200) if not setattr(
        clock, "now", clock.now + 0.05))
    assert per_replica >= 2 * budget - 45


def test_a_tenant_that_reaches_one_replica_only_keeps_its_whole_budget() -> None:
    clock = FakeClock()
    admitted = drive(replicas(2, clock), clock, route=[0])  # direct ingress: the public port is replica 0's
    assert admitted >= BURST + RATE * 10 - 10, admitted


def test_one_replica_with_the_ledger_admits_what_the_plain_bucket_admits() -> None:
    clock = FakeClock()
    admitted = drive(replicas(1, clock), clock, route=[0])
    assert BURST + RATE * 10 - 5 <= admitted <= BURST + RATE * 10 + 1, admitted


def test_a_refusal_says_how_long_to_wait() -> None:
    clock = FakeClock()
    [admission] = replicas(1, clock)
    assert all(admission.try_acquire("org-a") is None for _ in range(BURST))
    wait = admission.try_acquire("org-a")
    assert wait is not None and 0 < wait <= 1 / RATE + 1e-9
    assert admission.try_acquire("org-b") is None  # another tenant keeps its whole budget


def test_a_lone_tenant_is_not_limited_and_shares_a_full_pool_once_another_is_active() -> None:
    clock = FakeClock()
    [admission] = replicas(1, clock, pool=8)
    assert all(admission.enter("org-a") for _ in range(20))  # alone: the whole service, past the pool
    assert admission.limit("org-a") is None
    assert admission.enter("org-b")  # under its share (8 // 2 = 4): let in although the pool is full
    assert admission.limit("org-a") == 4 and admission.limit("org-b") == 4
    assert not admission.enter("org-a")  # the pool is full and a holds more than its share
    for _ in range(20 - 3):
        admission.leave("org-a")
    # 3 + 1 in flight: room in the pool, so a may take it (work-conserving) until the pool is full again.
    assert [admission.enter("org-a") for _ in range(5)] == [True, True, True, True, False]
    assert admission.in_flight("org-a") == 7 and admission.enter("org-b") and admission.enter("org-b")
    # b has nothing in flight any more: a is alone again, at once (no sync needed on one replica).
    for _ in range(3):
        admission.leave("org-b")
    assert admission.limit("org-a") is None and admission.enter("org-a")


def test_a_tenant_that_was_busy_a_moment_ago_does_not_limit_the_next_one() -> None:
    clock = FakeClock()
    [admission] = replicas(1, clock, pool=4)
    for _ in range(3):
        assert admission.enter("org-earlier")
        admission.leave("org-earlier")
    asyncio.run(admission.sync_once())
    assert all(admission.enter("org-next") for _ in range(32))  # alone now, however busy


def test_calls_in_flight_count_across_replicas() -> None:
    clock = FakeClock()
    r0, r1 = replicas(2, clock, pool=32)
    assert r1.enter("org-b")  # b active at replica 1
    assert sum(r0.enter("org-a") for _ in range(40)) == 40  # replica 0 has not heard of b yet
    assert r1.enter("org-a")  # replica 1 has not heard of a's 40 calls yet: admitted
    r1.leave("org-a")
    for admission in (r0, r1, r0, r1):
        asyncio.run(admission.sync_once())
    # Within a sync each replica knows the other's: b is active, a holds 40 calls (at replica 0),
    # over its share of 32 // 2 = 16, so a is refused at both replicas while b is still admitted.
    assert r0.limit("org-a") == 16 and r1.limit("org-a") == 16
    assert not r1.enter("org-a") and not r0.enter("org-a")
    assert r1.enter("org-b") and r0.enter("org-b")


def test_an_unreachable_ledger_leaves_the_replica_admitting_on_its_own() -> None:
    clock = FakeClock()
    failing = FailingLedgerFake()
    admission = TenantAdmission(RATE, BURST, ledger=failing, replica="r0", clock=clock)
    assert sum(admission.try_acquire("org-a") is None for _ in range(BURST + 5)) == BURST
    asyncio.run(admission.sync_once())
    assert failing.calls == 1 and admission.sync_errors == 1
    clock.now += 1.0
    assert sum(admission.try_acquire("org-a") is None for _ in range(20)) == RATE


def test_leave_without_enter_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        TenantAdmission(RATE, BURST).leave("org-a")
