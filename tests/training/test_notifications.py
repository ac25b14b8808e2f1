"""Loop notifications: Standard Webhooks signatures (checked by hand and by the reference
library), delivery to a real local HTTP receiver with attempt rows, backoff and give-up, the
resend of lost messages, who gets which event, the admins' e-mail, and the events that
promotion, rollback and failed runs emit."""

import base64
import hashlib
import hmac
import json
import time
from datetime import timedelta
from http.server import ThreadingHTTPServer

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.utils import timezone

from knowledge.errors import InvalidInput
from tests.rag.conftest import JsonReplyHandler
from training.models import TrainingRun, WebhookAttempt, WebhookEndpoint, WebhookMessage
from training.services.notifications import notification_email, notify
from training.services.runs import training_run_fail_waiting, training_runs_fail_stalled
from training.services.versions import model_version_promote, model_version_rollback
from training.services.webhook_signatures import (
    WebhookVerificationError,
    webhook_headers,
    webhook_secret_generate,
    webhook_signature,
    webhook_verify,
)
from training.services.webhooks import (
    backoff_seconds,
    webhook_endpoint_create,
    webhook_message_deliver,
    webhook_messages_resend_due,
)

from .conftest import Receiver, retriever_version

# The secret of the Standard Webhooks spec's own example (base64 of the key bytes).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


# --- a real receiver -------------------------------------------------------------------------


@pytest.fixture
def receiver():
    with Receiver() as server:
        yield server


@pytest.fixture
def endpoint(knowledge_base, receiver):
    endpoint = webhook_endpoint_create(knowledge_base=knowledge_base, url=receiver.url, events=[])
    receiver.secret = endpoint.secret
    return endpoint


def gate_refused(knowledge_base):
    return notify(
        knowledge_base=knowledge_base,
        event="gate.refused",
        payload={"component": "retriever", "cycle": 3, "candidate": "retriever-v4", "reason": "nDCG@10 fell by 0.02"},
    )


@pytest.fixture
def tasks_run_here(monkeypatch):
    """Run the notification tasks in this process when they are enqueued, as a worker would."""
    from training import tasks

    for task in (tasks.webhook_message_deliver_task, tasks.notification_email_send_task):
        monkeypatch.setattr(task, "delay", lambda *args, task=task: task.apply(args=args))


def make_due(message):
    WebhookMessage.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now())


# --- signatures ------------------------------------------------------------------------------


def test_signature_matches_a_hand_computed_hmac_and_the_reference_library():
    body = '{"type":"gate.refused","timestamp":"2026-01-01T00:00:00Z","data":{"x":1}}'
    message_id, timestamp = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    key = base64.b64decode(SPEC_SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()).decode()
    assert webhook_signature(secret=SPEC_SECRET, message_id=message_id, timestamp=timestamp, body=body) == f"v1,{expected}"

    standardwebhooks = pytest.importorskip("standardwebhooks")
    headers = webhook_headers(secret=SPEC_SECRET, message_id=message_id, body=body)
    assert standardwebhooks.Webhook(SPEC_SECRET).verify(body, headers) == json.loads(body)


def test_verify_accepts_a_fresh_signature_and_refuses_tampering_old_and_future_requests():
    secret = webhook_secret_generate()
    body = '{"type":"run.failed","data":{"run":7}}'
    now = time.time()
    headers = webhook_headers(secret=secret, message_id="msg_1", body=body, timestamp=int(now))
    webhook_verify(secret=secret, headers=headers, body=body.encode(), now=now)
    webhook_verify(secret=secret, headers={k.upper(): v for k, v in headers.items()}, body=body, now=now + 299)

    with pytest.raises(WebhookVerificationError, match="No signature"):
        webhook_verify(secret=secret, headers=headers, body=body.replace("7", "8"), now=now)
    with pytest.raises(WebhookVerificationError, match="No signature"):
        webhook_verify(secret=secret, headers={**headers, "webhook-id": "msg_2"}, body=body, now=now)
    with pytest.raises(WebhookVerificationError, match="No signature"):
        webhook_verify(secret=webhook_secret_generate(), headers=headers, body=body, now=now)
    with pytest.raises(WebhookVerificationError, match="too far"):
        webhook_verify(secret=secret, headers=headers, body=body, now=now + 301)
    with pytest.raises(WebhookVerificationError, match="too far"):
        webhook_verify(secret=secret, headers=headers, body=body, now=now - 301)
    with pytest.raises(WebhookVerificationError, match="Missing"):
        webhook_verify(secret=secret, headers={"webhook-id": "msg_1"}, body=body, now=now)


