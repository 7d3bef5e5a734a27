from __future__ import annotations

import json
import logging

from app.logs import JsonFormatter, job_id_var, redact


def test_redacts_card_numbers_and_ssns():
    assert redact("card 4242 4242 4242 4242 ok") == "card [redacted] ok"
    assert redact("card 4000000000000002") == "card [redacted]"
    assert redact("ssn 123-45-6789 and 123456789") == "ssn [redacted] and [redacted]"


def test_leaves_ids_and_non_card_numbers_alone():
    job = "4023475926564e08a9f272abb4cd869b"
    assert redact(f"worker {job}") == f"worker {job}"
    assert redact("order 1234567890123") == "order 1234567890123"  # fails the Luhn check
    assert redact("amount 125000 cents") == "amount 125000 cents"


def test_json_lines_carry_job_id_and_extras():
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "charged %s", ("4242424242424242",), None
    )
    record.duty = "reminders"
    token = job_id_var.set("send-42")
    try:
        from app.logs import ContextFilter

        ContextFilter().filter(record)
    finally:
        job_id_var.reset(token)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["job_id"] == "send-42"
    assert entry["msg"] == "charged [redacted]"
    assert entry["duty"] == "reminders"
