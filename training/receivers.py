"""Training's answers to the knowledge app's signals (knowledge knows nothing of training).

A full-mode retriever candidate has its own embedding space; it is evaluated once every chunk
has a vector there, which knowledge announces with `embedding_space_ready`. New final labels
(curation's `labels_finalised`) make the retraining policies of their knowledge base check
their label-count triggers.
"""

from django.dispatch import receiver

from curation.signals import labels_finalised
from knowledge.signals import embedding_space_ready
from training.services.loop import loop_cycles_advance_soon
from training.services.runs import retriever_candidates_evaluate_when_ready


@receiver(embedding_space_ready, dispatch_uid="training.evaluate_retriever_candidate_when_space_ready")
def evaluate_retriever_candidate_when_space_ready(sender, *, space, **kwargs) -> None:
    version_ids = retriever_candidates_evaluate_when_ready(space=space)
    # A cycle waiting in its embed stage moves on now (its evaluate stage starts timing here).
    for version_id in version_ids:
        loop_cycles_advance_soon(candidate_id=version_id)


@receiver(labels_finalised, dispatch_uid="training.check_policies_when_labels_arrive")
def check_policies_when_labels_arrive(sender, *, knowledge_base_id, **kwargs) -> None:
    # Sent after commit; the check runs in a worker so a label submit never waits for it.
    from training.tasks import loop_policies_check_task

    loop_policies_check_task.delay(knowledge_base_id)
