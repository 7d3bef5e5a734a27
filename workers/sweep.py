"""One pass of the periodic duties, and the job the scheduler enqueues for each duty."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime

from rq.utils import import_attribute

from app.clock import utcnow
from workers.runtime import paylink_job
from workers.schedule import DUTIES, Duty

log = logging.getLogger(__name__)


def run_sweep(now: datetime, duties: Iterable[Duty] = DUTIES) -> dict[str, Mapping[str, int]]:
    """Run every duty once as of ``now``, in table order; returns each duty's counts.

    Needs an app context. Safe to run concurrently with itself and the scheduler.
    """
    results: dict[str, Mapping[str, int]] = {}
    for duty in duties:
        func = import_attribute(duty.func)
        counts = func(now) or {}
        log.info("duty %s done", duty.name, extra={"duty": duty.name, "counts": dict(counts)})
        results[duty.name] = counts
    return results


@paylink_job
def run_duty(name: str, func: str) -> dict[str, int]:
    """The scheduler's job for one duty and time slot: runs the duty function as of now."""
    counts = import_attribute(func)(utcnow()) or {}
    log.info("duty %s done", name, extra={"duty": name, "counts": dict(counts)})
    return dict(counts)
