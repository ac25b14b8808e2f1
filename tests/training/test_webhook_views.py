"""The webhooks page of a knowledge base: admins only, adding an endpoint (bad input refused
with a message and nothing written), the secret shown, enable/disable and delete, the
deliveries with their attempts (escaped), and the Django admin's lists of them."""

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext

from curation.models import Membership
from training.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from training.services.notifications import notify
from training.services.webhooks import webhook_endpoint_create

XSS = '<script>alert("x")</script>'
ESCAPED = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"


@pytest.fixture
def curator(db, django_user_model):
    user = django_user_model.objects.create_user("cur", password="pw-cur-123")
    user.groups.add(Group.objects.get_or_create(name="curator")[0])
    return user


def add_endpoint(knowledge_base, url="https://hooks.example.com/ragloop", events=()):
    return webhook_endpoint_create(knowledge_base=knowledge_base, url=url, events=list(events))


def test_only_admins_see_and_change_webhooks(client, curator, knowledge_base):
    endpoint = add_endpoint(knowledge_base)
    page = "/kbs/test-kb/webhooks/"
    posts = [
        "/kbs/test-kb/webhooks/add/",
        f"/kbs/test-kb/webhooks/{endpoint.pk}/delete/",
        f"/kbs/test-kb/webhooks/{endpoint.pk}/enabled/",
    ]
    response = client.get(page)
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    client.force_login(curator)
    assert client.get(page).status_code == 404  # not a member
    assert [client.post(url, {"url": "https://evil.example.com/"}).status_code for url in posts] == [404, 404, 404]
    Membership.objects.create(knowledge_base=knowledge_base, user=curator)
    assert client.get(page).status_code == 403  # a member, but not an admin
    assert [client.post(url, {"url": "https://evil.example.com/"}).status_code for url in posts] == [403, 403, 403]
    assert list(WebhookEndpoint.objects.values_list("url", "enabled")) == [(endpoint.url, True)]
    assert endpoint.secret.encode() not in client.get(page).content


def test_an_admin_adds_an_endpoint_and_sees_its_secret(admin_client, admin_user, knowledge_base):
    response = admin_client.post(
        "/kbs/test-kb/webhooks/add/", {"url": " https://hooks.example.com/ragloop ", "events": ["gate.refused", "run.failed"]}
    )
    endpoint = WebhookEndpoint.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/kbs/test-kb/webhooks/?created={endpoint.pk}#endpoint-{endpoint.pk}"
    assert endpoint.url == "https://hooks.example.com/ragloop" and endpoint.events == ["gate.refused", "run.failed"]
    assert endpoint.created_by == admin_user and endpoint.knowledge_base == knowledge_base

    html = admin_client.get(response["Location"]).content.decode()
    assert endpoint.secret in html and "New secret: copy it to the receiver" in html
    assert "Events will be posted to https://hooks.example.com/ragloop" in html
    assert "gate.refused, run.failed" in html


@pytest.mark.parametrize(
    "data, message",
    [
        ({"url": "ftp://hooks.example.com/x"}, "must start with http:// or https://"),
        ({"url": "javascript:alert(1)"}, "must start with http:// or https://"),
        ({"url": ""}, "Enter the URL"),
        ({"url": "https://hooks.example.com/x", "events": ["version.exploded"]}, "Unknown event"),
    ],
)
def test_a_bad_endpoint_is_refused_with_a_message_and_nothing_written(admin_client, knowledge_base, data, message):
    response = admin_client.post("/kbs/test-kb/webhooks/add/", data)
    assert response.status_code == 422
    assert message in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_the_form_keeps_what_was_typed_after_an_error(admin_client, knowledge_base):
    response = admin_client.post("/kbs/test-kb/webhooks/add/", {"url": f"ftp://x/{XSS}", "events": ["run.failed"]})
    html = response.content.decode()
    assert 'value="run.failed" checked' in html
    assert XSS not in html and "ftp://x/&lt;script&gt;" in html


