"""Pure functions of the SQL layer: keys, hashes, cursors, backoff (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from serve_app.db.jobs import InvalidCursorError, decode_cursor, encode_cursor
from serve_app.db.keys import make_job_key, request_hash, text_hash
from serve_app.db.outbox import backoff_delay_s

BASE = ("org-1", "embed", "asset-1", "seg-1", "minilm-l6-v2", "hello world")


def test_text_hash_is_sha256_hex() -> None:
    assert text_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_job_key_is_deterministic() -> None:
    assert make_job_key(*BASE) == make_job_key(*BASE)
    assert len(make_job_key(*BASE)) == 64


@pytest.mark.parametrize("index", range(len(BASE)))
def test_job_key_changes_with_every_field(index: int) -> None:
    changed = list(BASE)
    changed[index] += "x"
    assert make_job_key(*changed) != make_job_key(*BASE)


def test_job_key_fields_cannot_bleed_into_each_other() -> None:
    assert make_job_key("a", "embed", "b|c", "d", "m", "t") != make_job_key(
        "a", "embed", "b", "c|d", "m", "t"
    )


def test_request_hash_ignores_key_order_but_not_values() -> None:
    assert request_hash({"a": 1, "b": [1, 2]}) == request_hash({"b": [1, 2], "a": 1})
    assert request_hash({"a": 1, "b": [1, 2]}) != request_hash({"a": 1, "b": [2, 1]})


def test_cursor_round_trip_and_rejection() -> None:
    when = datetime(2026, 5, 9, 12, 30, 1, 123456, tzinfo=UTC)
    assert decode_cursor(encode_cursor(when, "job-1")) == (when, "job-1")
    for bad in ("", "not-base64!", encode_cursor(when, "x")[:-3], "WzEsMl0"):
        with pytest.raises(InvalidCursorError):
            decode_cursor(bad)


def test_backoff_grows_exponentially_with_jitter_and_cap() -> None:
    assert backoff_delay_s(1, 0.5, 60, rng=lambda: 0.5) == pytest.approx(0.5)
    assert backoff_delay_s(3, 0.5, 60, rng=lambda: 0.5) == pytest.approx(2.0)
    assert backoff_delay_s(3, 0.5, 60, rng=lambda: 0.0) == pytest.approx(1.0)
    assert backoff_delay_s(3, 0.5, 60, rng=lambda: 0.999) == pytest.approx(2.998)
    assert backoff_delay_s(50, 0.5, 60, rng=lambda: 0.5) == pytest.approx(60.0)
    assert backoff_delay_s(10_000, 0.5, 60, rng=lambda: 0.5) == pytest.approx(60.0)
