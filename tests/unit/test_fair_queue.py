"""Deficit Round Robin per tenant: what each pass takes, counted, never timed."""

from __future__ import annotations

import pytest

from deployments.fair_queue import DeficitRoundRobin


def flood_and_trickle(fair: bool) -> DeficitRoundRobin[str]:
    """Tenant a has 200 single texts queued, then tenant b queues one."""
    queue: DeficitRoundRobin[str] = DeficitRoundRobin(quantum=32, fair=fair)
    for i in range(200):
        queue.push("a", f"a{i}", 1)
    queue.push("b", "b0", 1)
    return queue


def test_a_lone_tenant_fills_the_budget_in_arrival_order() -> None:
    queue: DeficitRoundRobin[str] = DeficitRoundRobin(quantum=4)
    for i in range(10):
        queue.push("a", f"a{i}", 1)
    assert [item for _, item in queue.take(8)] == [f"a{i}" for i in range(8)]
    assert queue.depth() == {"a": 2}
    assert [item for _, item in queue.take(8)] == ["a8", "a9"]
    assert not queue and queue.take(8) == []


def test_a_newcomer_rides_the_next_pass_behind_one_quantum_of_the_flood() -> None:
    queue = flood_and_trickle(fair=True)
    first = queue.take(128)
    assert ("b", "b0") in first
    assert sum(1 for tenant, _ in first if tenant == "a") == 32  # one quantum: the pass is one round
    # b is gone: a alone gets full passes again (unless the caller says b may come back).
    assert len(queue.take(128)) == 128
    assert len(queue.take(128, contended=True)) == 32


def test_fifo_mode_keeps_the_newcomer_behind_the_whole_flood() -> None:
    queue = flood_and_trickle(fair=False)
    passes = [queue.take(64) for _ in range(4)]
    assert [("b", "b0") in p for p in passes] == [False, False, False, True]


def test_backlogged_tenants_get_equal_texts_whatever_their_request_sizes() -> None:
    queue: DeficitRoundRobin[str] = DeficitRoundRobin(quantum=16)
    for i in range(400):
        queue.push("big", f"big{i}", 10)  # requests of 10 texts
    for i in range(4000):
        queue.push("small", f"small{i}", 1)
    served = {"big": 0, "small": 0}
    for _ in range(40):
        for tenant, _item in queue.take(64):
            served[tenant] += 10 if tenant == "big" else 1
    assert queue.depth()["big"] > 0 and queue.depth()["small"] > 0  # both stayed backlogged
    assert abs(served["big"] - served["small"]) <= 16, served  # within one quantum
    assert served["small"] >= 500


def test_an_item_larger_than_quantum_and_budget_still_goes_alone() -> None:
    queue: DeficitRoundRobin[str] = DeficitRoundRobin(quantum=8)
    queue.push("a", "huge", 100)
    queue.push("b", "small", 2)
    first = queue.take(50)
    assert first == [("b", "small")]  # a needs several rounds of deficit; b is not held back meanwhile
    assert queue.take(50) == [("a", "huge")]


def test_depth_counts_texts_per_tenant_and_forgets_idle_tenants() -> None:
    queue: DeficitRoundRobin[str] = DeficitRoundRobin(quantum=8)
    queue.push("a", "x", 3)
    queue.push("a", "y", 2)
    queue.push("b", "z", 1)
    assert queue.depth() == {"a": 5, "b": 1} and len(queue) == 3
    queue.take(100, contended=False)
    assert queue.depth() == {} and len(queue) == 0


def test_switching_fairness_live_keeps_every_item() -> None:
    queue = flood_and_trickle(fair=True)
    queue.take(16)
    queue.fair = False
    rest = [item for _ in range(20) for _, item in queue.take(16)]
    queue.fair = True
    assert not queue
    assert len(rest) + 16 == 201 and len(set(rest)) == len(rest)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        DeficitRoundRobin(quantum=0)
    with pytest.raises(ValueError):
        DeficitRoundRobin(quantum=1).take(0)
