"""Structured logs for Heimdex: JSON lines through Serve's logger, with request id, tenant, job and stage.

Inside a Serve replica, records of the ``heimdex.*`` loggers are handed to the ``ray.serve`` logger,
so they take the ``logging_config`` of serve_config.yaml (JSON encoding, the replica's log file
under ``/tmp/ray/session_latest/logs/serve/``) and Serve's context filter adds ``request_id`` (the
proxy takes it from an incoming ``X-Request-ID`` header, or makes one, and returns it). Fields
passed with :func:`fields` become top-level JSON keys (Ray's JSON formatter writes every
non-standard record attribute). Never log a token, a header value or a full text: use
:func:`preview` for the first characters of a text.

Under direct ingress (`heimdex up`'s default) Serve's throughput profile buffers request-path
records (``RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE``, 1,000 by default there) and writes them when
the buffer is full: at low traffic a request's access line would never reach the file. Each replica
therefore flushes Serve's buffered handlers every second (:func:`start_log_flusher`), so a line is
on disk within about a second while writes stay batched under load.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import threading
import time
from typing import Any

from deployments.metrics import in_serve_replica

SERVE_LOGGER = "ray.serve"
HEIMDEX_LOGGER = "heimdex"
PREVIEW_CHARS = 40
# The only extra fields Heimdex logs carry; anything else passed to fields() is dropped.
ALLOWED_FIELDS = frozenset({
    "request_id", "tenant", "job_id", "job_ids", "stage", "model", "http_route", "method", "status",
    "duration_ms", "attempt", "count", "text_preview", "error",
})
MAX_FIELD_CHARS = 300
LOG_FLUSH_INTERVAL_S = 1.0

_configured = False


class _ToServeLogger(logging.Handler):
    """Re-emits a record through the ``ray.serve`` logger's own filters and handlers."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(SERVE_LOGGER).handle(record)


def configure_logging() -> None:
    """Route ``heimdex.*`` logs through Serve's structured logger; call once per replica at start.

    Outside a Serve replica (CLI, tests, Ray jobs) it leaves logging alone.
    """
    global _configured
    if _configured or not in_serve_replica():
        return
    heimdex = logging.getLogger(HEIMDEX_LOGGER)
    heimdex.addHandler(_ToServeLogger())
    heimdex.setLevel(logging.INFO)
    heimdex.propagate = False  # the worker's plain stderr copy would duplicate every line
    start_log_flusher()
    _configured = True


def flush_serve_logs() -> int:
    """Write out what Serve's logger holds in its buffering handlers; returns how many it flushed."""
    flushed = 0
    for handler in list(logging.getLogger(SERVE_LOGGER).handlers):
        if isinstance(handler, logging.handlers.MemoryHandler):
            with contextlib.suppress(Exception):  # a closed file must not end the flusher
                handler.flush()
                flushed += 1
    return flushed


def start_log_flusher(interval_s: float = LOG_FLUSH_INTERVAL_S) -> threading.Thread:
    """A daemon thread that calls :func:`flush_serve_logs` every ``interval_s`` (see the module doc)."""
    def run() -> None:
        while True:
            time.sleep(interval_s)
            flush_serve_logs()

    thread = threading.Thread(target=run, name="heimdex-log-flush", daemon=True)
    thread.start()
    return thread


def preview(text: str, chars: int = PREVIEW_CHARS) -> str:
    """The first ``chars`` characters of a text, marked when cut: the most of a body a log may hold."""
    return text if len(text) <= chars else text[:chars] + "…"


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the allowed fields that are set, long strings cut short."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in ALLOWED_FIELDS or value is None:
            continue
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
            value = value[:MAX_FIELD_CHARS]
        out[key] = value
    return out
