"""The Gateway's call merger: concurrent requests share handle calls, each keeps its tenant and its answer.

The ``send`` here is a fake of the Embedder's ``embed_many`` (named FakeEmbedder): it records every call
it gets and answers with one vector per text, so the tests see how requests were grouped.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deployments.backends import EmbedOutput
from serve_app.call_merger import CallMerger


async def settle() -> None:
    """Let the tasks just created run up to their next wait (no timers involved)."""
    for _ in range(3):
        await asyncio.sleep(0)


class FakeEmbedder:
    """Fake: answers each request with vectors whose first value is the text's length; can be held."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[list[str], str]]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail: set[str] = set()

    async def send(self, calls: list[tuple[list[str], str]]) -> list[EmbedOutput | Exception]:
        self.calls.append(calls)
        await self.release.wait()
        out: list[EmbedOutput | Exception] = []
        for texts, _tenant in calls:
            if any(t in self.fail for t in texts):
                out.append(ValueError(f"bad text in {texts}"))
                continue
            vectors = np.array([[float(len(t)), 0.0] for t in texts], dtype=np.float32)
            out.append(EmbedOutput(vectors=vectors, token_counts=[1] * len(texts), truncated=[False] * len(texts)))
        return out


def test_an_idle_merger_sends_at_once_and_requests_arriving_meanwhile_share_the_next_call() -> None:
    async def main() -> None:
        fake = FakeEmbedder()
        fake.release.clear()
        merger = CallMerger(fake.send, max_in_flight=1)
        first = asyncio.create_task(merger.embed(["a"], "t1"))
        await settle()
        assert len(fake.calls) == 1  # no wait when nothing is in flight
        rest = [asyncio.create_task(merger.embed(["x" * n], "t1")) for n in range(2, 6)]
        await settle()
        assert len(fake.calls) == 1 and merger.waiting == 4
        fake.release.set()
        outputs = await asyncio.gather(first, *rest)
        assert [float(o.vectors[0][0]) for o in outputs] == [1.0, 2.0, 3.0, 4.0, 5.0]  # each its own answer
        assert [len(call) for call in fake.calls] == [1, 4]  # the four waiting requests left in one call
        assert merger.idle

    asyncio.run(main())


def test_a_merged_call_keeps_each_request_tenant_and_texts_and_respects_max_texts() -> None:
    async def main() -> None:
        fake = FakeEmbedder()
        fake.release.clear()
        merger = CallMerger(fake.send, max_in_flight=1, max_texts=5)
        blocker = asyncio.create_task(merger.embed(["0"], "a"))
        await settle()
        tasks = [asyncio.create_task(merger.embed(["t"] * 3, tenant)) for tenant in ("a", "b", "c")]
        await settle()
        fake.release.set()
        await asyncio.gather(blocker, *tasks)
        assert fake.calls[1] == [(["t"] * 3, "a")]  # 3 + 3 > 5: the second request waits for the next call
        assert fake.calls[2] == [(["t"] * 3, "b")]
        assert fake.calls[3] == [(["t"] * 3, "c")]

    asyncio.run(main())


def test_a_failed_request_fails_alone_and_a_failed_call_fails_its_requests_only() -> None:
    async def main() -> None:
        fake = FakeEmbedder()
        fake.release.clear()
        fake.fail = {"bad"}
        merger = CallMerger(fake.send, max_in_flight=1)
        blocker = asyncio.create_task(merger.embed(["ok"], "t"))
        await settle()
        good = asyncio.create_task(merger.embed(["fine"], "t"))
        bad = asyncio.create_task(merger.embed(["bad"], "t"))
        await settle()
        fake.release.set()
        assert float((await good).vectors[0][0]) == 4.0
        with pytest.raises(ValueError, match="bad text"):
            await bad
        await blocker

        async def broken(calls: list[tuple[list[str], str]]) -> list[EmbedOutput | Exception]:
            raise ConnectionError("replica died")

        merger2 = CallMerger(broken)
        with pytest.raises(ConnectionError):
            await merger2.embed(["x"], "t")
        assert merger2.idle

    asyncio.run(main())


def test_a_request_that_gave_up_is_skipped_and_idle_is_reported() -> None:
    async def main() -> None:
        fake = FakeEmbedder()
        fake.release.clear()
        idle: list[CallMerger] = []
        merger = CallMerger(fake.send, max_in_flight=1, on_idle=idle.append)
        blocker = asyncio.create_task(merger.embed(["a"], "t"))
        await settle()
        gone = asyncio.create_task(merger.embed(["gone"], "t"))
        kept = asyncio.create_task(merger.embed(["kept"], "t"))
        await settle()
        gone.cancel()
        fake.release.set()
        await blocker
        assert float((await kept).vectors[0][0]) == 4.0
        assert fake.calls[1] == [(["kept"], "t")]  # the cancelled request never left
        assert idle == [merger]

    asyncio.run(main())
