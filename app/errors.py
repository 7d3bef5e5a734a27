"""Errors as clients should see them: problem+json (RFC 9457) for the API, friendly
pages for people. No traceback ever reaches a client."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json, render_template, request
from werkzeug.exceptions import HTTPException

from app.logs import mask_tokens

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """An error the API reports as problem+json."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        errors: dict[str, list[str]] | None = None,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail or title
        self.errors = errors
        self.type = type_
        self.headers = headers or {}


class ValidationFailed(ApiError):
    def __init__(
        self, errors: dict[str, list[str]], detail: str = "The request has invalid fields."
    ):
        super().__init__(422, "Unprocessable Content", detail, errors=errors)


class NotFound(ApiError):
    def __init__(self, detail: str = "No such resource."):
        super().__init__(404, "Not Found", detail)


class Conflict(ApiError):
    def __init__(self, detail: str):
        super().__init__(409, "Conflict", detail)


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    errors: dict[str, list[str]] | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    response.headers.update(headers or {})
    return response


def wants_problem_json() -> bool:
    return request.path.startswith("/api/") or request.path.startswith("/webhooks/")


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return problem(
            exc.status,
            exc.title,
            exc.detail,
            errors=exc.errors,
            type_=exc.type,
            headers=exc.headers,
        )

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response | tuple[str, int]:
        status = exc.code or 500
        title = exc.name
        detail = exc.description or title
        if status == 413:
            detail = "The request body is too large."
        headers = dict(exc.get_headers())
        headers.pop("Content-Type", None)
        if wants_problem_json():
            return problem(status, title, detail, headers=headers)
        return render_template(
            "errors/error.html", status=status, title=title, detail=detail
        ), status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response | tuple[str, int]:
        log.exception("unhandled error on %s %s", request.method, mask_tokens(request.path))
        if wants_problem_json():
            return problem(500, "Internal Server Error", "Something went wrong on our side.")
        detail = "Something went wrong on our side. Please try again in a moment."
        return render_template(
            "errors/error.html", status=500, title="Something went wrong", detail=detail
        ), 500
