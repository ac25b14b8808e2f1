"""Signals the curation app sends for higher layers to act on (training listens; curation knows nothing of it)."""

from django.dispatch import Signal

# Sent after commit when final labels of a knowledge base were added or changed: a label
# submitted, an import finished, an adjudication recorded. Arguments: knowledge_base_id (int).
labels_finalised = Signal()


def labels_finalised_send_on_commit(knowledge_base_id: int) -> None:
    """Announce new labels once the transaction that wrote them has committed."""
    from django.db import transaction

    transaction.on_commit(lambda: labels_finalised.send(sender=None, knowledge_base_id=knowledge_base_id))
