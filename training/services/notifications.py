"""Loop notifications: an event of a knowledge base becomes one webhook message per endpoint
that subscribes to it (delivered by training.tasks.webhook_message_deliver_task) and an e-mail
to the admins.

Events are WebhookEndpoint.Event values; payloads are small JSON objects naming the knowledge
base, the component and the versions involved, so a receiver needs no second request.
"""

import uuid

from django.db import transaction

from knowledge.models import KnowledgeBase
from training.models import WebhookEndpoint, WebhookMessage


def notify(*, knowledge_base: KnowledgeBase, event: str, payload: dict) -> list[WebhookMessage]:
    """Record the event for every enabled endpoint that takes it; delivery starts after commit."""
    if event not in WebhookEndpoint.Event.values:
        raise ValueError(f"Unknown event {event!r}")
    body = {"knowledge_base": knowledge_base.slug, **payload}
    messages = []
    for endpoint in WebhookEndpoint.objects.filter(knowledge_base=knowledge_base, enabled=True):
        if endpoint.events and event not in endpoint.events:
            continue
        messages.append(
            WebhookMessage.objects.create(endpoint=endpoint, message_id=f"msg_{uuid.uuid4().hex}", event=event, payload=body)
        )
    for message in messages:
        transaction.on_commit(lambda pk=message.pk: _enqueue_delivery(pk))
    return messages


def _enqueue_delivery(message_id: int) -> None:
    from training.tasks import webhook_message_deliver_task

    webhook_message_deliver_task.delay(message_id)
