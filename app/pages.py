"""What every customer page with a secret in its URL sends."""

from __future__ import annotations

from flask import Response


def private_page(response: Response) -> Response:
    """``after_request`` for pages reached by a token in the URL, or showing what a customer
    typed about themselves: nothing may be cached, nor leak the URL in a Referer. (Frame
    denial and the Content-Security-Policy are set for every page by the app.)"""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