def test_the_reference_library_refuses_a_tampered_body_we_signed():
    standardwebhooks = pytest.importorskip("standardwebhooks")
    secret = webhook_secret_generate()
    headers = webhook_headers(secret=secret, message_id="msg_1", body='{"a":1}')
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify('{"a":2}', headers)


def test_a_new_secret_is_24_random_bytes_in_the_spec_format():
    first, second = webhook_secret_generate(), webhook_secret_generate()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 24


# --- endpoints -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, message",
    [
        ("", "Enter the URL"),
        ("ftp://example.com/hook", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("https://", "http:// or https://"),
        ("https://user:pw@example.com/hook", "no user name"),
        ("https://example.com/a b", "spaces"),
    ],
)
def test_an_endpoint_needs_an_http_url(knowledge_base, url, message):
    with pytest.raises(InvalidInput, match=message):
        webhook_endpoint_create(knowledge_base=knowledge_base, url=url, events=[])
    assert not WebhookEndpoint.objects.exists()


def test_an_endpoint_refuses_unknown_events(knowledge_base):
    with pytest.raises(InvalidInput, match="Unknown event 'cycle.started'"):
        webhook_endpoint_create(knowledge_base=knowledge_base, url="https://example.com/h", events=["cycle.started"])
    endpoint = webhook_endpoint_create(
        knowledge_base=knowledge_base, url="https://example.com/h", events=["run.failed", "run.failed", "gate.refused"]
    )
    assert endpoint.events == ["run.failed", "gate.refused"]
    assert endpoint.secret.startswith("whsec_")


# --- delivery --------------------------------------------------------------------------------


