"""A webhook through the whole system: an event committed in a request-like transaction, a real
Celery worker posting it to a real local receiver, and a 500 answered with a retry after the
backoff (the countdown the worker sets)."""

import pytest
from django.db import transaction

from tests.conftest import wait_until
from tests.training.conftest import Receiver
from training.models import WebhookMessage
from training.services.notifications import notify
from training.services.webhooks import webhook_endpoint_create

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def fast_backoff(monkeypatch):
    # Read by the worker process when it starts: request this fixture before celery_worker_process.
    monkeypatch.setenv("RAGLOOP_WEBHOOK_BACKOFF_SECONDS", "1")


def test_the_worker_delivers_a_signed_webhook_and_retries_a_500(knowledge_base, fast_backoff, celery_worker_process):
    with Receiver() as receiver:
        endpoint = webhook_endpoint_create(knowledge_base=knowledge_base, url=receiver.url, events=["gate.refused"])
        receiver.secret = endpoint.secret
        receiver.answers = [500]
        with transaction.atomic():
            [message] = notify(
                knowledge_base=knowledge_base, event="gate.refused",
                payload={"component": "retriever", "cycle": 1, "candidate": "retriever-v2", "reason": "worse"},
            )  # fmt: skip
            assert receiver.requests == []  # nothing leaves before commit

        def delivered():
            message.refresh_from_db()
            return message.status == WebhookMessage.Status.DELIVERED

        wait_until(delivered, timeout=60, message=f"the worker to deliver the webhook\n{celery_worker_process.log()}")

    assert [r["verified"] for r in receiver.requests] == [True, True]
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {message.message_id}
    attempts = list(message.attempts.all())
    assert [a.status_code for a in attempts] == [500, 200]
    assert attempts[0].next_retry_at is not None and attempts[1].next_retry_at is None
    assert attempts[1].created_at >= attempts[0].next_retry_at
