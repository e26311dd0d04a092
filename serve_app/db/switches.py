"""Live operator switches kept in the database (``service_switches``), read by every replica.

A switch without a row has its default from :class:`serve_app.settings.Settings` (e.g.
``HEIMDEX_ENABLE_REAL_EMBEDDINGS``); setting it writes a row, and readers that cache it for at most
:data:`SWITCH_CACHE_TTL_S` see the change within seconds, with no redeploy.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from serve_app.db.models import ServiceSwitch, utcnow

REAL_EMBEDDINGS = "real_embeddings"
KNOWN_SWITCHES = frozenset({REAL_EMBEDDINGS})
# How long a reader may keep a switch's value before asking the database again (seconds).
SWITCH_CACHE_TTL_S = 2.0


class SwitchRepository:
    def __init__(self, session: Session) -> None:
        self._session = session

    def get(self, name: str, default: bool) -> bool:
        row = self._session.get(ServiceSwitch, name)
        return default if row is None else bool(row.enabled)

    def set(self, name: str, enabled: bool, changed_by: str | None = None) -> None:
        if name not in KNOWN_SWITCHES:
            raise ValueError(f"unknown switch {name!r}; one of {sorted(KNOWN_SWITCHES)}")
        row = self._session.get(ServiceSwitch, name, with_for_update=True)
        if row is None:
            self._session.add(ServiceSwitch(name=name, enabled=enabled, changed_by=changed_by, changed_at=utcnow()))
        else:
            row.enabled, row.changed_by, row.changed_at = enabled, changed_by, utcnow()
        self._session.commit()
