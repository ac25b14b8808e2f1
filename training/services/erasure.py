"""Erasure: deleting what ragloop holds of one end user, conversation, turn or document, with a
receipt, and flagging every model version whose snapshot lineage held it (docs/erasure.md).

It lives in training, the top layer, because only training sees the whole lineage: the turns
and documents are knowledge's, the labels curation's, and the snapshot examples (frozen copies
of queries, answers and passages) and the model versions trained on them are training's. One
service here deletes all of them and flags the versions in one transaction per knowledge base,
with every count on the receipt; a lower-layer erase announcing a signal to training would split
that transaction's work between a sender and receivers and leave the receipt's counts to be
pieced together from them.

Deletion goes through the ORM (`QuerySet.delete`), so the cascade that removes a turn's
passages, labels, drafts, revisions, judgments, suggestions and holds is Django's own, and its
per-model counts are the receipt's. The audit log is not touched (append-only by trigger); its
rows hold ids and counts, never the erased texts (knowledge.services.audit).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Q

from curation.models import PassageJudgment
from curation.permissions import user_can_curate, user_is_admin
from knowledge.errors import Forbidden, InvalidInput, NotFound
from knowledge.models import Chunk, Conversation, Document, KnowledgeBase, RetrievedPassage, Turn
from knowledge.services.audit import audit_record
from knowledge.services.personal_data import end_user_digest, end_user_references
from training.models import ErasureReceipt, ModelVersion, SnapshotExample

SELECTORS = ErasureReceipt.Selector.values
MAX_SELECTOR_CHARS = 512
PASSAGE_LISTS = ("relevant", "irrelevant", "retrieved")


@dataclass
class ErasurePlan:
    """What an erasure deletes and flags; `counts` are rows per "<app>.<Model>"."""

    knowledge_base: KnowledgeBase
    selector: str
    value: str
    counts: dict[str, int] = field(default_factory=dict)
    flagged_version_names: list[str] = field(default_factory=list)
    receipt: ErasureReceipt | None = None

    @property
    def rows(self) -> int:
        return sum(self.counts.values())


class _DryRun(Exception):
    """Raised inside the preview's transaction to roll it back."""


def _check_actor(actor, knowledge_base: KnowledgeBase) -> None:
    # A person acting through the web must be an admin of the knowledge base; a command (no
    # user, an actor name) runs with the server's own rights, as every management command does.
    if actor is not None and not (user_is_admin(actor) and user_can_curate(actor, knowledge_base)):
        raise Forbidden("Only an admin of this knowledge base can erase data.")


def _selector_checked(selector: str, value) -> str:
    if selector not in SELECTORS:
        raise InvalidInput(f"Erase by {selector!r} is unknown; choose one of {', '.join(SELECTORS)}.")
    value = str(value if value is not None else "").strip()
    if not value or len(value) > MAX_SELECTOR_CHARS or "\x00" in value:
        raise InvalidInput(f"The {selector.replace('_', ' ')} to erase must be 1 to {MAX_SELECTOR_CHARS} characters without NUL.")
    if selector == ErasureReceipt.Selector.TURN and not value.isdigit():
        raise InvalidInput(f"A turn is named by its id (a whole number), got {value!r}.")
    return value


