"""Buffered Serve log records reach their file within a flush interval (direct ingress buffers them)."""

from __future__ import annotations

import logging
import logging.handlers
import time
from pathlib import Path

from deployments.logging_setup import SERVE_LOGGER, flush_serve_logs, start_log_flusher


def test_buffered_records_are_written_by_the_flusher(tmp_path: Path) -> None:
    path = tmp_path / "replica.log"
    target = logging.FileHandler(path)
    # As Serve's throughput profile sets it up: records held until 1,000 are buffered or one is an ERROR.
    buffered = logging.handlers.MemoryHandler(capacity=1000, target=target, flushLevel=logging.ERROR)
    logger = logging.getLogger(SERVE_LOGGER)
    level = logger.level
    logger.addHandler(buffered)
    logger.setLevel(logging.INFO)
    try:
        logger.info("first access line")
        assert path.read_text() == ""  # still in the buffer
        assert flush_serve_logs() >= 1
        assert "first access line" in path.read_text()

        start_log_flusher(interval_s=0.05)
        logger.info("second access line")
        deadline = time.monotonic() + 5
        while "second access line" not in path.read_text():
            assert time.monotonic() < deadline, "the flusher never wrote the buffered record"
            time.sleep(0.02)
    finally:
        logger.removeHandler(buffered)
        logger.setLevel(level)
        buffered.close()
        target.close()