def test_a_message_is_delivered_signed_in_the_spec_envelope(
    endpoint, receiver, knowledge_base, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        [message] = gate_refused(knowledge_base)
    assert callbacks, "delivery is enqueued after commit"

    delivery = webhook_message_deliver(message_id=message.pk)

    assert delivery.status == "delivered" and delivery.retry_in is None
    [request] = receiver.requests
    assert request["verified"] and request["path"] == "/hooks/ragloop"
    assert request["headers"]["webhook-id"] == message.message_id
    assert request["headers"]["content-type"] == "application/json"
    envelope = json.loads(request["body"])
    assert envelope["type"] == "gate.refused"
    assert envelope["timestamp"].endswith("Z")
    assert envelope["data"] == {
        "knowledge_base": "test-kb", "component": "retriever", "cycle": 3, "candidate": "retriever-v4",
        "reason": "nDCG@10 fell by 0.02",
    }
    message.refresh_from_db()
    assert message.status == "delivered" and message.attempt_count == 1 and message.delivered_at is not None
    [attempt] = message.attempts.all()
    assert attempt.status_code == 200 and attempt.error == "" and attempt.next_retry_at is None


def test_a_redelivered_task_of_a_delivered_message_posts_nothing(endpoint, receiver, knowledge_base):
    [message] = gate_refused(knowledge_base)
    webhook_message_deliver(message_id=message.pk)
    again = webhook_message_deliver(message_id=message.pk)
    assert again.status == "delivered" and not again.attempted
    assert len(receiver.requests) == 1
    assert WebhookAttempt.objects.count() == 1


def test_a_500_is_retried_after_the_backoff_and_the_same_id_is_sent(endpoint, receiver, knowledge_base, settings):
    settings.RAGLOOP_WEBHOOK_BACKOFF_SECONDS = 30
    receiver.answers = [500]
    [message] = gate_refused(knowledge_base)

    first = webhook_message_deliver(message_id=message.pk)
    assert first.status == "pending" and first.retry_in == 30
    message.refresh_from_db()
    failed = message.attempts.get()
    assert failed.status_code == 500 and "HTTP 500" in failed.error and '"ok": false' in failed.error
    assert failed.next_retry_at == message.next_attempt_at
    assert timedelta(seconds=29) < message.next_attempt_at - failed.created_at <= timedelta(seconds=31)

    early = webhook_message_deliver(message_id=message.pk)  # e.g. beat's resend before the retry is due
    assert not early.attempted and len(receiver.requests) == 1

    make_due(message)
    second = webhook_message_deliver(message_id=message.pk)
    assert second.status == "delivered" and second.retry_in is None
    assert [a.status_code for a in message.attempts.all()] == [500, 200]
    first_id, second_id = (r["headers"]["webhook-id"] for r in receiver.requests)
    assert first_id == second_id == message.message_id
    assert all(r["verified"] for r in receiver.requests)


def test_backoff_doubles_and_is_capped(settings):
    settings.RAGLOOP_WEBHOOK_BACKOFF_SECONDS = 30
    assert [backoff_seconds(n) for n in range(1, 6)] == [30, 60, 120, 240, 480]
    assert backoff_seconds(40) == 6 * 3600


def test_after_the_last_try_a_message_is_failed(endpoint, receiver, knowledge_base, settings):
    settings.RAGLOOP_WEBHOOK_MAX_ATTEMPTS = 3
    receiver.answers = [503, 503, 503, 200]
    [message] = gate_refused(knowledge_base)
    countdowns = []
    for _ in range(3):
        make_due(message)
        countdowns.append(webhook_message_deliver(message_id=message.pk).retry_in)
    assert countdowns == [30, 60, None]
    message.refresh_from_db()
    assert message.status == "failed" and message.attempt_count == 3 and message.next_attempt_at is None
    assert [a.next_retry_at is None for a in message.attempts.all()] == [False, False, True]
    assert webhook_message_deliver(message_id=message.pk).attempted is False
    assert len(receiver.requests) == 3


def test_a_refused_connection_and_a_redirect_are_failed_tries(knowledge_base, receiver):
    closed = ThreadingHTTPServer(("127.0.0.1", 0), JsonReplyHandler)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens there now
    endpoint = webhook_endpoint_create(knowledge_base=knowledge_base, url=f"http://127.0.0.1:{port}/", events=[])
    [message] = gate_refused(knowledge_base)
    assert webhook_message_deliver(message_id=message.pk).retry_in == 30
    attempt = message.attempts.get()
    assert attempt.status_code is None and "refused" in attempt.error.lower()

    endpoint.delete()
    receiver.secret = webhook_endpoint_create(knowledge_base=knowledge_base, url=receiver.url, events=[]).secret
    receiver.answers = [302]
    [message] = gate_refused(knowledge_base)
    webhook_message_deliver(message_id=message.pk)
    assert message.attempts.get().status_code == 302
    assert len(receiver.requests) == 1  # the redirect was not followed


def test_endpoints_get_only_the_events_they_subscribe_to_and_disabled_ones_nothing(knowledge_base, receiver):
    everything = webhook_endpoint_create(knowledge_base=knowledge_base, url=receiver.url + "/all", events=[])
    runs_only = webhook_endpoint_create(knowledge_base=knowledge_base, url=receiver.url + "/runs", events=["run.failed"])
    disabled = webhook_endpoint_create(knowledge_base=knowledge_base, url=receiver.url + "/off", events=[])
    disabled.enabled = False
    disabled.save()

    messages = gate_refused(knowledge_base)

    assert [m.endpoint for m in messages] == [everything]
    assert not runs_only.messages.exists() and not disabled.messages.exists()


def test_a_message_for_an_endpoint_disabled_since_fails_without_a_request(endpoint, receiver, knowledge_base):
    [message] = gate_refused(knowledge_base)
    endpoint.enabled = False
    endpoint.save()
    assert webhook_message_deliver(message_id=message.pk).status == "failed"
    assert receiver.requests == []
    assert "disabled" in message.attempts.get().error


def test_a_message_whose_task_was_lost_is_sent_again(endpoint, receiver, knowledge_base):
    [message] = gate_refused(knowledge_base)
    assert webhook_messages_resend_due(grace_seconds=60) == []  # just created: its own task is on its way
    WebhookMessage.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now() - timedelta(minutes=5))
    [delivered] = gate_refused(knowledge_base)
    webhook_message_deliver(message_id=delivered.pk)
    WebhookMessage.objects.filter(pk=delivered.pk).update(next_attempt_at=timezone.now() - timedelta(minutes=5))

    assert webhook_messages_resend_due(grace_seconds=60) == [message.pk]


