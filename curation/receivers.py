"""Curation's answers to signals: new turns (knowledge's `turns_stored`, sent after commit) are
split into batches whose suggestions a worker computes; new final labels (curation's own
`labels_finalised`) make a worker recalibrate and re-measure the suggestion agents; a new
knowledge base gets the default failure tags."""

import logging

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

from curation.signals import labels_finalised
from knowledge.models import KnowledgeBase
from knowledge.signals import turns_stored

logger = logging.getLogger(__name__)


@receiver(turns_stored, dispatch_uid="curation.suggest_for_new_turns")
def suggest_for_new_turns(sender, *, knowledge_base_id, turn_ids, **kwargs) -> None:
    from curation.tasks import suggestions_compute_task

    size = max(1, settings.RAGLOOP_SUGGESTION_BATCH_SIZE)
    for start in range(0, len(turn_ids), size):
        try:
            suggestions_compute_task.delay(list(turn_ids[start : start + size]))
        except Exception:  # noqa: BLE001  the turns are stored; a broker outage must not fail the request
            # `manage.py suggestions_compute <kb>` queues what was missed.
            logger.exception("Could not queue suggestions for turns %s", turn_ids[start : start + size])


@receiver(labels_finalised, dispatch_uid="curation.measure_agents_when_labels_arrive")
def measure_agents_when_labels_arrive(sender, *, knowledge_base_id, **kwargs) -> None:
    from curation.tasks import suggestion_agents_measure_task

    try:
        suggestion_agents_measure_task.delay(knowledge_base_id)
    except Exception:  # noqa: BLE001  as above: the labels are stored
        logger.exception("Could not queue the agent measurement of knowledge base %s", knowledge_base_id)


@receiver(post_save, sender=KnowledgeBase, dispatch_uid="curation.failure_tags_for_new_knowledge_base")
def failure_tags_for_new_knowledge_base(sender, *, instance, created, raw=False, **kwargs) -> None:
    # knowledge/ cannot know curation's tags, so curation answers the knowledge base's creation;
    # existing knowledge bases got theirs from migration curation 0010.
    if created and not raw:
        from curation.services.failure_tags import failure_tags_create_defaults

        failure_tags_create_defaults(knowledge_base=instance)
