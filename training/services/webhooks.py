"""Webhook endpoints and the delivery of their messages: adding and removing an endpoint, one
signed delivery attempt of a message (a WebhookAttempt row per try, exponential backoff, failed
after the last try), and re-sending messages whose task was lost.

The retry policy is ours rather than Celery's autoretry because every try must be a row an admin
can read, and the message row (not the task) must decide whether a try is due: a redelivered task,
a retry and beat's resend may all arrive for one message, and only one of them may post it.
"""

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from knowledge.errors import InvalidInput
from knowledge.models import KnowledgeBase
from training.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from training.services.webhook_signatures import webhook_headers, webhook_secret_generate

logger = logging.getLogger(__name__)

URL_MAX_LENGTH = 1000
BACKOFF_MAX_SECONDS = 6 * 3600
RESPONSE_EXCERPT_CHARS = 500
USER_AGENT = "ragloop-webhooks/1"


# --- endpoints -------------------------------------------------------------------------------


def _validated_url(url: str) -> str:
    url = (url or "").strip()
    if not url:
        raise InvalidInput("Enter the URL the events should be posted to.")
    if len(url) > URL_MAX_LENGTH:
        raise InvalidInput(f"The URL is longer than {URL_MAX_LENGTH} characters.")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidInput("The URL must start with http:// or https:// and name a host.")
    if parts.username or parts.password:
        raise InvalidInput("Put no user name or password in the URL; receivers verify the signature instead.")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise InvalidInput("The URL may not contain spaces or control characters.")
    return url


def _validated_events(events) -> list[str]:
    events = list(dict.fromkeys(events or []))  # keeps the order, drops repeats
    unknown = [event for event in events if event not in WebhookEndpoint.Event.values]
    if unknown:
        raise InvalidInput(f"Unknown event {unknown[0]!r}; choose from {', '.join(WebhookEndpoint.Event.values)}.")
    return events


def webhook_endpoint_create(*, knowledge_base: KnowledgeBase, url: str, events: list[str], created_by=None) -> WebhookEndpoint:
    """Add an endpoint with a new secret; `events` empty means every event."""
    return WebhookEndpoint.objects.create(
        knowledge_base=knowledge_base,
        url=_validated_url(url),
        events=_validated_events(events),
        secret=webhook_secret_generate(),
        created_by=created_by,
    )


def webhook_endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Remove the endpoint with its messages and attempts (a queued task for one finds nothing)."""
    endpoint.delete()


def webhook_endpoint_set_enabled(*, endpoint: WebhookEndpoint, enabled: bool) -> WebhookEndpoint:
    """A disabled endpoint gets no new messages; its pending ones fail at their next try."""
    endpoint.enabled = enabled
    endpoint.save(update_fields=["enabled"])
    return endpoint


# --- delivery --------------------------------------------------------------------------------


def max_attempts() -> int:
    return int(getattr(settings, "RAGLOOP_WEBHOOK_MAX_ATTEMPTS", 6))


def backoff_seconds(attempt: int) -> int:
    """Wait after the `attempt`-th failed try: base, 2×base, 4×base … (30, 60, 120 … by default), capped."""
    base = int(getattr(settings, "RAGLOOP_WEBHOOK_BACKOFF_SECONDS", 30))
    return min(base * 2 ** (attempt - 1), BACKOFF_MAX_SECONDS)


def request_timeout_seconds() -> float:
    return float(getattr(settings, "RAGLOOP_WEBHOOK_TIMEOUT_SECONDS", 10))


def webhook_message_body(message: WebhookMessage) -> str:
    """The request body, the same on every try: the spec's envelope around the payload."""
    occurred = message.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": message.event, "timestamp": occurred, "data": message.payload}, separators=(",", ":"))


@dataclass(frozen=True)
class Delivery:
    """What one call of webhook_message_deliver did; `retry_in` is the countdown of the next try."""

    status: str  # the message's status afterwards
    attempted: bool = False
    retry_in: int | None = None


@dataclass(frozen=True)
class _Answer:
    status_code: int | None
    error: str
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect is an answer that is not 2xx: following it would post the event somewhere the
    # admin did not configure (and urllib would turn the POST into a GET).
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def _post(*, url: str, body: str, headers: dict[str, str]) -> _Answer:
    request = urllib.request.Request(
        url,
        data=body.encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
    )
    started = time.monotonic()
    status_code, error = None, ""
    try:
        with _opener.open(request, timeout=request_timeout_seconds()) as response:
            status_code = response.status
    except urllib.error.HTTPError as answer:  # a non-2xx answer (redirects included)
        status_code = answer.code
        excerpt = answer.read(RESPONSE_EXCERPT_CHARS).decode(errors="replace").strip()
        error = f"HTTP {answer.code} {answer.reason}" + (f": {excerpt}" if excerpt else "")
    except (urllib.error.URLError, OSError, ValueError) as failure:  # refused, timed out, DNS, TLS
        reason = getattr(failure, "reason", failure)
        error = f"{type(reason).__name__}: {reason}"[:2000]
    return _Answer(status_code=status_code, error=error, duration_ms=round((time.monotonic() - started) * 1000))