def _targets(knowledge_base: KnowledgeBase, selector: str, value: str) -> tuple[list[int], list[int], list[int]]:
    """(turn ids, conversation ids, document ids) the selector names; NotFound when nothing."""
    turns = Turn.objects.filter(knowledge_base=knowledge_base)
    if selector == ErasureReceipt.Selector.DOCUMENT:
        documents = list(Document.objects.filter(knowledge_base=knowledge_base, external_id=value).values_list("pk", flat=True))
        if not documents:
            raise NotFound(f"No document {value!r} in {knowledge_base.slug!r}.")
        return [], [], documents
    if selector == ErasureReceipt.Selector.TURN:
        turn = turns.filter(pk=int(value)).first()
        if turn is None:
            raise NotFound(f"No turn {value} in {knowledge_base.slug!r}.")
        if turn.conversation_id is None:
            return [turn.pk], [], []
        # The later turns of its conversation carry this turn's question and answer in their
        # history (what their generator was given): they go with it.
        later = turns.filter(conversation_id=turn.conversation_id, position__gte=turn.position)
        return sorted(later.values_list("pk", flat=True)), [], []
    conversations = Conversation.objects.filter(knowledge_base=knowledge_base)
    if selector == ErasureReceipt.Selector.CONVERSATION:
        conversations = conversations.filter(external_id=value)
        missing = f"No conversation {value!r} in {knowledge_base.slug!r}."
    else:
        conversations = conversations.filter(end_user__in=end_user_references(value))
        missing = f"No conversation of that end user in {knowledge_base.slug!r}."
    conversation_ids = sorted(conversations.values_list("pk", flat=True))
    if not conversation_ids:
        raise NotFound(missing)
    return sorted(turns.filter(conversation_id__in=conversation_ids).values_list("pk", flat=True)), conversation_ids, []


def _examples_holding(knowledge_base: KnowledgeBase, turn_ids: list[int], document_ids: list[int]):
    """The snapshot examples that copied the erased data: an erased turn's judgment, or a passage
    of an erased document (by chunk id or document external id) in any of its passage lists."""
    examples = SnapshotExample.objects.filter(snapshot__knowledge_base=knowledge_base)
    if turn_ids:
        return examples.filter(turn_id__in=turn_ids)
    chunk_ids = list(Chunk.objects.filter(document_id__in=document_ids).values_list("pk", flat=True))
    external_ids = list(Document.objects.filter(pk__in=document_ids).values_list("external_id", flat=True))
    holding = Q(pk__in=[])
    for name in PASSAGE_LISTS:
        for chunk_id in chunk_ids:
            holding |= Q(**{f"{name}__contains": [{"chunk_id": chunk_id}]})
        for external_id in external_ids:
            holding |= Q(**{f"{name}__contains": [{"document_id": external_id}]})
    return examples.filter(holding)


def _lineage(knowledge_base: KnowledgeBase, snapshot_ids: set[int]) -> list[ModelVersion]:
    """The versions trained on those snapshots and every version trained from one of them (a
    child starts from its parent's weights, so it carries what the parent learnt)."""
    versions = {v.pk: v for v in ModelVersion.objects.filter(knowledge_base=knowledge_base, snapshot_id__in=snapshot_ids)}
    frontier = list(versions)
    while frontier:
        children = ModelVersion.objects.filter(parent_id__in=frontier).exclude(pk__in=versions)
        frontier = []
        for child in children:
            versions[child.pk] = child
            frontier.append(child.pk)
    return sorted(versions.values(), key=lambda v: v.pk)


def _delete(queryset, counts: Counter) -> None:
    _, per_model = queryset.delete()
    counts.update({label: n for label, n in per_model.items() if n})


