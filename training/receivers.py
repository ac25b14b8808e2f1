"""Training's answers to the knowledge app's signals (knowledge knows nothing of training).

A full-mode retriever candidate has its own embedding space; it is evaluated once every chunk
has a vector there, which knowledge announces with `embedding_space_ready`.
"""

from django.dispatch import receiver

from knowledge.signals import embedding_space_ready
from training.services.runs import retriever_candidates_evaluate_when_ready


@receiver(embedding_space_ready, dispatch_uid="training.evaluate_retriever_candidate_when_space_ready")
def evaluate_retriever_candidate_when_space_ready(sender, *, space, **kwargs) -> None:
    retriever_candidates_evaluate_when_ready(space=space)