def test_the_task_runs_the_delivery(endpoint, receiver, knowledge_base):
    from training.tasks import webhook_message_deliver_task

    [message] = gate_refused(knowledge_base)
    webhook_message_deliver_task(message.pk)
    message.refresh_from_db()
    assert message.status == "delivered" and receiver.requests[0]["verified"]


def test_notify_refuses_an_unknown_event(knowledge_base):
    with pytest.raises(ValueError, match="Unknown event"):
        notify(knowledge_base=knowledge_base, event="cycle.exploded", payload={})


# --- e-mail ----------------------------------------------------------------------------------


@pytest.fixture
def people(db, django_user_model):
    admins = Group.objects.get_or_create(name="admin")[0]
    curators = Group.objects.get_or_create(name="curator")[0]
    make = django_user_model.objects.create_user
    django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")
    make("ada", "ada@example.com", "pw").groups.add(admins)
    make("nomail", "", "pw").groups.add(admins)
    make("gone", "gone@example.com", "pw", is_active=False).groups.add(admins)
    make("cur", "cur@example.com", "pw").groups.add(curators)


def test_admins_with_an_address_get_the_email(knowledge_base, people, tasks_run_here, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        gate_refused(knowledge_base)
    [email] = mail.outbox
    assert sorted(email.to) == ["ada@example.com", "root@example.com"]
    assert email.subject == "[ragloop] test-kb: retriever-v4 refused by the gate"
    assert "Knowledge base: Test KB (test-kb)" in email.body
    assert "Reason: nDCG@10 fell by 0.02" in email.body and "Cycle: 3" in email.body


def test_no_admin_with_an_address_means_no_email(knowledge_base, tasks_run_here, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        gate_refused(knowledge_base)
    assert mail.outbox == []


def test_a_failing_enqueue_does_not_fail_the_caller(knowledge_base, endpoint, monkeypatch, django_capture_on_commit_callbacks):
    from training import tasks

    def broker_down(*args, **kwargs):
        raise OSError("broker down")

    monkeypatch.setattr(tasks.webhook_message_deliver_task, "delay", broker_down)
    monkeypatch.setattr(tasks.notification_email_send_task, "delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        [message] = gate_refused(knowledge_base)
    assert WebhookMessage.objects.get(pk=message.pk).status == "pending"  # beat's resend will find it


@pytest.mark.parametrize(
    "event, payload, subject",
    [
        ("version.promoted", {"component": "retriever", "version": "retriever-v4", "previous": "retriever-v3", "automatic": True},
         "retriever-v4 automatically promoted, replacing retriever-v3"),
        ("version.promoted", {"component": "generator", "version": "generator-v1", "previous": None, "automatic": False},
         "generator-v1 promoted, replacing the base model"),
        ("version.rolled_back", {"component": "retriever", "version": "retriever-v4", "restored": None},
         "retriever-v4 rolled back; the base model serves the retriever again"),
        ("run.failed", {"component": "generator", "run": 12, "error": "CUDA out of memory"}, "generator training run #12 failed"),
        ("candidate.awaiting_review", {"component": "retriever", "candidate": "retriever-v5"},
         "retriever-v5 awaits review before it can go live"),
        ("cycle.finished", {"cycle": 3, "status": "succeeded"}, "loop cycle 3 finished (succeeded)"),
    ],
)
def test_email_subjects_say_what_happened(knowledge_base, event, payload, subject):
    title, body = notification_email(knowledge_base=knowledge_base, event=event, payload=payload)
    assert title == f"[ragloop] test-kb: {subject}"
    assert f"Event: {event}" in body


def test_a_line_break_in_a_payload_never_reaches_the_subject(knowledge_base):
    payload = {"candidate": "v4\nBcc: x@example.com"}
    title, _ = notification_email(knowledge_base=knowledge_base, event="gate.refused", payload=payload)
    assert "\n" not in title


# --- events of promotion, rollback and failed runs --------------------------------------------


def test_promote_and_rollback_emit_their_events(
    embedded_knowledge_base, admin_user, receiver, tasks_run_here, django_capture_on_commit_callbacks
):
    kb = embedded_knowledge_base
    endpoint = webhook_endpoint_create(knowledge_base=kb, url=receiver.url, events=["version.promoted", "version.rolled_back"])
    receiver.secret = endpoint.secret
    first = retriever_version(kb, "retriever-v1")
    second = retriever_version(kb, "retriever-v2")
    with django_capture_on_commit_callbacks(execute=True):
        model_version_promote(version=first, actor=admin_user, reason="better")
        model_version_promote(version=second, automatic=True)
        model_version_rollback(knowledge_base=kb, component="retriever", actor=admin_user, reason="worse")

    promoted_first, promoted_second, rolled_back = endpoint.messages.order_by("pk")
    assert promoted_first.event == "version.promoted"
    assert promoted_first.payload == {
        "knowledge_base": kb.slug, "component": "retriever", "version": "retriever-v1", "previous": None,
        "actor": "root", "automatic": False, "reason": "better",
    }
    assert promoted_second.payload["previous"] == "retriever-v1" and promoted_second.payload["automatic"] is True
    assert promoted_second.payload["actor"] is None
    assert rolled_back.event == "version.rolled_back"
    assert rolled_back.payload == {
        "knowledge_base": kb.slug, "component": "retriever", "version": "retriever-v2", "restored": "retriever-v1",
        "actor": "root", "reason": "worse",
    }
    assert [r["verified"] for r in receiver.requests] == [True, True, True]
    assert set(endpoint.messages.values_list("status", flat=True)) == {"delivered"}
    assert [m.subject for m in mail.outbox] == [
        "[ragloop] test-kb: retriever-v1 promoted, replacing the base model",
        "[ragloop] test-kb: retriever-v2 automatically promoted, replacing retriever-v1",
        "[ragloop] test-kb: retriever-v2 rolled back; retriever-v1 serves the retriever again",
    ]


def test_a_refused_promotion_emits_nothing(embedded_knowledge_base, receiver):
    from knowledge.errors import Conflict

    kb = embedded_knowledge_base
    endpoint = webhook_endpoint_create(knowledge_base=kb, url=receiver.url, events=[])
    version = retriever_version(kb, "retriever-v1")
    model_version_promote(version=version)
    with pytest.raises(Conflict):
        model_version_promote(version=version)
    assert endpoint.messages.count() == 1


def test_failed_runs_emit_run_failed(knowledge_base, receiver, settings):
    endpoint = webhook_endpoint_create(knowledge_base=knowledge_base, url=receiver.url, events=["run.failed"])
    waiting = TrainingRun.objects.create(knowledge_base=knowledge_base, component="retriever", mode="contrastive")
    stalled = TrainingRun.objects.create(
        knowledge_base=knowledge_base, component="generator", mode="sft", status="running",
        started_at=timezone.now() - timedelta(hours=2), heartbeat_at=timezone.now() - timedelta(hours=1),
    )  # fmt: skip

    training_run_fail_waiting(run_id=waiting.pk)
    assert training_runs_fail_stalled() == [stalled.pk]
    training_run_fail_waiting(run_id=waiting.pk)  # already failed: no second event

    by_run = {m.payload["run"]: m.payload for m in endpoint.messages.all()}
    assert set(by_run) == {waiting.pk, stalled.pk}
    assert by_run[waiting.pk]["component"] == "retriever" and "held its lock" in by_run[waiting.pk]["error"]
    assert by_run[stalled.pk]["mode"] == "sft" and "no heartbeat" in by_run[stalled.pk]["error"]


def test_a_run_the_engine_fails_emits_run_failed_and_a_cancelled_one_does_not(knowledge_base, receiver):
    from training.services.runs.engine import _finish

    endpoint = webhook_endpoint_create(knowledge_base=knowledge_base, url=receiver.url, events=[])
    failing, cancelled = (
        TrainingRun.objects.create(knowledge_base=knowledge_base, component="retriever", mode="contrastive", status="running")
        for _ in range(2)
    )
    _finish(failing.pk, TrainingRun.Status.FAILED, error="ValueError: no positives")
    _finish(cancelled.pk, TrainingRun.Status.CANCELLED)
    [message] = endpoint.messages.all()
    assert message.event == "run.failed"
    assert message.payload == {
        "knowledge_base": "test-kb", "component": "retriever", "run": failing.pk, "mode": "contrastive",
        "error": "ValueError: no positives",
    }