def test_an_admin_disables_enables_and_deletes_an_endpoint(admin_client, knowledge_base):
    endpoint = add_endpoint(knowledge_base)
    [message] = notify(knowledge_base=knowledge_base, event="run.failed", payload={"run": 1})
    url = f"/kbs/test-kb/webhooks/{endpoint.pk}/enabled/"
    assert admin_client.post(url, {"enabled": "false"}).status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.enabled is False
    admin_client.post(url, {"enabled": "true"})
    endpoint.refresh_from_db()
    assert endpoint.enabled is True

    assert admin_client.post(f"/kbs/test-kb/webhooks/{endpoint.pk}/delete/").status_code == 302
    assert not WebhookEndpoint.objects.exists() and not WebhookMessage.objects.filter(pk=message.pk).exists()
    assert admin_client.post(f"/kbs/test-kb/webhooks/{endpoint.pk}/delete/").status_code == 404


def test_an_endpoint_of_another_knowledge_base_is_404(admin_client, knowledge_base):
    from knowledge.services.knowledge_bases import knowledge_base_create

    other = add_endpoint(knowledge_base_create(slug="other-kb", name="Other"))
    assert admin_client.post(f"/kbs/test-kb/webhooks/{other.pk}/delete/").status_code == 404
    assert admin_client.post(f"/kbs/test-kb/webhooks/{other.pk}/enabled/", {"enabled": "false"}).status_code == 404
    assert WebhookEndpoint.objects.get(pk=other.pk).enabled


def test_the_page_lists_deliveries_with_their_attempts_escaped(admin_client, knowledge_base):
    endpoint = add_endpoint(knowledge_base, events=["gate.refused"])
    [message] = notify(knowledge_base=knowledge_base, event="gate.refused", payload={"candidate": "retriever-v4"})
    WebhookAttempt.objects.create(message=message, status_code=500, error=f"HTTP 500: {XSS}", duration_ms=12)
    WebhookAttempt.objects.create(message=message, error="ConnectionRefusedError: refused", duration_ms=1)

    html = admin_client.get("/kbs/test-kb/webhooks/").content.decode()
    assert message.message_id in html and "gate.refused" in html and endpoint.url in html
    assert "HTTP 500" in html and "no answer" in html and "ConnectionRefusedError: refused" in html
    assert ESCAPED in html and XSS not in html
    assert "0 delivered · 1 pending · 0 failed" in html


def test_the_page_takes_a_fixed_number_of_queries(admin_client, knowledge_base):
    def count_queries():
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get("/kbs/test-kb/webhooks/").status_code == 200
        return len(queries)

    add_endpoint(knowledge_base)
    notify(knowledge_base=knowledge_base, event="run.failed", payload={"run": 1})
    few = count_queries()
    for i in range(2, 5):
        add_endpoint(knowledge_base, url=f"https://hooks.example.com/{i}")
    for i in range(5):
        for message in notify(knowledge_base=knowledge_base, event="run.failed", payload={"run": i}):
            WebhookAttempt.objects.create(message=message, status_code=500)
    assert count_queries() == few


def test_the_model_pages_link_to_the_webhooks(admin_client, knowledge_base):
    assert b'href="/kbs/test-kb/webhooks/"' in admin_client.get("/kbs/test-kb/models/").content


def test_the_django_admin_lists_the_webhook_rows(admin_client, knowledge_base):
    add_endpoint(knowledge_base)
    [message] = notify(knowledge_base=knowledge_base, event="run.failed", payload={"run": 1})
    WebhookAttempt.objects.create(message=message, status_code=502, error="bad gateway")
    for url in ["/admin/training/webhookendpoint/", "/admin/training/webhookmessage/", "/admin/training/webhookattempt/",
                f"/admin/training/webhookmessage/{message.pk}/change/"]:
        assert admin_client.get(url).status_code == 200, url
    assert b"bad gateway" in admin_client.get(f"/admin/training/webhookmessage/{message.pk}/change/").content
