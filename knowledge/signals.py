"""Signals the knowledge app sends for higher layers to act on (training and curation listen;
knowledge knows nothing of them)."""

from django.db import transaction
from django.dispatch import Signal

# Sent once, after commit, when a space that was building has a vector for every chunk.
# Arguments: space (EmbeddingSpace).
embedding_space_ready = Signal()

# Sent after commit when new turns were stored with their passages: a served answer, a batch of
# ingested turns, the new turns of an ingested conversation (curation computes suggestions).
# Arguments: knowledge_base_id (int), turn_ids (list[int]).
turns_stored = Signal()


def turns_stored_send_on_commit(*, knowledge_base_id: int, turn_ids: list[int]) -> None:
    """Announce new turns once the transaction that wrote them has committed (at once outside
    one); nothing is sent for an empty list or a transaction that rolls back."""
    turn_ids = list(turn_ids)
    if turn_ids:
        transaction.on_commit(
            lambda: turns_stored.send(sender=None, knowledge_base_id=knowledge_base_id, turn_ids=turn_ids)
        )
