"""The Embedder's Coalescer: batches that wait while the model is busy merge into the next pass."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from deployments.backends import EmbedOutput
from deployments.embedder import Coalescer


class FakeModelPass:
    """Named fake: stands in for the model thread; records each pass and can be held or made to fail."""

    def __init__(self) -> None:
        self.passes: list[list[list[str]]] = []
        self.release = threading.Event()
        self.release.set()
        self.fail_on: str | None = None

    def __call__(self, requests: list[list[str]]) -> list[EmbedOutput]:
        self.passes.append(requests)
        self.release.wait(5)
        flat = [t for texts in requests for t in texts]
        if self.fail_on is not None and self.fail_on in flat:
            raise RuntimeError("model pass failed")
        return [EmbedOutput(np.array([[float(len(t))] for t in texts], dtype=np.float32),
                            [len(t) for t in texts], [False] * len(texts)) for texts in requests]


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


async def test_idle_submission_runs_alone_and_gets_its_own_vectors(executor: ThreadPoolExecutor) -> None:
    model = FakeModelPass()
    coalescer = Coalescer(model, executor)
    out = await coalescer.submit([["a", "bbb"]])
    assert len(model.passes) == 1
    assert out[0].vectors[:, 0].tolist() == [1.0, 3.0]


async def test_submissions_waiting_during_a_pass_merge_into_one_next_pass(executor: ThreadPoolExecutor) -> None:
    model = FakeModelPass()
    model.release.clear()
    coalescer = Coalescer(model, executor)
    first = asyncio.create_task(coalescer.submit([["x"]]))
    while not model.passes:  # the first pass is now holding the model
        await asyncio.sleep(0.001)
    later = [asyncio.create_task(coalescer.submit([["y" * (i + 1)], ["z"]])) for i in range(10)]
    await asyncio.sleep(0.01)
    assert coalescer.waiting == 20  # calls queued: two per submission
    model.release.set()
    results = await asyncio.gather(first, *later)
    assert [len(p) for p in model.passes] == [1, 20]  # one pass for all ten waiting submissions
    for i, result in enumerate(results[1:]):  # each caller gets exactly its own slice, in order
        assert [r.vectors[0, 0] for r in result] == [float(i + 1), 1.0]


async def test_pass_size_is_capped_and_a_failed_pass_fails_only_its_callers(executor: ThreadPoolExecutor) -> None:
    model = FakeModelPass()
    model.release.clear()
    model.fail_on = "bad"
    coalescer = Coalescer(model, executor, max_texts_per_pass=4)
    first = asyncio.create_task(coalescer.submit([["hold"]]))
    while not model.passes:
        await asyncio.sleep(0.001)
    doomed = asyncio.create_task(coalescer.submit([["bad", "a", "b"]]))
    fine = asyncio.create_task(coalescer.submit([["c", "d", "e"]]))  # 3 + 3 > 4: its own pass
    await asyncio.sleep(0.01)
    model.release.set()
    await first
    with pytest.raises(RuntimeError, match="model pass failed"):
        await doomed
    assert (await fine)[0].vectors.shape == (3, 1)
    assert [sum(len(t) for t in p) for p in model.passes] == [1, 3, 3]


async def test_cancelled_caller_is_skipped(executor: ThreadPoolExecutor) -> None:
    model = FakeModelPass()
    model.release.clear()
    coalescer = Coalescer(model, executor)
    first = asyncio.create_task(coalescer.submit([["hold"]]))
    while not model.passes:
        await asyncio.sleep(0.001)
    gone = asyncio.create_task(coalescer.submit([["gone"]]))
    kept = asyncio.create_task(coalescer.submit([["kept"]]))
    await asyncio.sleep(0.01)
    gone.cancel()
    model.release.set()
    await first
    assert (await kept)[0].vectors[0, 0] == 4.0
    assert model.passes[1] == [["kept"]]


FLOOD_CLIENTS = 32
FLOOD_TEXTS = 32  # per request: the flood keeps ~1,000 texts queued, many passes' worth
TRICKLE_REQUESTS = 25


async def flood_and_trickle(executor: ThreadPoolExecutor, fair: bool) -> tuple[Coalescer, list[int], int]:
    """Tenant "flood" keeps 32 closed-loop clients of 32 texts busy while tenant "trickle" sends 25
    single-text requests one after another. Returns the coalescer, in which pass after its arrival each
    trickle request rode (1 = the first to start), and how many flood requests were answered."""
    model = FakeModelPass()
    coalescer = Coalescer(model, executor, max_texts_per_pass=128, quantum=32, fair=fair)
    stop = asyncio.Event()
    answered = 0

    async def flood_client(c: int) -> None:
        nonlocal answered
        n = 0
        while not stop.is_set():
            texts = [f"flood {c} {n} {i}" for i in range(FLOOD_TEXTS)]
            out = await coalescer.embed(texts, "flood")
            assert out.vectors[:, 0].tolist() == [float(len(t)) for t in texts]  # its own vectors, in order
            answered += 1
            n += 1

    flood = [asyncio.create_task(flood_client(c)) for c in range(FLOOD_CLIENTS)]
    while coalescer.passes < 3:  # the flood's backlog is in place before the trickle starts
        await asyncio.sleep(0.001)
    for i in range(TRICKLE_REQUESTS):
        text = "trickle " + "x" * i
        out = await coalescer.embed([text], "trickle")
        assert out.vectors[0, 0] == float(len(text))
    stop.set()
    await asyncio.wait_for(asyncio.gather(*flood), 30)
    nth = [n for record in coalescer.recent_passes() for tenant, _, n in record.requests if tenant == "trickle"]
    return coalescer, nth, answered


@pytest.mark.parametrize("fair", [True, False], ids=["fair", "fifo-negative-control"])
async def test_a_trickle_rides_the_first_or_second_pass_while_another_tenant_floods(
        executor: ThreadPoolExecutor, fair: bool) -> None:
    coalescer, nth, answered = await asyncio.wait_for(flood_and_trickle(executor, fair), 60)
    assert len(nth) == TRICKLE_REQUESTS  # every trickle request was served, in exactly one pass
    assert answered > FLOOD_CLIENTS and coalescer.waiting == 0  # the flood kept going; nothing left behind
    flood_texts = sum(r.texts.get("flood", 0) for r in coalescer.recent_passes())
    assert flood_texts == answered * FLOOD_TEXTS  # every flood text was in exactly one pass, none lost
    if fair:
        assert max(nth) <= 2, nth
    else:  # the same load in one arrival-order queue: the trickle waits behind the flood's backlog
        assert max(nth) > 2, nth


async def test_pass_records_and_wait_callback_name_each_tenant(executor: ThreadPoolExecutor) -> None:
    waits: list[tuple[str, float]] = []
    model = FakeModelPass()
    model.release.clear()
    coalescer = Coalescer(model, executor, on_wait=lambda tenant, s: waits.append((tenant, s)))
    first = asyncio.create_task(coalescer.embed(["hold"], "org-a"))
    while not model.passes:
        await asyncio.sleep(0.001)
    later = [asyncio.create_task(coalescer.embed(["b1", "b2"], "org-b")),
             asyncio.create_task(coalescer.embed(["a2"], "org-a"))]
    await asyncio.sleep(0.01)
    assert coalescer.queued_texts() == {"org-b": 2, "org-a": 1}
    model.release.set()
    await asyncio.gather(first, *later)
    records = coalescer.recent_passes()
    assert [r.seq for r in records] == [1, 2] and coalescer.recent_passes(after=1) == records[1:]
    assert records[1].texts == {"org-a": 1, "org-b": 2} and records[1].contended
    assert sorted(records[1].requests) == [("org-a", 1, 1), ("org-b", 2, 1)]
    assert sorted(tenant for tenant, _ in waits) == ["org-a", "org-a", "org-b"]
    assert all(s >= 0 for _, s in waits)


async def test_a_large_call_is_queued_in_quantum_pieces_and_answered_whole_in_order(
        executor: ThreadPoolExecutor) -> None:
    model = FakeModelPass()
    model.release.clear()
    coalescer = Coalescer(model, executor, quantum=8)
    first = asyncio.create_task(coalescer.embed(["hold"], "org-b"))
    while not model.passes:
        await asyncio.sleep(0.001)
    texts = ["t" + "x" * i for i in range(20)]
    big = asyncio.create_task(coalescer.embed(texts, "org-a"))
    small = asyncio.create_task(coalescer.embed(["s"], "org-b"))
    await asyncio.sleep(0.01)
    assert coalescer.waiting == 4 and coalescer.queued_texts() == {"org-a": 20, "org-b": 1}  # 8 + 8 + 4, and 1
    model.release.set()
    out = await big
    assert out.vectors[:, 0].tolist() == [float(len(t)) for t in texts] and len(out.token_counts) == 20
    assert (await small).vectors.shape == (1, 1) and (await first).vectors.shape == (1, 1)
    # org-b was served moments ago, so passes are contended: none holds more than a quantum of org-a's texts.
    assert [r.texts.get("org-a", 0) for r in coalescer.recent_passes()] == [0, 8, 8, 4]
    assert coalescer.recent_passes()[1].texts == {"org-a": 8, "org-b": 1}


def test_user_config_takes_fair_queueing_and_quantum_and_refuses_bad_values() -> None:
    from deployments.embedder import EmbedderConfig

    config = EmbedderConfig.parse({"fair_queueing": False, "quantum_texts": 16})
    assert config.fair_queueing is False and config.quantum_texts == 16
    assert EmbedderConfig.parse({}).fair_queueing is True
    for bad in ({"fair_queueing": "no"}, {"quantum_texts": 0}, {"quantum": 8}):
        with pytest.raises(ValueError):
            EmbedderConfig.parse(bad)
