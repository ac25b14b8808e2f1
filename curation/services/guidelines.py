"""The guidelines curators read while judging: Markdown an admin writes, stored on the knowledge
base and rendered sanitised by curation.selectors.guidelines_html."""

import hashlib

from django.db import transaction

from knowledge.errors import InvalidInput
from knowledge.models import KnowledgeBase
from knowledge.services.audit import audit_record

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
    with transaction.atomic():
        previous = KnowledgeBase.objects.select_for_update().values_list("guidelines", flat=True).get(pk=knowledge_base.pk)
        KnowledgeBase.objects.filter(pk=knowledge_base.pk).update(guidelines=guidelines)
        if previous != guidelines:
            audit_record(
                action="knowledge_base.settings_change", object_type="knowledge_base", object_id=knowledge_base.pk,
                knowledge_base=knowledge_base, before=_summary(previous), after=_summary(guidelines),
            )  # fmt: skip
    knowledge_base.guidelines = guidelines
    return knowledge_base


def _summary(guidelines: str) -> dict:
    """The audit log keeps the guidelines' size and digest, not their text."""
    return {"guidelines_chars": len(guidelines), "guidelines_sha256": hashlib.sha256(guidelines.encode()).hexdigest()[:16]}
