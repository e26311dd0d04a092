"""The tenants' budgets as one shared state for every Gateway replica: the ``BudgetLedger`` actor.

Why shared state and not "the budget divided by the live replicas": a tenant's requests do not spread
evenly over Gateway replicas. Under direct ingress each replica has its own port and the public port
reaches one of them, and a load balancer spreads connections, not tenants; dividing would cut a tenant
to half its budget as soon as autoscaling adds a replica that its traffic never reaches.

Why not a remote call per request: ~1 ms and a CPU hop on the hot path of a 2-core machine. Instead
each replica decides locally and reconciles with the ledger every ``sync_interval_s`` (0.1 s), off the
request path (:mod:`serve_app.tenant_admission`). The ledger holds, per tenant,

* the one token bucket (``rate_per_s``, ``burst``): each report charges the tokens a replica spent; the
  reply gives each replica its part of what is left, in proportion to what it spent lately (a replica
  the tenant does not use gets almost nothing), so the replicas together admit what one would;
* the calls in flight at each replica, so each replica knows the others' counts (the tenant's and
  everyone's) and how many tenants are active (the fair share of the concurrency budget).

The figures are exact up to one sync interval of what other replicas admitted meanwhile. A replica not
heard from for ``replica_ttl_s`` (crashed, scaled down) stops counting. The ledger is plain Python; the
Ray actor around it is named and detached, like the store actor, so every replica finds the same one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REPLICA_TTL_S = 5.0
LEDGER_NAMESPACE = "heimdex"


@dataclass
class _ReplicaView:
    in_flight: int = 0
    spent: float = 0.0  # tokens charged in its last report
    seen: float = 0.0


@dataclass
class _TenantLedger:
    tokens: float
    updated: float
    replicas: dict[str, _ReplicaView] = field(default_factory=dict)

    def in_flight(self, now: float, ttl_s: float) -> int:
        return sum(v.in_flight for v in self.replicas.values() if now - v.seen <= ttl_s)


@dataclass(frozen=True)
class TenantReport:
    """What one replica tells the ledger about one tenant since its last report."""

    in_flight: int
    spent: float


@dataclass(frozen=True)
class TenantReply:
    """What the ledger tells one replica about one tenant."""

    tokens: float  # this replica's part of the bucket now
    share: float  # this replica's part of the refill rate (0..1]
    others_in_flight: int  # requests in flight at the other replicas


class BudgetLedger:
    """Per-tenant token buckets and in-flight counts, reported by and shared across Gateway replicas."""

    def __init__(self, replica_ttl_s: float = REPLICA_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.replica_ttl_s = replica_ttl_s
        self._clock = clock
        self._tenants: dict[str, _TenantLedger] = {}

    def sync(self, replica: str, reports: dict[str, TenantReport], rate_per_s: float,
             burst: float) -> tuple[dict[str, TenantReply], int, int]:
        """Charge ``replica``'s reports; return its view of those tenants, the number of active tenants and
        the calls in flight at the other replicas, all tenants together."""
        now = self._clock()
        replies: dict[str, TenantReply] = {}
        for tenant, report in reports.items():
            ledger = self._tenants.get(tenant)
            if ledger is None:
                ledger = self._tenants[tenant] = _TenantLedger(float(burst), now)
            ledger.tokens = min(float(burst), ledger.tokens + max(0.0, now - ledger.updated) * rate_per_s)
            ledger.updated = now
            ledger.tokens -= report.spent  # may go below zero: a debt the refill pays first
            view = ledger.replicas.setdefault(replica, _ReplicaView())
            view.in_flight, view.spent, view.seen = report.in_flight, report.spent, now
            for name in [name for name, v in ledger.replicas.items() if now - v.seen > self.replica_ttl_s]:
                del ledger.replicas[name]
            # Weights: what each replica spent in its last report, plus a little so a replica that only
            # starts seeing the tenant is not shut out until its next report.
            weights = {name: v.spent + 1.0 for name, v in ledger.replicas.items()}
            share = weights[replica] / sum(weights.values())
            replies[tenant] = TenantReply(
                tokens=ledger.tokens * share,
                share=share,
                others_in_flight=sum(v.in_flight for name, v in ledger.replicas.items() if name != replica))
        self._forget_idle(now, burst, rate_per_s)
        elsewhere = sum(v.in_flight for ledger in self._tenants.values() for name, v in ledger.replicas.items()
                        if name != replica and now - v.seen <= self.replica_ttl_s)
        return replies, self.active_tenants(now), elsewhere

    def active_tenants(self, now: float | None = None) -> int:
        """Tenants with a call in flight at some live replica, as last reported."""
        now = self._clock() if now is None else now
        return sum(1 for ledger in self._tenants.values() if ledger.in_flight(now, self.replica_ttl_s) > 0)

    def _forget_idle(self, now: float, burst: float, rate_per_s: float) -> None:
        """Drop tenants whose bucket is full again and who have nothing in flight (memory stays bounded)."""
        full_after = burst / rate_per_s if rate_per_s > 0 else float("inf")
        idle = [tenant for tenant, ledger in self._tenants.items()
                if now - ledger.updated > max(full_after, self.replica_ttl_s)
                and ledger.in_flight(now, self.replica_ttl_s) == 0]
        for tenant in idle:
            del self._tenants[tenant]

    def __len__(self) -> int:
        return len(self._tenants)

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._tenants


class BudgetLedgerActor:
    """The Ray actor around :class:`BudgetLedger` (plain values in and out)."""

    def __init__(self, ledger: BudgetLedger | None = None) -> None:
        self.ledger = ledger if ledger is not None else BudgetLedger()

    def sync(self, replica: str, reports: dict[str, tuple[int, float]], rate_per_s: float,
             burst: float) -> tuple[dict[str, tuple[float, float, int]], int, int]:
        replies, active, elsewhere = self.ledger.sync(
            replica, {t: TenantReport(int(n), float(spent)) for t, (n, spent) in reports.items()}, rate_per_s, burst)
        return {t: (r.tokens, r.share, r.others_in_flight) for t, r in replies.items()}, active, elsewhere

    def knows(self, tenant: str) -> bool:
        """Whether some replica reported ``tenant`` lately (operators and tests)."""
        return tenant in self.ledger


def get_ledger_actor(name: str) -> Any:
    """Get or create the detached ledger actor ``name`` (no CPU reserved: it does arithmetic only)."""
    import ray

    remote_cls: Any = ray.remote(BudgetLedgerActor)
    return remote_cls.options(name=name, namespace=LEDGER_NAMESPACE, get_if_exists=True, lifetime="detached",
                              num_cpus=0, max_restarts=-1).remote()
