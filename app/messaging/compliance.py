"""The send-time compliance gate: opt-outs, holds, suppressed addresses, quiet hours.

Pure functions of the message's facts and ``now``; the worker asks right before sending,
not only when the message was queued.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

SEND = "send"
SUPPRESS = "suppress"
DEFER = "defer"


@dataclass(frozen=True)
class QuietHours:
    start_minute: int  # first allowed minute of the local day
    end_minute: int  # first minute no longer allowed

    def allows(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute
        return self.start_minute <= minute < self.end_minute


@dataclass(frozen=True)
class Decision:
    action: str  # send, suppress or defer
    reason: str | None = None
    until: datetime | None = None  # for defer: the next allowed instant
    window_ends: datetime | None = None  # for send: when the allowed window closes


def _at_minute(day: datetime, minute: int, tz: ZoneInfo) -> datetime:
    if minute >= 24 * 60:
        return datetime.combine(day.date() + timedelta(days=1), time(0), tz)
    return datetime.combine(day.date(), time(minute // 60, minute % 60), tz)


def next_allowed(now: datetime, tz: ZoneInfo, hours: QuietHours) -> datetime:
    """``now`` if it is inside the window, else the start of the next window (UTC)."""
    local = now.astimezone(tz)
    if hours.allows(local):
        return now
    start_today = _at_minute(local, hours.start_minute, tz)
    if local < start_today:
        return start_today.astimezone(now.tzinfo)
    return _at_minute(local + timedelta(days=1), hours.start_minute, tz).astimezone(now.tzinfo)


def window_end(now: datetime, tz: ZoneInfo, hours: QuietHours) -> datetime:
    """When the allowed window containing ``now`` closes."""
    local = now.astimezone(tz)
    return _at_minute(local, hours.end_minute, tz).astimezone(now.tzinfo)


def last_allowed_before(instant: datetime, tz: ZoneInfo, hours: QuietHours) -> datetime:
    """The latest allowed instant at or before ``instant``."""
    local = instant.astimezone(tz)
    if hours.allows(local):
        return instant
    end_today = _at_minute(local, hours.end_minute, tz)
    if local >= end_today:
        return (end_today - timedelta(minutes=1)).astimezone(instant.tzinfo)
    end_yesterday = _at_minute(local - timedelta(days=1), hours.end_minute, tz)
    return (end_yesterday - timedelta(minutes=1)).astimezone(instant.tzinfo)


def decide(
    *,
    channel: str,
    recipient: str | None,
    sms_opted_out: bool,
    email_opted_out: bool,
    email_suppressed: str | None,
    hold: str | None,
    timezone: str,
    hours: QuietHours,
    now: datetime,
    system_reply: bool = False,
) -> Decision:
    """May this message go out now? Suppress, defer to the next allowed time, or send."""
    if not recipient:
        return Decision(SUPPRESS, f"no {'phone' if channel == 'sms' else 'email'} on file")
    if system_reply:
        # Answers to STOP/START/HELP go out at once, whatever the hour or hold.
        return Decision(SEND)
    if hold:
        return Decision(SUPPRESS, f"account on hold: {hold}")
    if channel == "sms" and sms_opted_out:
        return Decision(SUPPRESS, "sms opted out")
    if channel == "email" and email_opted_out:
        return Decision(SUPPRESS, "email opted out")
    if channel == "email" and email_suppressed:
        return Decision(SUPPRESS, f"address suppressed: {email_suppressed}")
    tz = ZoneInfo(timezone)
    allowed = next_allowed(now, tz, hours)
    if allowed != now:
        return Decision(DEFER, "quiet hours", until=allowed)
    return Decision(SEND, window_ends=window_end(now, tz, hours))


def within_deadline(decision: Decision, send_before: datetime | None, now: datetime) -> Decision:
    """A message with a deadline (``send_before``) that cannot go out before it is moot:
    suppress it rather than send it late, whether it is due now or deferred past it."""
    if send_before is None or decision.action == SUPPRESS:
        return decision
    if now >= send_before:
        return Decision(SUPPRESS, "too late: its deadline has passed")
    if decision.action == DEFER and decision.until is not None and decision.until >= send_before:
        return Decision(SUPPRESS, "quiet hours last past its deadline")
    if decision.action == SEND and (
        decision.window_ends is None or send_before < decision.window_ends
    ):
        # A text still undelivered at the deadline is not worth delivering (validity period).
        return Decision(SEND, window_ends=send_before)
    return decision
