"""Tenant names as metric labels stay bounded: the first N keep their name, later ones share one label."""

from __future__ import annotations

from deployments.metrics import EmbedderMetrics
from deployments.tenant_labels import OTHER_LABEL, TenantLabels


def test_the_first_tenants_keep_their_label_for_good_and_the_rest_share_one() -> None:
    labels = TenantLabels(max_labels=2)
    assert [labels(t) for t in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER_LABEL, "a", OTHER_LABEL, "b"]


def test_embedder_tenant_figures_have_bounded_labels_and_sum_what_is_queued() -> None:
    metrics = EmbedderMetrics("m")
    metrics.tenant_labels = TenantLabels(max_labels=1)
    metrics.record_wait("org-a", 0.002)
    metrics.record_wait("org-b", 0.3)
    metrics.record_wait("org-c", 0.03)
    snapshot = metrics.tenant_snapshot({"org-a": 3, "org-b": 5, "org-c": 7})
    assert set(snapshot) == {"org-a", OTHER_LABEL}
    assert snapshot["org-a"]["queued_texts"] == 3 and snapshot[OTHER_LABEL]["queued_texts"] == 12
    assert snapshot["org-a"]["wait_s"]["count"] == 1 and snapshot[OTHER_LABEL]["wait_s"]["count"] == 2
