"""The guidelines curators read while judging: Markdown an admin writes, stored on the knowledge
base and rendered sanitised by curation.selectors.guidelines_html."""

from knowledge.errors import InvalidInput
from knowledge.models import KnowledgeBase

MAX_GUIDELINES = 100_000


def knowledge_base_guidelines_set(*, knowledge_base: KnowledgeBase, guidelines: str) -> KnowledgeBase:
    """Replace the guidelines (Markdown)."""
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
