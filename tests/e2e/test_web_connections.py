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
