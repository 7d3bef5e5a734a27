"""seed-demo: a demo agent with a working key, demo accounts, a link and an offer to try."""

from __future__ import annotations

import re
from urllib.parse import urlsplit


def run_seed(app) -> dict[str, str]:
    result = app.test_cli_runner().invoke(args=["seed-demo"])
    assert result.exit_code == 0, result.output
    return dict(line.split(": ", 1) for line in result.output.splitlines() if ": " in line)


def test_seed_demo_prints_what_to_try_and_it_works(app, client):
    first = run_seed(app)
    assert first["email"] == "demo@paylink.test"
    assert first["demo accounts"].startswith("3 created")
    key = first["api key"]
    accounts = client.get("/api/v1/accounts", headers={"Authorization": f"Bearer {key}"})
    assert accounts.status_code == 200
    assert {a["external_id"] for a in accounts.json["items"]} == {
        "DEMO-1001",
        "DEMO-1002",
        "DEMO-1003",
    }
    link_path = urlsplit(first["demo link"]).path
    offer_path = urlsplit(first["demo offer"]).path
    assert re.fullmatch(r"/p/[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{16}", link_path)
    assert re.fullmatch(r"/o/[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{16}", offer_path)
    assert "Alex" in client.get(link_path).get_data(as_text=True)
    assert client.get(offer_path).status_code == 200

    again = run_seed(app)  # a new password and key each run; the old key stops working
    assert again["demo accounts"].startswith("0 created")
    assert again["password"] != first["password"]
    old = client.get("/api/v1/accounts", headers={"Authorization": f"Bearer {key}"})
    assert old.status_code == 401
    assert again["demo link"] != first["demo link"]