def webhook_message_deliver(*, message_id: int) -> Delivery:
    """Make one try at delivering a message if one is due, and record it.

    The try is claimed under the row lock (attempt_count goes up, next_attempt_at moves past the
    request's timeout) and the lock is released before the request, so no transaction stays open
    while a receiver answers; a second task arriving meanwhile finds the try not due and returns.
    A worker killed during the request leaves the claim, which beat's resend picks up later.
    """
    now = timezone.now()
    with transaction.atomic():
        message = WebhookMessage.objects.select_for_update().select_related("endpoint").filter(pk=message_id).first()
        if message is None:
            return Delivery(status="gone")  # its endpoint was deleted
        if message.status != WebhookMessage.Status.PENDING:
            return Delivery(status=message.status)  # a redelivered task: nothing left to do
        # A second of slack: a retry's countdown and next_attempt_at come from two clocks.
        if message.next_attempt_at and message.next_attempt_at > now + timedelta(seconds=1):
            return Delivery(status=message.status)
        endpoint = message.endpoint
        if not endpoint.enabled or message.attempt_count >= max_attempts():
            error = (
                "The endpoint was disabled before the message was delivered."
                if not endpoint.enabled
                else "No tries left (the last one did not report back)."
            )
            WebhookAttempt.objects.create(message=message, error=error)
            message.status = WebhookMessage.Status.FAILED
            message.next_attempt_at = None
            message.save(update_fields=["status", "next_attempt_at"])
            return Delivery(status=message.status)
        message.attempt_count += 1
        message.next_attempt_at = now + timedelta(seconds=request_timeout_seconds() + 60)
        message.save(update_fields=["attempt_count", "next_attempt_at"])
        attempt_number = message.attempt_count
        url, secret, message_key, body = endpoint.url, endpoint.secret, message.message_id, webhook_message_body(message)

    answer = _post(url=url, body=body, headers=webhook_headers(secret=secret, message_id=message_key, body=body))

    with transaction.atomic():
        message = WebhookMessage.objects.select_for_update().filter(pk=message_id).first()
        if message is None:
            return Delivery(status="gone", attempted=True)
        finished = timezone.now()
        retry_in = None
        if answer.delivered:
            message.status = WebhookMessage.Status.DELIVERED
            message.delivered_at = finished
            message.next_attempt_at = None
        elif attempt_number >= max_attempts():
            message.status = WebhookMessage.Status.FAILED
            message.next_attempt_at = None
        else:
            retry_in = backoff_seconds(attempt_number)
            message.next_attempt_at = finished + timedelta(seconds=retry_in)
        WebhookAttempt.objects.create(
            message=message,
            status_code=answer.status_code,
            error=answer.error,
            duration_ms=answer.duration_ms,
            next_retry_at=message.next_attempt_at,
        )
        message.save(update_fields=["status", "delivered_at", "next_attempt_at"])
    if not answer.delivered:
        logger.info("Webhook message %s to %s: try %s failed (%s)", message_key, url, attempt_number, answer.error)
    return Delivery(status=message.status, attempted=True, retry_in=retry_in)


def _enqueue_delivery(message_id: int) -> None:
    from training.tasks import webhook_message_deliver_task  # tasks import services, not the reverse

    webhook_message_deliver_task.delay(message_id)


def webhook_messages_resend_due(*, grace_seconds: int | None = None) -> list[int]:
    """Enqueue pending messages whose next try has been due for longer than `grace_seconds`
    (one loop tick by default): their task message was lost (a broker restart, a crash before
    the retry was sent). Sending one twice is harmless: delivery re-checks under the row lock."""
    grace = int(settings.RAGLOOP_LOOP_TICK_SECONDS) if grace_seconds is None else grace_seconds
    cutoff = timezone.now() - timedelta(seconds=grace)
    due = list(
        WebhookMessage.objects.filter(status=WebhookMessage.Status.PENDING)
        .filter(Q(next_attempt_at__lte=cutoff) | Q(next_attempt_at__isnull=True, created_at__lte=cutoff))
        .order_by("pk")
        .values_list("pk", flat=True)[:1000]
    )
    for message_id in due:
        _enqueue_delivery(message_id)
    return due
