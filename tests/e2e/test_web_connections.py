"""Issue 14's probe: `make run`'s web server (runserver, a thread and a kept database connection
per request) ran PostgreSQL out of connections under about ten concurrent clients. The web
command `make run` starts now must hold its connections to its fixed thread pool."""

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from knowledge.management.commands.run_local import WEB_THREADS, WEB_WORKERS
from knowledge.services.tokens import api_token_create

pytestmark = pytest.mark.e2e


def _server_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def test_many_concurrent_clients_use_no_more_connections_than_the_thread_pool(web_server_process, admin_user, knowledge_base):
    _, token = api_token_create(user=admin_user, name="load", knowledge_bases=[knowledge_base])

    def list_knowledge_bases(_):
        # A new HTTP connection per request, as many clients make: runserver gave each its own thread.
        request = urllib.request.Request(f"{web_server_process.url}/api/v1/kbs", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())

    with ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(list_knowledge_bases, range(300)))

    assert {status for status, _ in results} == {200}
    assert all(body[0]["slug"] == "test-kb" for _, body in results)
    assert 1 <= _server_connections() <= WEB_WORKERS * WEB_THREADS


def test_a_client_that_pauses_between_requests_finds_its_connection_still_open(web_server_process, admin_user, knowledge_base):
    """The load test's /ask resets: gunicorn closed an idle connection after its default 2 s
    keep-alive just as a client that had paused about that long sent its next POST, which is not
    retried. A client pausing 3 s (the askers pause 1 to 3) must find the connection open."""
    import http.client
    import time

    from knowledge.management.commands.run_local import WEB_KEEP_ALIVE_SECONDS

    _, token = api_token_create(user=admin_user, name="pauses", knowledge_bases=[knowledge_base])
    headers = {"Authorization": f"Bearer {token}"}
    client = http.client.HTTPConnection("127.0.0.1", web_server_process.port, timeout=30)
    client.request("GET", "/api/v1/kbs", headers=headers)
    first = client.getresponse()
    assert first.status == 200 and first.getheader("Connection", "").lower() != "close"
    first.read()
    socket_before = client.sock

    time.sleep(3)
    client.request("GET", "/api/v1/kbs", headers=headers)  # http.client, like a POST, never retries
    second = client.getresponse()

    assert second.status == 200, second.read()
    assert client.sock is socket_before  # the same connection: it was not closed under the client
    assert WEB_KEEP_ALIVE_SECONDS > 3
    client.close()
