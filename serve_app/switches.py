"""Cached readers of the live operator switches (``service_switches``), for the Gateway and the relay.

The row is the truth once it exists (``heimdex embeddings off|on`` writes it, and so does ``heimdex
up`` when ``HEIMDEX_ENABLE_REAL_EMBEDDINGS`` / ``ENABLE_REAL_EMBEDDINGS`` is set explicitly); without
a row the value comes from the Settings. A reader asks the database at most every
:data:`~serve_app.db.switches.SWITCH_CACHE_TTL_S` seconds, so every replica follows a change within
that time, with no redeploy and no refused connection.

When the database cannot be read, the reader keeps the last value it read (the Settings value if it
never read one) and asks again after the TTL; a read that hangs (a database that stopped answering)
holds a caller for at most ``wait_s``. A database outage neither turns real embeddings on nor takes
the embedding routes, which do not need the database, down with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from serve_app.db.switches import REAL_EMBEDDINGS, SWITCH_CACHE_TTL_S, SwitchRepository
from serve_app.errors import ApiError
from serve_app.services import Services

logger = logging.getLogger("heimdex.switches")

# What a client is told to wait before retrying a switched-off route (seconds).
SWITCHED_OFF_RETRY_AFTER_S = 60
# Longest a caller waits for a database read of a switch before it takes the last value (seconds).
SWITCH_READ_WAIT_S = 1.0


class SwitchReader:
    """One switch's value, re-read from the database at most every ``ttl_s`` seconds."""

    def __init__(self, sessions: sessionmaker[Session], name: str, default: bool,
                 ttl_s: float = SWITCH_CACHE_TTL_S, wait_s: float = SWITCH_READ_WAIT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sessions = sessions
        self.name = name
        self.default = default
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self._clock = clock
        self._value = default
        self._read_at: float | None = None
        self._refresh: asyncio.Future[bool] | None = None
        self._refresh_started = 0.0

    def _fresh(self) -> bool:
        return self._read_at is not None and self._clock() - self._read_at < self.ttl_s

    def _read(self) -> bool:
        """Ask the database now (blocking); on failure keep the last value."""
        try:
            with self._sessions() as session:
                value = SwitchRepository(session).get(self.name, self.default)
        except Exception as exc:
            logger.warning("switch %s unreadable, keeping %s: %s: %s", self.name,
                           "on" if self._value else "off", type(exc).__name__, str(exc)[:200])
            value = self._value
        if value != self._value and self._read_at is not None:
            logger.info("switch %s is now %s", self.name, "on" if value else "off")
        self._value = value
        self._read_at = self._clock()
        return value

    def get(self) -> bool:
        """The value, blocking on a database read when the cached one is older than the TTL."""
        return self._value if self._fresh() else self._read()

    async def aget(self) -> bool:
        """:meth:`get` for the event loop: the read runs on a worker thread, concurrent callers that
        find the value stale share one read, and none waits for it longer than ``wait_s`` in all (then
        the last value stands while the read goes on)."""
        if self._fresh():
            return self._value
        loop = asyncio.get_running_loop()
        refresh = self._refresh
        if refresh is None or refresh.done() or refresh.get_loop() is not loop:
            refresh = self._refresh = asyncio.ensure_future(asyncio.to_thread(self._read))
            self._refresh_started = self._clock()
        remaining = self.wait_s - (self._clock() - self._refresh_started)
        if remaining <= 0:
            return self._value
        try:
            return await asyncio.wait_for(asyncio.shield(refresh), remaining)
        except TimeoutError:
            return self._value

    def invalidate(self) -> None:
        """Forget the cached value: the next read asks the database."""
        self._read_at = None


async def real_embeddings_enabled(services: Services) -> bool:
    """Whether real-model embeddings are on for this Gateway replica (the live switch, cached)."""
    reader: SwitchReader | None = services.switches
    if reader is None:  # no database configured: the Settings value is all there is
        return services.settings.enable_real_embeddings
    return await reader.aget()


async def require_real_embeddings(services: Services) -> None:
    """503 + Retry-After while the real-embeddings switch is off."""
    if not await real_embeddings_enabled(services):
        raise ApiError(503, "real_embeddings_disabled",
                       "real-model embeddings are switched off (`heimdex embeddings off`, or "
                       "HEIMDEX_ENABLE_REAL_EMBEDDINGS=false); POST /vectors/mock keeps working",
                       headers={"Retry-After": str(SWITCHED_OFF_RETRY_AFTER_S)})


def real_embeddings_reader(sessions: sessionmaker[Session], default: bool) -> SwitchReader:
    return SwitchReader(sessions, REAL_EMBEDDINGS, default)
