"""The app that jobs run in, and the wrapper that gives each job its context."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask
from rq import get_current_job

from app.logs import job_id_var

F = TypeVar("F", bound=Callable[..., Any])
_app: Flask | None = None


def set_job_app(app: Flask | None) -> None:
    """Jobs in this process (and its forked work horses) run in ``app``."""
    global _app
    _app = app


def job_app() -> Flask:
    global _app
    if _app is None:
        from app import create_app

        _app = create_app()
    return _app


def paylink_job(func: F) -> F:
    """Run the job inside an app context with its job id in every log line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        job = get_current_job()
        token = job_id_var.set(job.id if job else None)
        try:
            with job_app().app_context():
                return func(*args, **kwargs)
        finally:
            job_id_var.reset(token)

    return wrapper  # type: ignore[return-value]
