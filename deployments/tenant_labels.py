"""Who a model pass works for, and tenant names safe to use as metric labels.

The Gateway sends each request's tenant (the token's ``org_id``, ``anonymous`` for anonymous
development calls) with the texts; the relay sends its batches as one tenant of its own. The
names below cannot be an ``org_id`` (those allow no parentheses), so they never merge with a real one.
"""

from __future__ import annotations

import threading

# The write path (OutboxRelay): its batches are already fair across tenants (serve_app/db/outbox.py).
RELAY_TENANT = "(relay)"
# A caller that named no tenant (a direct handle call from a tool or test).
UNNAMED_TENANT = "(unnamed)"
# The label of every tenant past the first ``max_labels``.
OTHER_LABEL = "(other)"
DEFAULT_MAX_TENANT_LABELS = 20


class TenantLabels:
    """A bounded map from tenants to metric labels: the first ``max_labels`` tenants seen keep their own
    name for the process's life (a counter's label must not change), every later one is ``(other)``."""

    def __init__(self, max_labels: int = DEFAULT_MAX_TENANT_LABELS) -> None:
        if max_labels < 0:
            raise ValueError("max_labels must be >= 0")
        self.max_labels = max_labels
        self._named: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, tenant: str) -> str:
        if tenant in self._named:
            return tenant
        with self._lock:
            if tenant in self._named:
                return tenant
            if len(self._named) < self.max_labels:
                self._named.add(tenant)
                return tenant
        return OTHER_LABEL
