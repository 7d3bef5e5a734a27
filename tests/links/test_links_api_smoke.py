def test_create_get_revoke(client, agent):
    acct = client.post(
        "/api/v1/accounts",
        json={"external_id": "L-1", "name": "Lee Park", "phone": "+12025550143",
              "email": "lee@example.com", "balance_cents": 9000},
        headers=agent.headers,
    ).json
    resp = client.post("/api/v1/links", json={"account_id": acct["id"]}, headers=agent.headers)
    assert resp.status_code == 201, resp.json
    link = resp.json
    assert link["amount_cents"] == 9000
    assert link["status"] == "active"
    assert {m["channel"] for m in link["messages"]} == {"sms", "email"}
    token = link["url"].rsplit("/", 1)[1]
    assert len(link["url"]) == len("https://pay.example.test/p/") + 39
    assert len(token) == 39
    got = client.get(f"/api/v1/links/{link['id']}", headers=agent.headers).json
    assert got["url"] == link["url"]
    revoked = client.post(f"/api/v1/links/{link['id']}/revoke", headers=agent.headers)
    assert revoked.json["status"] == "revoked"
    again = client.post(f"/api/v1/links/{link['id']}/resend", headers=agent.headers)
    assert again.status_code == 409
