"""Login lockout (django-axes, database backed): after the failure limit one username from one
address is refused, the right password included, with a clear 429 page; other usernames and
other addresses are not; an admin unlocks with `manage.py axes_reset`."""

import pytest
from django.core.management import call_command
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db

LIMIT = 3


@pytest.fixture
def curator(django_user_model):
    return django_user_model.objects.create_user("ana", password="pw-ana-right-123")


def login(client: Client, username: str, password: str, ip: str = "203.0.113.7"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def fail(client: Client, username: str, times: int, ip: str = "203.0.113.7") -> None:
    """`times` failed logins; the one that reaches the limit already answers the lockout page."""
    for n in range(1, times + 1):
        response = login(client, username, "wrong-password", ip)
        if n < LIMIT:
            assert response.status_code == 200 and b"did not match" in response.content
        else:
            assert_locked_out(response, username)


def assert_locked_out(response, username: str) -> None:
    assert response.status_code == 429
    page = response.content.decode()
    assert "Too many failed logins" in page
    assert f"After {LIMIT} failed logins" in page and username in page
    assert "_auth_user_id" not in response.wsgi_request.session


@override_settings(AXES_FAILURE_LIMIT=LIMIT)
def test_after_the_failure_limit_the_right_password_is_refused_with_the_lockout_page(client, curator):
    fail(client, "ana", LIMIT)
    assert_locked_out(login(client, "ana", "pw-ana-right-123"), "ana")
    # the home page still sends the client to log in: it was never logged in
    assert client.get("/").status_code == 302


@override_settings(AXES_FAILURE_LIMIT=LIMIT)
def test_below_the_limit_the_right_password_logs_in_and_resets_the_count(client, curator):
    from axes.models import AccessAttempt

    fail(client, "ana", LIMIT - 1)
    assert login(client, "ana", "pw-ana-right-123").status_code == 302
    assert not AccessAttempt.objects.filter(username="ana").exists()


@override_settings(AXES_FAILURE_LIMIT=LIMIT)
def test_a_lockout_holds_one_username_from_one_address_only(client, curator, django_user_model):
    django_user_model.objects.create_user("bo", password="pw-bo-right-123")
    fail(client, "ana", LIMIT)

    # the same address may still log in as someone else
    assert login(Client(), "bo", "pw-bo-right-123").status_code == 302
    # and the user may still log in from another address (a guesser cannot lock them out)
    assert login(Client(), "ana", "pw-ana-right-123", ip="198.51.100.20").status_code == 302
    # while this username from this address stays locked out
    assert_locked_out(login(Client(), "ana", "pw-ana-right-123"), "ana")


@override_settings(AXES_FAILURE_LIMIT=LIMIT)
def test_the_failures_are_rows_every_web_process_reads_and_axes_reset_unlocks(client, curator):
    from axes.models import AccessAttempt

    fail(client, "ana", LIMIT)
    attempt = AccessAttempt.objects.get(username="ana", ip_address="203.0.113.7")
    assert attempt.failures_since_start == LIMIT

    call_command("axes_reset")

    assert not AccessAttempt.objects.exists()
    assert login(Client(), "ana", "pw-ana-right-123").status_code == 302


@override_settings(AXES_FAILURE_LIMIT=LIMIT)
def test_the_admin_sites_login_is_locked_out_too(client, admin_user):
    for _ in range(LIMIT):
        client.post("/admin/login/", {"username": "root", "password": "wrong"}, REMOTE_ADDR="203.0.113.9")
    response = client.post("/admin/login/?next=/admin/", {"username": "root", "password": "pw-root-123"}, REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 429
    assert b"Too many failed logins" in response.content
