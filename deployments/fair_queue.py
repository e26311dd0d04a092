"""Per-tenant queues served by Deficit Round Robin: the order in which texts reach the model.

Deficit Round Robin (Shreedhar & Varghese, 1995; Linux ``net/sched/sch_drr.c``): each tenant with
something queued is in a round-robin list with a deficit counter. A tenant that becomes active starts
with ``quantum``. Serving looks at the first tenant: if its head item's cost fits its deficit, the item
is taken and the deficit shrinks by the cost; otherwise the tenant gets another ``quantum`` and moves to
the tail. A tenant whose queue empties leaves the list (and its deficit). Every tenant with work gets
``quantum`` of cost per round whatever the others have queued, so a tenant's backlog can never delay
another tenant's items by more than one round.

Here the cost is texts (what a model pass is capped by), and one ``take`` forms one model pass:

* a pass holds at most ``budget`` cost, except that one item larger than the budget goes alone;
* while two or more tenants have work (``contended``), a pass ends after one round, so that a pass
  is about ``quantum`` per active tenant and a newcomer waits at most for the short pass in progress;
* a tenant alone gets rounds until the budget is full (fairness costs it nothing).

``fair=False`` serves the same items in arrival order (one FIFO across tenants), the behaviour before
per-tenant queues; it is the negative control of the fairness tests and can be switched live.
Not thread-safe: one event loop owns it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Queued(Generic[T]):
    item: T
    cost: int
    seq: int  # arrival order across every tenant (FIFO mode)


class _TenantQueue(Generic[T]):
    __slots__ = ("cost", "deficit", "items")

    def __init__(self) -> None:
        self.items: deque[_Queued[T]] = deque()
        self.deficit = 0
        self.cost = 0  # summed cost of the items queued


class DeficitRoundRobin(Generic[T]):
    """Items queued per tenant, taken DRR-fair (or FIFO with ``fair=False``) in passes of a cost budget."""

    def __init__(self, quantum: int, fair: bool = True) -> None:
        if quantum < 1:
            raise ValueError("quantum must be >= 1")
        self.quantum = quantum
        self.fair = fair
        self._queues: dict[str, _TenantQueue[T]] = {}
        self._active: deque[str] = deque()  # tenants with items, in round-robin order
        self._seq = itertools.count()

    def __len__(self) -> int:
        return sum(len(q.items) for q in self._queues.values())

    def __bool__(self) -> bool:
        return bool(self._active)

    def push(self, tenant: str, item: T, cost: int) -> None:
        """Queue ``item`` for ``tenant``; ``cost`` >= 1 (texts)."""
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = _TenantQueue()
        if not queue.items:  # the tenant becomes active: it joins the round with one quantum
            queue.deficit = self.quantum
            self._active.append(tenant)
        queue.items.append(_Queued(item, max(1, cost), next(self._seq)))
        queue.cost += max(1, cost)

    def depth(self) -> dict[str, int]:
        """Queued cost (texts) per tenant with anything queued."""
        return {tenant: self._queues[tenant].cost for tenant in self._active}

    def items(self) -> Iterator[tuple[str, T]]:
        """Every queued item with its tenant, tenant by tenant (for inspection, e.g. skipping cancelled ones)."""
        for tenant in list(self._active):
            for queued in self._queues[tenant].items:
                yield tenant, queued.item

    def take(self, budget: int, contended: bool | None = None) -> list[tuple[str, T]]:
        """The items of the next pass: at most ``budget`` cost (a single larger item goes alone).

        ``contended`` (default: more than one tenant has items queued): the pass ends after one round,
        each tenant queued now visited once. The caller may say a pass is contended although one tenant
        is queued, e.g. when another was served moments ago and is likely to come back: the pass then
        holds one quantum of the lone tenant, so the other's next request waits for a short pass only.
        """
        if budget < 1:
            raise ValueError("budget must be >= 1")
        if not self._active:
            return []
        if not self.fair:
            return self._take_fifo(budget)
        if contended is None:
            contended = len(self._active) > 1
        return self._take_fair(budget, contended)

    def _pop(self, tenant: str) -> _Queued[T]:
        queue = self._queues[tenant]
        queued = queue.items.popleft()
        queue.cost -= queued.cost
        if not queue.items:
            queue.deficit = 0
            self._active.remove(tenant)
            del self._queues[tenant]  # memory stays bounded by the tenants with work
        return queued

    def _take_fair(self, budget: int, contended: bool) -> list[tuple[str, T]]:
        taken: list[tuple[str, T]] = []
        used = 0
        visits_left = len(self._active)  # tenants still to visit in this round
        while self._active:
            if contended and visits_left <= 0:
                if taken:
                    break  # one round while tenants compete: the pass ends here
                visits_left = len(self._active)  # nothing fitted any deficit yet: another round
            tenant = self._active[0]
            queue = self._queues[tenant]
            head = queue.items[0]
            if head.cost <= queue.deficit:
                if taken and used + head.cost > budget:
                    break  # the pass is full; this tenant stays first, with its deficit, for the next pass
                queue.deficit -= head.cost
                taken.append((tenant, self._pop(tenant).item))
                used += head.cost
                if tenant not in self._queues:
                    visits_left -= 1  # its queue emptied: its visit is over
                continue
            queue.deficit += self.quantum  # its turn is over: one more quantum for the next round
            self._active.rotate(-1)
            visits_left -= 1
        return taken

    def _take_fifo(self, budget: int) -> list[tuple[str, T]]:
        taken: list[tuple[str, T]] = []
        used = 0
        while self._active:
            tenant = min(self._active, key=lambda name: self._queues[name].items[0].seq)
            head = self._queues[tenant].items[0]
            if taken and used + head.cost > budget:
                break
            taken.append((tenant, self._pop(tenant).item))
            used += head.cost
        return taken
