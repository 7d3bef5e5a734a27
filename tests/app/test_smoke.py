def test_create_and_get_account(client, agent):
    resp = client.post(
        "/api/v1/accounts",
        json={
            "external_id": "A-1",
            "name": "Ann Lee",
            "phone": "(202) 555-0143",
            "balance_cents": 1000,
            "ssn": "123-45-6789",
        },
        headers=agent.headers,
    )
    assert resp.status_code == 201, resp.json
    body = resp.json
    assert body["phone"] == "+12025550143"
    assert body["ssn_last4"] == "6789"
    assert "ssn" not in body
    got = client.get(f"/api/v1/accounts/{body['id']}", headers=agent.headers)
    assert got.json == body
