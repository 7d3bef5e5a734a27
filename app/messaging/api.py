"""The messages API under /api/v1."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("messages_api", __name__, url_prefix="/api/v1")
