"""Console duties."""

from __future__ import annotations

from datetime import datetime

from flask import current_app

from app import agents


def drop_old_sessions(now: datetime) -> dict[str, int]:
    """Sweep duty: delete console sessions long over (see ``agents.SESSIONS_KEPT_FOR``)."""
    db = current_app.extensions["paylink.db"]
    with db.transaction() as session:
        return {"dropped": agents.drop_old_sessions(session, now)}
