"""Concurrent embed calls of one model share Ray handle calls, each keeping its tenant.

Every Gateway request used to cost one Ray handle call to an Embedder replica: a serialization, a
hop through the replica's queue and a ``@serve.batch`` pass per request. With 32 single-text clients
that per-call overhead, not the model, capped the throughput on a small machine. The merger sends a
call at once when fewer than ``max_in_flight`` are in flight (an idle service adds no wait); the
requests that arrive while those are out wait here and leave together in the next call, one list
entry per request with its tenant. The Embedder queues each entry under its tenant
(deployments/fair_queue.py). The Gateway keeps one merger per (model, tenant): a call returns when
the last request in it is done, so a call that mixed a flooding tenant's texts with a trickle's would
hold the trickle's answer until the flood's share of the call got through the fair queue, and calls
full of the flood would take every slot in flight. Per tenant, a flood merges with itself and the
trickle goes out at once in a call of its own; fairness stays where the model's passes are formed.

A merged call holds at most ``max_texts`` texts (a single larger request goes alone); a failure of
the call fails the requests in it only; a request that gave up (timeout, client gone) is skipped
when the answer comes. One event loop owns a merger (the Gateway's).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from deployments.backends import EmbedOutput

# The Embedder's answer to a merged call: per request, its vectors or the exception it met.
Send = Callable[[list[tuple[list[str], str]]], Awaitable[list[EmbedOutput | Exception]]]

DEFAULT_MAX_IN_FLIGHT = 2
DEFAULT_MAX_TEXTS = 256


@dataclass
class _Pending:
    texts: list[str]
    tenant: str
    future: asyncio.Future[EmbedOutput]


class CallMerger:
    """Sends embed requests in merged handle calls, at most ``max_in_flight`` calls at a time."""

    def __init__(self, send: Send, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 max_texts: int = DEFAULT_MAX_TEXTS, on_idle: Callable[[CallMerger], None] | None = None) -> None:
        if max_in_flight < 1 or max_texts < 1:
            raise ValueError("max_in_flight and max_texts must be >= 1")
        self._send = send
        self._on_idle = on_idle  # told when the last call in flight ends with nothing waiting
        self.max_in_flight = max_in_flight
        self.max_texts = max_texts
        self._pending: deque[_Pending] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def idle(self) -> bool:
        """Nothing waits and nothing is in flight (the owner may drop it)."""
        return not self._pending and self._in_flight == 0

    async def embed(self, texts: list[str], tenant: str) -> EmbedOutput:
        future: asyncio.Future[EmbedOutput] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(texts, tenant, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._pending and self._in_flight < self.max_in_flight:
            group = self._take()
            if not group:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._call(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Pending]:
        group: list[_Pending] = []
        texts = 0
        while self._pending:
            head = self._pending[0]
            if head.future.done():  # its caller gave up while it waited
                self._pending.popleft()
                continue
            if group and texts + len(head.texts) > self.max_texts:
                break
            group.append(self._pending.popleft())
            texts += len(head.texts)
        return group

    async def _call(self, group: list[_Pending]) -> None:
        try:
            results = await self._send([(p.texts, p.tenant) for p in group])
        except asyncio.CancelledError:
            for pending in group:
                pending.future.cancel()
            raise
        except Exception as exc:  # the call itself failed: every request in it gets the error
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        else:
            for pending, result in zip(group, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, Exception):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)
        finally:
            self._in_flight -= 1
            self._dispatch()
            if self.idle and self._on_idle is not None:
                self._on_idle(self)
