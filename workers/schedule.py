"""The periodic duties: a declarative table the scheduler and ``sweep`` both read.

Each duty is a function ``(now) -> {count name: number}`` run inside an app context. It
must be safe to run twice for the same instant and concurrently with itself: it derives
due work from the database and enqueues jobs with deterministic ids.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Duty:
    name: str  # also the job id stem: letters, digits, - and _
    func: str  # dotted path of the duty function
    every_seconds: int  # the scheduler enqueues it once per slot of this length
    queue: str = "default"
    timeout: int = 300


DUTIES: tuple[Duty, ...] = (
    Duty("expire-offers", "workers.offers.expire_offers", every_seconds=60),
    Duty("reminders", "workers.offers.send_due_reminders", every_seconds=60, queue="messages"),
    Duty("installments", "workers.plans.charge_due_installments", 60, queue="payments"),
    Duty("outbox", "workers.messaging.resend_stuck", every_seconds=60, queue="messages"),
    Duty("parked-sms", "workers.messaging.drop_parked_statuses", every_seconds=3600),
    Duty("console-sessions", "workers.console.drop_old_sessions", every_seconds=3600),
    Duty("expire-links", "workers.links.expire_links", every_seconds=60),
    Duty("charge-payments", "workers.links.charge_scheduled_payments", 60, queue="payments"),
    Duty("settle-payments", "workers.links.settle_bank_payments", 60, queue="payments"),
    Duty("stuck-charges", "workers.links.reconcile_stuck_charges", 60, queue="payments"),
    Duty("agreements", "workers.signing.render_unrendered", every_seconds=60),
    Duty("campaigns", "workers.campaigns.resume_stalled_campaigns", every_seconds=60),
)
