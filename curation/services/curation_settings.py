"""A knowledge base's curation settings, set by admins: overlap (labels per turn), how long
"next" holds a turn, and the guidelines curators read while judging."""

from django.db import transaction

from curation.errors import InvalidInput
from curation.models import KnowledgeBase
from curation.services.queue import knowledge_base_overlap_set

MAX_GUIDELINES = 100_000
MAX_HOLD_MINUTES = 24 * 60


def knowledge_base_guidelines_set(*, knowledge_base: KnowledgeBase, guidelines: str) -> KnowledgeBase:
    """Replace the guidelines (Markdown; rendered sanitised by selectors_curation.guidelines_html)."""
    if not isinstance(guidelines, str):
        raise InvalidInput("The guidelines must be text.")
    if "\x00" in guidelines:
        raise InvalidInput("The guidelines must not contain NUL characters.")
    if len(guidelines) > MAX_GUIDELINES:
        raise InvalidInput(f"The guidelines are longer than {MAX_GUIDELINES} characters.")
    guidelines = guidelines.replace("\r\n", "\n")
    KnowledgeBase.objects.filter(pk=knowledge_base.pk).update(guidelines=guidelines)
    knowledge_base.guidelines = guidelines
    return knowledge_base


def knowledge_base_curation_settings_set(
    *, knowledge_base: KnowledgeBase, labels_per_turn: int, hold_minutes: int
) -> KnowledgeBase:
    """Set overlap and hold time together; both are checked before either is written."""
    if not isinstance(hold_minutes, int) or not 1 <= hold_minutes <= MAX_HOLD_MINUTES:
        raise InvalidInput(f"Hold minutes must be between 1 and {MAX_HOLD_MINUTES}.")
    if not isinstance(labels_per_turn, int) or not 1 <= labels_per_turn <= 10:
        raise InvalidInput("Labels per turn must be between 1 and 10.")
    with transaction.atomic():
        KnowledgeBase.objects.filter(pk=knowledge_base.pk).update(hold_minutes=hold_minutes)
        knowledge_base.hold_minutes = hold_minutes
        if labels_per_turn != knowledge_base.labels_per_turn:
            # Also reopens or closes turns to match the new overlap.
            knowledge_base_overlap_set(knowledge_base=knowledge_base, labels_per_turn=labels_per_turn)
    return knowledge_base
