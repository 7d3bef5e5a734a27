from datetime import date, timedelta


def test_create_and_get_offer(client, agent):
    acct = client.post(
        "/api/v1/accounts",
        json={
            "external_id": "O-1",
            "name": "Ola Nordmann",
            "phone": "+12025550143",
            "email": "ola@example.com",
            "balance_cents": 100000,
            "timezone": "America/Chicago",
        },
        headers=agent.headers,
    ).json
    first = (date.today() + timedelta(days=10)).isoformat()
    resp = client.post(
        "/api/v1/offers",
        json={
            "account_id": acct["id"],
            "kind": "plan",
            "total_cents": 100000,
            "installment_count": 3,
            "frequency": "monthly",
            "first_due_date": first,
            "expires_in_hours": 120,
        },
        headers=agent.headers,
    )
    assert resp.status_code == 201, resp.json
    offer = resp.json
    assert [i["amount_cents"] for i in offer["schedule"]] == [33334, 33333, 33333]
    assert [r["n"] for r in offer["reminders"]] == [1, 2, 3]
    assert offer["status"] == "sent"
    assert offer["events"][0]["type"] == "offer.sent"
    assert offer["events"][0]["prev_hash"] == "0" * 64
    assert {m["channel"] for m in offer["messages"]} == {"sms", "email"}
    got = client.get(f"/api/v1/offers/{offer['id']}", headers=agent.headers).json
    assert got["url"] == offer["url"]
    bad = client.post(
        "/api/v1/offers",
        json={
            "account_id": acct["id"],
            "total_cents": 0,
            "installment_count": 10000,
            "frequency": "monthly",
            "first_due_date": "2026-02-30",
        },
        headers=agent.headers,
    )
    assert bad.status_code == 422
    assert set(bad.json["errors"]) >= {"total_cents", "first_due_date"}
