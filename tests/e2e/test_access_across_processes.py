"""Issue 14, Access: the login lockout and the API rate limits hold across web processes. Two
gunicorn servers (each with its own workers) share the test database and Redis: failures on
one lock the login out on the other, and a token's budget spent on one is spent on both."""

import os
import re

import pytest
import requests

from knowledge.services.tokens import api_token_create
from tests.conftest import WebServer, _test_database_url

pytestmark = pytest.mark.e2e

LIMIT = 3


@pytest.fixture
def two_web_servers(transactional_db):
    from django.conf import settings

    from knowledge.rate_limits import rate_limits_reset

    rate_limits_reset()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _test_database_url(),
        "REDIS_URL": settings.CELERY_BROKER_URL,
        "RAGLOOP_RATE_LIMIT_REDIS_URL": settings.RAGLOOP_RATE_LIMIT_REDIS_URL,
        "RAGLOOP_LOGIN_FAILURE_LIMIT": str(LIMIT),
        "RAGLOOP_API_RATE_LIMIT_PER_MINUTE": str(LIMIT),
    }
    servers = [WebServer(env=env, name=f"web-{n}") for n in (1, 2)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
        rate_limits_reset()


def login(base_url: str, username: str, password: str) -> requests.Response:
    session = requests.Session()
    page = session.get(f"{base_url}/login/", timeout=30)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return session.post(
        f"{base_url}/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": csrf},
        headers={"Referer": f"{base_url}/login/"},
        allow_redirects=False,
        timeout=30,
    )


def test_a_lockout_on_one_server_holds_on_the_other(two_web_servers, django_user_model):
    django_user_model.objects.create_user("ana", password="pw-ana-right-123")
    first, second = two_web_servers
    for n in range(LIMIT - 1):
        assert login(first.url, "ana", "wrong").status_code == 200
    assert login(second.url, "ana", "wrong").status_code == 429  # the LIMIT-th failure, on the other server

    refused = login(first.url, "ana", "pw-ana-right-123")
    assert refused.status_code == 429 and "Too many failed logins" in refused.text
    assert login(second.url, "ana", "pw-ana-right-123").status_code == 429


def test_a_tokens_budget_is_shared_by_both_servers(two_web_servers, admin_user, knowledge_base):
    _, plain = api_token_create(user=admin_user, name="shared", knowledge_bases=[knowledge_base])
    headers = {"Authorization": f"Bearer {plain}"}
    first, second = two_web_servers
    statuses = [
        requests.get(f"{server.url}/api/v1/kbs/test-kb/documents", headers=headers, timeout=30).status_code
        for server in (first, second, first)
    ]
    assert statuses == [200, 200, 200]
    refused = requests.get(f"{second.url}/api/v1/kbs/test-kb/documents", headers=headers, timeout=30)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "3 requests per minute" in refused.json()["detail"]
