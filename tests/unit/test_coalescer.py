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
    assert coalescer.waiting == 10
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
