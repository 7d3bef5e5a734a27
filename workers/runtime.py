"""The app that jobs run in, and the wrapper that gives each job its context."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from flask import Flask, current_app
from rq import get_current_job
from sqlalchemy import ColumnElement, literal_column

from app.clock import parse_instant, utcnow
from app.db import Database
from app.logs import job_id_var
from app.queue import JobQueue

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


def job_db() -> Database:
    """The current app's database (jobs and duties run in an app context)."""
    return current_app.extensions["paylink.db"]


def job_queue() -> JobQueue:
    """The current app's job queue."""
    return current_app.extensions["paylink.queue"]


def literal(value: str) -> ColumnElement[Any]:
    """``value`` as an SQL literal, for the status a duty filters on. A bound parameter
    would do the same, but psycopg prepares a statement run often, and PostgreSQL's
    generic plan for ``status = $1`` cannot use a partial index whose predicate is
    ``status = 'scheduled'``; a literal keeps every plan on the index."""
    return literal_column(f"'{value}'")


def status_is(column: Any, value: str) -> ColumnElement[bool]:
    return column == literal(value)


def job_now(as_of: str | None) -> datetime:
    """The instant a job acts as of: now, or the later instant of the sweep that enqueued
    it (``flask sweep --at`` a time ahead), never an earlier one (a retry runs on)."""
    now = utcnow()
    if as_of is None:
        return now
    return max(now, parse_instant(as_of))