def _erase(*, knowledge_base: KnowledgeBase, selector: str, value: str, actor, actor_name: str) -> ErasurePlan:
    # Serialises with ingest and label import (they lock the same row), so no turn of the
    # conversation being erased is added while it goes.
    knowledge_base = KnowledgeBase.objects.select_for_update().get(pk=knowledge_base.pk)
    turn_ids, conversation_ids, document_ids = _targets(knowledge_base, selector, value)
    examples = _examples_holding(knowledge_base, turn_ids, document_ids)
    snapshot_ids = set(examples.values_list("snapshot_id", flat=True))
    versions = _lineage(knowledge_base, snapshot_ids)
    stored_value = end_user_digest(value) if selector == ErasureReceipt.Selector.END_USER and not value.startswith("pd-") else value
    receipt = ErasureReceipt.objects.create(
        knowledge_base=knowledge_base, selector=selector, selector_value=stored_value,
        actor=actor if actor is not None and actor.is_authenticated else None, actor_name=actor_name,
    )  # fmt: skip

    counts: Counter = Counter()
    # Old snapshots' frozen copies first: exports and downloads of them read these rows.
    _delete(examples, counts)
    if document_ids:
        # The turns' copies of its passages and the curators' attached ones (their judgments and
        # suggestions go with them), then the document, its chunks and every space's vectors.
        of_document = Q(document_id__in=document_ids) | Q(chunk__document_id__in=document_ids)
        _delete(RetrievedPassage.objects.filter(turn__knowledge_base=knowledge_base).filter(of_document), counts)
        _delete(PassageJudgment.objects.filter(label__turn__knowledge_base=knowledge_base).filter(of_document), counts)
        _delete(Document.objects.filter(pk__in=document_ids), counts)
    elif conversation_ids:
        _delete(Conversation.objects.filter(pk__in=conversation_ids), counts)
    else:
        conversation_id = Turn.objects.filter(pk=turn_ids[0]).values_list("conversation_id", flat=True).first()
        _delete(Turn.objects.filter(pk__in=turn_ids), counts)
        if conversation_id is not None:
            Conversation.objects.filter(pk=conversation_id).update(turn_count=Turn.objects.filter(conversation_id=conversation_id).count())

    version_ids = [v.pk for v in versions]
    ModelVersion.objects.filter(pk__in=version_ids).update(trained_on_erased_data=True)
    # The first erasure that flagged a version stays its receipt (the deadline counts from it).
    ModelVersion.objects.filter(pk__in=version_ids, erasure_receipt__isnull=True).update(erasure_receipt=receipt)
    receipt.counts = dict(sorted(counts.items()))
    receipt.flagged_version_names = [v.name for v in versions]
    receipt.save(update_fields=["counts", "flagged_version_names"])
    audit_record(
        action="data.erase", object_type="erasure_receipt", object_id=receipt.pk, knowledge_base=knowledge_base,
        actor=actor, actor_name=actor_name,
        after={"selector": selector, "selector_value": stored_value, "rows": receipt.rows_deleted, "counts": receipt.counts,
               "flagged_versions": receipt.flagged_version_names},
    )  # fmt: skip
    return ErasurePlan(
        knowledge_base=knowledge_base, selector=selector, value=value, counts=receipt.counts,
        flagged_version_names=receipt.flagged_version_names, receipt=receipt,
    )  # fmt: skip


def erasure_preview(*, knowledge_base: KnowledgeBase, selector: str, value, actor=None) -> ErasurePlan:
    """What `erasure_execute` would delete and flag, without keeping any of it: the erasure runs
    in a transaction that is rolled back, so the counts are those of the real code path."""
    _check_actor(actor, knowledge_base)
    value = _selector_checked(selector, value)
    plan = None
    try:
        with transaction.atomic():
            plan = _erase(knowledge_base=knowledge_base, selector=selector, value=value, actor=actor, actor_name="")
            raise _DryRun
    except _DryRun:
        pass
    plan.receipt = None
    return plan


def erasure_execute(*, knowledge_base: KnowledgeBase, selector: str, value, actor=None, actor_name: str = "") -> ErasureReceipt:
    """Erase what `selector` ("end_user", "conversation", "turn" or "document") and `value` name in
    one knowledge base, in one transaction; returns the receipt. NotFound when nothing matches
    (no receipt is written), Forbidden for a user who is not an admin of the knowledge base."""
    _check_actor(actor, knowledge_base)
    value = _selector_checked(selector, value)
    with transaction.atomic():
        plan = _erase(knowledge_base=knowledge_base, selector=selector, value=value, actor=actor, actor_name=actor_name)
    return plan.receipt


def erasure_execute_everywhere(*, end_user: str, actor_name: str = "") -> list[ErasureReceipt]:
    """Erase an end user from every knowledge base holding a conversation of theirs: one
    transaction and one receipt per knowledge base (a failure in one leaves the others erased)."""
    references = end_user_references(_selector_checked(ErasureReceipt.Selector.END_USER, end_user))
    knowledge_bases = KnowledgeBase.objects.filter(conversations__end_user__in=references).distinct().order_by("slug")
    receipts = [
        erasure_execute(knowledge_base=kb, selector=ErasureReceipt.Selector.END_USER, value=end_user, actor_name=actor_name)
        for kb in knowledge_bases
    ]
    if not receipts:
        raise NotFound("No knowledge base holds a conversation of that end user.")
    return receipts
