"""The console over HTTPS: pages send no Referer, so the CSRF check must not need one."""

from __future__ import annotations

import re


def test_login_over_https_without_referer(client, agent):
    page = client.get("/console/login", base_url="https://localhost")
    token = re.search(
        r'name="csrf_token" type="hidden" value="([^"]+)"', page.get_data(as_text=True)
    )
    token = token or re.search(
        r'value="([^"]+)"[^>]*name="csrf_token"', page.get_data(as_text=True)
    )
    assert token, "the login form carries a CSRF token"
    resp = client.post(
        "/console/login",
        data={"email": agent.email, "password": agent.password, "csrf_token": token.group(1)},
        base_url="https://localhost",
    )
    assert resp.status_code == 302
    assert "paylink_session=" in resp.headers["Set-Cookie"]
