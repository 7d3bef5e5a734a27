"""The customer's payment flow at /p/<token>."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("pay", __name__)
