"""A knowledge base's pinned evaluation set: pinning a snapshot's held-out part so every later
candidate is scored on the same queries (training.services.evaluation reads it), and unpinning."""

from knowledge.errors import Conflict, InvalidInput
from knowledge.models import KnowledgeBase
from training.models import DatasetSnapshot, EvaluationSet


def evaluation_set_pin(*, knowledge_base: KnowledgeBase, snapshot: DatasetSnapshot, actor=None) -> EvaluationSet:
    """Pin `snapshot`'s held-out part as the knowledge base's evaluation set (replacing any)."""
    if snapshot.knowledge_base_id != knowledge_base.pk:
        raise InvalidInput(f"Snapshot {snapshot.pk} belongs to another knowledge base than {knowledge_base.slug!r}.")
    if snapshot.heldout_count == 0:
        raise InvalidInput(f"Snapshot {snapshot.pk} has no held-out examples; there is nothing to evaluate on.")
    pinned, _ = EvaluationSet.objects.update_or_create(
        knowledge_base=knowledge_base, defaults={"snapshot": snapshot, "pinned_by": actor}
    )
    return pinned


def evaluation_set_unpin(*, knowledge_base: KnowledgeBase) -> None:
    deleted, _ = EvaluationSet.objects.filter(knowledge_base=knowledge_base).delete()
    if not deleted:
        raise Conflict(f"Knowledge base {knowledge_base.slug!r} has no pinned evaluation set.")
