"""Queue conventions: named queues, JSON jobs, one helper for job options, and
enqueueing only after the database transaction that caused the job has committed.

Features name jobs by dotted path (``"workers.jobs.send_message"``) so nothing imports
``workers``. Jobs take ids and ISO strings, never objects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError
from rq.job import Job
from rq.serializers import JSONSerializer
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

log = logging.getLogger(__name__)

# Worker priority order: a worker drains the first queue before looking at the next.
PAYMENTS = "payments"
MESSAGES = "messages"
DEFAULT = "default"
QUEUE_NAMES = (PAYMENTS, MESSAGES, DEFAULT)

DEFAULT_TIMEOUT = 60  # seconds a job may run
DEFAULT_RETRY = (10, 60, 300)  # seconds before each retry of a job that raised
RESULT_TTL = 3600  # a finished job's id keeps refusing duplicates this long
FAILURE_TTL = 14 * 86400

_PENDING = "paylink_pending_jobs"
_CLAIM = "paylink:enqueued:"  # enqueue_many's claim on a job id
CLAIM_SECONDS = 60
_LIVE = ("queued", "started", "scheduled", "deferred")  # a job still to run, or running


@dataclass(frozen=True)
class JobSpec:
    """Everything needed to enqueue one job later."""

    func: str
    args: tuple[Any, ...] = ()
    job_id: str | None = None
    queue: str = DEFAULT
    timeout: int = DEFAULT_TIMEOUT
    retry: tuple[int, ...] = DEFAULT_RETRY
    at: datetime | None = None  # run no earlier than this (needs a worker with scheduler)
    unique: bool = False  # refuse when a job with this id still exists
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.queue not in QUEUE_NAMES:
            raise ValueError(f"unknown queue {self.queue!r}")
        if self.job_id is not None and not _valid_job_id(self.job_id):
            raise ValueError(f"job ids may hold only letters, digits, _ and -: {self.job_id!r}")


def _valid_job_id(job_id: str) -> bool:
    return bool(job_id) and all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in job_id)


def job_id(*parts: object) -> str:
    """A deterministic job id from its parts: ``job_id("send", 42, 1)`` → ``send-42-1``."""
    return "-".join(str(p) for p in parts)


class JobQueue:
    """The Redis connection and RQ queues of one app. Connects on first use."""

    def __init__(self, url_provider: Callable[[], str]):
        self._url_provider = url_provider
        self._connection: redis.Redis | None = None

    @property
    def url(self) -> str:
        return self._url_provider()

    @property
    def connection(self) -> redis.Redis:
        if self._connection is None:
            self._connection = redis.Redis.from_url(
                self.url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
            )
        return self._connection

    def queue(self, name: str = DEFAULT) -> Queue:
        return Queue(name, connection=self.connection, serializer=JSONSerializer)

    def queues(self) -> list[Queue]:
        return [self.queue(name) for name in QUEUE_NAMES]

    def enqueue(self, spec: JobSpec) -> Job | None:
        """Enqueue now. Returns None when ``unique`` and the job already exists."""
        queue = self.queue(spec.queue)
        options: dict[str, Any] = {
            "job_id": spec.job_id,
            "job_timeout": spec.timeout,
            "result_ttl": RESULT_TTL,
            "failure_ttl": FAILURE_TTL,
            "meta": spec.meta or None,
        }
        if spec.retry:
            options["retry"] = Retry(max=len(spec.retry), interval=list(spec.retry))
        try:
            if spec.at is not None:
                job = queue.create_job(spec.func, args=spec.args, **_create_options(options))
                return queue.schedule_job(job, spec.at, unique=spec.unique)
            return queue.enqueue(spec.func, args=spec.args, unique=spec.unique, **options)
        except DuplicateJobError:
            log.info("job %s already exists; not enqueued again", spec.job_id)
            return None

    def enqueue_many(self, specs: Sequence[JobSpec]) -> int:
        """Enqueue many jobs now in two Redis round trips, each id at most once at a time.

        The first round trip claims every id for a minute (SET NX), so of two sweeps
        racing exactly one enqueues it, and reads the status of any job already under that
        id: one still waiting or running is left alone; one that finished or failed is
        replaced (the row it works on is due again or still due, and jobs re-check their
        rows under locks, so a repeat is harmless where a lost one would stall the work).
        The second round trip enqueues. Returns how many were enqueued. Ids are required;
        ``at`` is not supported (use ``enqueue``)."""
        if not specs:
            return 0
        if any(spec.job_id is None or spec.at is not None for spec in specs):
            raise ValueError("enqueue_many needs job ids and enqueues for now")
        connection = self.connection
        with connection.pipeline(transaction=False) as pipe:
            for spec in specs:
                pipe.set(f"{_CLAIM}{spec.job_id}", 1, nx=True, ex=CLAIM_SECONDS)
                pipe.hget(Job.key_for(spec.job_id), "status")
            answers = pipe.execute()
        fresh, ended = [], []
        for spec, claimed, status in zip(specs, answers[0::2], answers[1::2], strict=True):
            state = status.decode() if isinstance(status, bytes) else status
            if claimed and state not in _LIVE:
                fresh.append(spec)
                if state is not None:
                    ended.append(spec.job_id)
        try:
            for ended_id in ended:  # out of its registries, so it shows only once
                Job.fetch(ended_id, connection=connection, serializer=JSONSerializer).delete()
            by_queue: dict[str, list[JobSpec]] = {}
            for spec in fresh:
                by_queue.setdefault(spec.queue, []).append(spec)
            with connection.pipeline() as pipe:
                for name, group in by_queue.items():
                    datas = [_enqueue_data(spec) for spec in group]
                    self.queue(name).enqueue_many(datas, pipeline=pipe)
                pipe.execute()
        except Exception:
            # Not enqueued: let the next sweep claim these ids again at once.
            connection.delete(*(f"{_CLAIM}{spec.job_id}" for spec in fresh))
            raise
        return len(fresh)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _enqueue_data(spec: JobSpec) -> Any:
    retry = Retry(max=len(spec.retry), interval=list(spec.retry)) if spec.retry else None
    return Queue.prepare_data(
        spec.func, args=spec.args, job_id=spec.job_id, timeout=spec.timeout,
        result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL, meta=spec.meta or None, retry=retry,
    )  # fmt: skip


def _create_options(options: dict[str, Any]) -> dict[str, Any]:
    # Queue.create_job names the timeout ``timeout``.
    out = dict(options)
    out["timeout"] = out.pop("job_timeout")
    return out


def enqueue_after_commit(session: Session, spec: JobSpec) -> None:
    """Enqueue ``spec`` once ``session``'s transaction commits; drop it on rollback."""
    session.info.setdefault(_PENDING, []).append(spec)


def pending_jobs(session: Session) -> list[JobSpec]:
    return list(session.info.get(_PENDING, []))


def install(factory: sessionmaker[Session], job_queue: JobQueue) -> None:
    """Hook a session factory so its sessions send their pending jobs after commit."""

    @event.listens_for(factory, "after_commit")
    def _send(session: Session) -> None:
        specs: Iterable[JobSpec] = session.info.pop(_PENDING, [])
        for spec in specs:
            try:
                job_queue.enqueue(spec)
            except (redis.RedisError, OSError):
                # The rows are committed; the sweep re-derives due work from them.
                log.exception(
                    "could not enqueue %s (%s); a sweep will pick it up", spec.func, spec.job_id
                )

    @event.listens_for(factory, "after_transaction_end")
    def _discard(session: Session, transaction: SessionTransaction) -> None:
        # Runs after _send on commit (nothing left), and alone on rollback or close.
        if transaction.parent is None:
            session.info.pop(_PENDING, None)
