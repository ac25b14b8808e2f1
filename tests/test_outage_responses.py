"""The 500 handler answers an outage of PostgreSQL or Redis with a 503 and Retry-After (JSON on
the API, OpenAI's shape on /v1/, a page elsewhere); the errors are real ones, from a database
connection and a Redis client pointed at a port nobody listens on."""

import json
import socket

import pytest
import redis
from django.db import connection, connections
from django.test import RequestFactory

from knowledge.error_views import server_error

# pytest-django blocks every connection attempt outside a database test, the unreachable one too.
pytestmark = pytest.mark.django_db


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _database_error() -> BaseException:
    settings_dict = {**connection.settings_dict, "HOST": "127.0.0.1", "PORT": _closed_port(), "OPTIONS": {"connect_timeout": 2}}
    unreachable = type(connections["default"])(settings_dict, alias="unreachable")
    try:
        unreachable.ensure_connection()
    except Exception as error:  # noqa: BLE001  returned for the handler to see
        return error
    pytest.fail("a connection to a closed port succeeded")


def _handled(path: str, error: BaseException):
    request = RequestFactory().get(path)
    try:
        raise error
    except BaseException:
        return server_error(request)


def test_a_database_outage_is_a_json_503_with_retry_after_on_the_api():
    response = _handled("/api/v1/kbs", _database_error())
    assert response.status_code == 503 and int(response["Retry-After"]) > 0
    assert "The database cannot be reached" in json.loads(response.content)["detail"]


def test_a_database_outage_is_a_503_page_on_the_web_ui_and_openai_shaped_on_v1():
    page = _handled("/kbs/", _database_error())
    assert page.status_code == 503 and 'data-status="503"' in page.content.decode()
    openai = _handled("/v1/chat/completions", _database_error())
    assert openai.status_code == 503 and json.loads(openai.content)["error"]["code"] == "service_unavailable"


def test_a_queue_outage_is_a_503_naming_the_task_queue():
    try:
        redis.Redis(port=_closed_port(), socket_connect_timeout=1).ping()
    except redis.RedisError as error:
        response = _handled("/api/v1/kbs/x/documents", error)
    assert response.status_code == 503 and "task queue cannot be reached" in json.loads(response.content)["detail"]


def test_any_other_error_on_the_api_is_still_a_json_500():
    response = _handled("/api/v1/kbs", ValueError("boom"))
    assert response.status_code == 500 and json.loads(response.content)["detail"].startswith("Internal server error")
