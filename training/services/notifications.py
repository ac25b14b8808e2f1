"""Loop notifications: an event of a knowledge base becomes one webhook message per endpoint
that subscribes to it (delivered by training.tasks.webhook_message_deliver_task) and an e-mail
to the admins (sent by training.tasks.notification_email_send_task).

Events are WebhookEndpoint.Event values; payloads are small JSON objects naming the knowledge
base, the component and the versions involved, so a receiver needs no second request. Both are
sent after the caller's transaction commits and never make the caller fail.
"""

import logging
import uuid

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from curation.permissions import ADMIN_GROUP
from knowledge.models import KnowledgeBase
from training.models import WebhookEndpoint, WebhookMessage

logger = logging.getLogger(__name__)

Event = WebhookEndpoint.Event


def notify(*, knowledge_base: KnowledgeBase, event: str, payload: dict) -> list[WebhookMessage]:
    """Record the event for every enabled endpoint that takes it; delivery and the admins' e-mail
    start after commit."""
    if event not in Event.values:
        raise ValueError(f"Unknown event {event!r}")
    body = {"knowledge_base": knowledge_base.slug, **payload}
    messages = []
    for endpoint in WebhookEndpoint.objects.filter(knowledge_base=knowledge_base, enabled=True):
        if endpoint.events and event not in endpoint.events:
            continue
        messages.append(
            WebhookMessage.objects.create(
                endpoint=endpoint,
                message_id=f"msg_{uuid.uuid4().hex}",
                event=event,
                payload=body,
                # Due at once: if the task below is lost, beat's resend finds the message.
                next_attempt_at=timezone.now(),
            )
        )
    # robust: a broker that is down is logged, not raised into the caller's committed request.
    for message in messages:
        transaction.on_commit(lambda pk=message.pk: _enqueue_delivery(pk), robust=True)
    if getattr(settings, "RAGLOOP_NOTIFICATION_EMAILS", True):
        transaction.on_commit(lambda: _enqueue_email(knowledge_base.pk, event, body), robust=True)
    return messages


def _enqueue_delivery(message_id: int) -> None:
    from training.tasks import webhook_message_deliver_task  # tasks import services, not the reverse

    webhook_message_deliver_task.delay(message_id)


def _enqueue_email(knowledge_base_id: int, event: str, payload: dict) -> None:
    from training.tasks import notification_email_send_task

    notification_email_send_task.delay(knowledge_base_id, event, payload)


# --- e-mail ----------------------------------------------------------------------------------


def admin_email_addresses() -> list[str]:
    """Addresses of the active admins that have one: the rule of curation.permissions.user_is_admin
    (superusers or the `admin` group), as one query."""
    admins = (
        get_user_model()
        .objects.filter(is_active=True)
        .exclude(email="")
        .filter(Q(is_superuser=True) | Q(groups__name=ADMIN_GROUP))
        .order_by("pk")
        .values_list("email", flat=True)
        .distinct()
    )
    return list(dict.fromkeys(admins))


def notification_headline(*, event: str, payload: dict) -> str:
    """One line saying what happened, e.g. "retriever-v4 refused by the gate"."""
    component = payload.get("component") or "model"
    version = payload.get("candidate") or payload.get("version") or f"a {component} candidate"
    if event == Event.GATE_REFUSED:
        return f"{version} refused by the gate"
    if event == Event.CANDIDATE_AWAITING_REVIEW:
        return f"{version} awaits review before it can go live"
    if event == Event.VERSION_PROMOTED:
        previous = payload.get("previous") or "the base model"
        how = "automatically promoted" if payload.get("automatic") else "promoted"
        return f"{version} {how}, replacing {previous}"
    if event == Event.VERSION_ROLLED_BACK:
        restored = payload.get("restored") or "the base model"
        return f"{version} rolled back; {restored} serves the {component} again"
    if event == Event.RUN_FAILED:
        run = f" #{payload['run']}" if payload.get("run") else ""
        return f"{component} training run{run} failed"
    if event == Event.CYCLE_FINISHED:
        cycle = f" {payload['cycle']}" if payload.get("cycle") else ""
        outcome = payload.get("outcome") or payload.get("status")
        return f"loop cycle{cycle} finished" + (f" ({outcome})" if outcome else "")
    return event


def _details(payload: dict) -> list[str]:
    lines = []
    for name, value in payload.items():
        if name == "knowledge_base" or value in (None, "", [], {}):
            continue
        shown = "yes" if value is True else "no" if value is False else str(value)
        lines.append(f"{name.replace('_', ' ').capitalize()}: {shown}")
    return lines


def notification_email(*, knowledge_base: KnowledgeBase, event: str, payload: dict) -> tuple[str, str]:
    """Subject and plain-text body of the admins' e-mail for one event."""
    headline = notification_headline(event=event, payload=payload)
    subject = f"[ragloop] {knowledge_base.slug}: {headline}"
    lines = [f"{headline[:1].upper()}{headline[1:]}.", "", f"Knowledge base: {knowledge_base.name} ({knowledge_base.slug})"]
    lines += [f"Event: {event}", *_details(payload)]
    public_url = getattr(settings, "RAGLOOP_PUBLIC_URL", "").rstrip("/")
    if public_url:
        lines += ["", f"Model versions: {public_url}{reverse('training_models', kwargs={'slug': knowledge_base.slug})}"]
    lines += ["", "-- ", "ragloop sends this to every admin with an e-mail address."]
    # A header may not carry a line break (Django refuses it); payload text can contain one.
    return " ".join(subject.split())[:200], "\n".join(lines) + "\n"


def notification_email_send(*, knowledge_base: KnowledgeBase, event: str, payload: dict) -> int:
    """Send the event's e-mail to the admins through Django's mail settings; returns how many
    messages went (0: no admin has an address)."""
    recipients = admin_email_addresses()
    if not recipients:
        return 0
    subject, body = notification_email(knowledge_base=knowledge_base, event=event, payload=payload)
    return EmailMessage(subject=subject, body=body, to=recipients).send()
