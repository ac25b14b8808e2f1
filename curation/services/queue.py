"""The curation queue: which turn a curator judges next, and holds so two curators are not
handed the same turn (unless the knowledge base asks for overlap); the knowledge base's queue
settings (overlap, hold time).

A turn's place (tier and order) is stored on the turn when it is stored or its feedback
changes (rag.queue_priority, called by knowledge.services.turns) and again when the models
change (training.services.queue_rescoring, which also stores why: Turn.queue_reason), so the
queue reads one partial index in order. The tiers and keys are in rag.queue_priority.
"""

from datetime import timedelta

from django.db import transaction
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery, Value, Window
from django.db.models.functions import Coalesce, FirstValue
from django.utils import timezone

from curation.models import TurnHold
from knowledge.errors import InvalidInput
from knowledge.models import KnowledgeBase, Turn
from knowledge.services.audit import audit_record

MAX_HOLDS_PER_CURATOR = 2  # the turn on screen and the preloaded next one
MAX_HOLD_MINUTES = 24 * 60


def _active_holds_by_others(curator, now):
    return Coalesce(
        Subquery(
            TurnHold.objects.filter(turn=OuterRef("pk"), expires_at__gt=now)
            .exclude(curator=curator)
            .values("turn")
            .annotate(n=Count("pk"))
            .values("n")[:1]
        ),
        Value(0),
    )


def turn_next(*, knowledge_base: KnowledgeBase, curator, exclude: list[int] | tuple[int, ...] = ()) -> Turn | None:
    """Hand the curator a turn to judge and hold it for them; None when the queue is empty.

    A turn the curator already holds (and has not judged) comes back first, so a reload or a
    second tab shows the same turn. `exclude` leaves out the turn on screen when preloading.
    """
    now = timezone.now()
    expires = now + timedelta(minutes=knowledge_base.hold_minutes)
    with transaction.atomic():
        mine = (
            TurnHold.objects.filter(curator=curator, turn__knowledge_base=knowledge_base, expires_at__gt=now)
            .exclude(turn_id__in=exclude)
            .exclude(turn__labels__curator=curator)
            .order_by("created_at")
            .first()
        )
        if mine is not None:
            TurnHold.objects.filter(pk=mine.pk).update(expires_at=expires)
            return Turn.objects.get(pk=mine.turn_id)
        # SKIP LOCKED: two curators asking at once take different turns instead of waiting
        # for (and then both taking) the same one.
        candidate = (
            Turn.objects.filter(knowledge_base=knowledge_base, needs_labels=True)
            .exclude(pk__in=exclude)
            .exclude(labels__curator=curator)
            .annotate(held_by_others=_active_holds_by_others(curator, now))
            .filter(held_by_others__lt=knowledge_base.labels_per_turn - F("label_count"))
            .order_by("queue_tier", "queue_order", "id")
            .select_for_update(skip_locked=True, of=("self",))
            .first()
        )
        if candidate is None:
            return None
        # Holding more than MAX_HOLDS_PER_CURATOR turns would starve other curators.
        surplus = (
            TurnHold.objects.filter(curator=curator, turn__knowledge_base=knowledge_base)
            .exclude(turn_id__in=exclude)
            .order_by("-created_at")
            .values_list("pk", flat=True)[MAX_HOLDS_PER_CURATOR - 1 :]
        )
        TurnHold.objects.filter(pk__in=list(surplus)).delete()
        TurnHold.objects.update_or_create(
            turn=candidate, curator=curator, defaults={"expires_at": expires, "created_at": now}
        )
    return candidate


def turn_hold_take(*, turn: Turn, curator) -> TurnHold:
    """Hold a turn the curator opened directly (from the queue page or a link), as "next" would."""
    expires = timezone.now() + timedelta(minutes=turn.knowledge_base.hold_minutes)
    hold, _ = TurnHold.objects.update_or_create(turn=turn, curator=curator, defaults={"expires_at": expires})
    return hold


def turn_holds_expired_delete() -> int:
    """Housekeeping: expired holds already count for nothing; this only removes the rows."""
    deleted, _ = TurnHold.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted


class QueueFilter:
    """Filters of the queue page: dates, feedback, status, free text over queries, one
    conversation; and whether the turns of a conversation are listed together."""

    STATUSES = ("all", "unlabelled", "labelled_by_me", "disputed")
    FEEDBACK = ("any", "negative", "positive", "none")
    GROUPS = ("none", "conversation")
    # Where the turns came from: served here, logged by an external app (ingested), made by a
    # label import (imported: ingested rows with Turn.imported), or written by an LLM (synthetic).
    SOURCES = ("any", "served", "ingested", "imported", "synthetic")

    def __init__(
        self,
        *,
        date_from=None,
        date_to=None,
        feedback: str = "any",
        status: str = "all",
        search: str = "",
        conversation_id: int | None = None,
        group: str = "none",
        source: str = "any",
    ):
        if status not in self.STATUSES:
            raise ValueError(f"status must be one of {', '.join(self.STATUSES)}")
        if feedback not in self.FEEDBACK:
            raise ValueError(f"feedback must be one of {', '.join(self.FEEDBACK)}")
        if group not in self.GROUPS:
            raise ValueError(f"group must be one of {', '.join(self.GROUPS)}")
        if source not in self.SOURCES:
            raise ValueError(f"source must be one of {', '.join(self.SOURCES)}")
        self.source = source
        self.date_from, self.date_to = date_from, date_to
        self.feedback, self.status, self.search = feedback, status, search.strip()
        self.conversation_id, self.group = conversation_id, group


# Queue order; the index `turn_queue_all` (and, for open turns, `turn_queue_open`) is in this order.
QUEUE_ORDER = ("queue_tier", "queue_order", "id")


def turn_queue_list(*, knowledge_base: KnowledgeBase, curator, queue_filter: QueueFilter) -> QuerySet[Turn]:
    """The knowledge base's turns in queue order, filtered, without annotations: slice it (or
    its ids) to paginate, then annotate the page's rows only, since an annotation in the select
    list is evaluated for every row an OFFSET skips.

    Grouped by conversation, the turns of a conversation that pass the filters are listed
    together in position order, and each conversation stands where its first turn in queue
    order would (so a conversation with a complaint still comes first); a turn on its own is
    a group of one, in its usual place. That order is computed over every matching turn (a
    window function, then a sort), not walked from an index: fine for an option a curator
    picks, and the default listing is unchanged.
    """
    turns = Turn.objects.filter(knowledge_base=knowledge_base)
    f = queue_filter
    if f.conversation_id is not None:
        turns = turns.filter(conversation_id=f.conversation_id)
    if f.date_from:
        turns = turns.filter(created_at__date__gte=f.date_from)
    if f.date_to:
        turns = turns.filter(created_at__date__lte=f.date_to)
    if f.feedback == "negative":
        turns = turns.filter(feedback=-1)
    elif f.feedback == "positive":
        turns = turns.filter(feedback=1)
    elif f.feedback == "none":
        turns = turns.filter(feedback__isnull=True)
    if f.status == "unlabelled":
        turns = turns.filter(label_count=0)
    elif f.status == "labelled_by_me":
        turns = turns.filter(labels__curator=curator, labels__skipped=False)
    elif f.status == "disputed":
        turns = turns.filter(disputed=True)
    if f.search:
        turns = turns.filter(query__icontains=f.search)
    if f.source == "imported":
        turns = turns.filter(imported=True)
    elif f.source == "ingested":
        turns = turns.filter(source=Turn.Source.INGESTED, imported=False)
    elif f.source != "any":
        turns = turns.filter(source=f.source)
    if f.group == "conversation":
        return _grouped_by_conversation(turns)
    return turns.order_by(*QUEUE_ORDER)


def _grouped_by_conversation(turns: QuerySet[Turn]) -> QuerySet[Turn]:
    # Turn ids are positive, so -id never names a conversation: a turn on its own is alone.
    window = {
        "partition_by": [Coalesce(F("conversation_id"), -F("id"))],
        "order_by": [F(name).asc() for name in QUEUE_ORDER],
    }
    return turns.annotate(
        group_tier=Window(FirstValue("queue_tier"), **window),
        group_order=Window(FirstValue("queue_order"), **window),
        group_first=Window(FirstValue("id"), **window),
    ).order_by("group_tier", "group_order", "group_first", "position", "id")


def knowledge_base_overlap_set(*, knowledge_base: KnowledgeBase, labels_per_turn: int) -> None:
    """Change how many curators judge each turn, and reopen or close turns to match."""
    if not 1 <= labels_per_turn <= 10:
        raise InvalidInput("Labels per turn must be between 1 and 10.")
    with transaction.atomic():
        KnowledgeBase.objects.filter(pk=knowledge_base.pk).update(labels_per_turn=labels_per_turn)
        Turn.objects.filter(knowledge_base=knowledge_base).update(needs_labels=Q(label_count__lt=labels_per_turn))
    knowledge_base.labels_per_turn = labels_per_turn


def knowledge_base_curation_settings_set(
    *, knowledge_base: KnowledgeBase, labels_per_turn: int, hold_minutes: int
) -> KnowledgeBase:
    """Set overlap and hold time together; both are checked before either is written."""
    if not isinstance(hold_minutes, int) or not 1 <= hold_minutes <= MAX_HOLD_MINUTES:
        raise InvalidInput(f"Hold minutes must be between 1 and {MAX_HOLD_MINUTES}.")
    if not isinstance(labels_per_turn, int) or not 1 <= labels_per_turn <= 10:
        raise InvalidInput("Labels per turn must be between 1 and 10.")
    with transaction.atomic():
        stored = KnowledgeBase.objects.select_for_update().get(pk=knowledge_base.pk)
        before = {"labels_per_turn": stored.labels_per_turn, "hold_minutes": stored.hold_minutes}
        KnowledgeBase.objects.filter(pk=knowledge_base.pk).update(hold_minutes=hold_minutes)
        knowledge_base.hold_minutes = hold_minutes
        if labels_per_turn != stored.labels_per_turn:
            # Also reopens or closes turns to match the new overlap.
            knowledge_base_overlap_set(knowledge_base=knowledge_base, labels_per_turn=labels_per_turn)
        after = {"labels_per_turn": labels_per_turn, "hold_minutes": hold_minutes}
        if after != before:
            audit_record(
                action="knowledge_base.settings_change", object_type="knowledge_base", object_id=knowledge_base.pk,
                knowledge_base=knowledge_base, before=before, after=after,
            )  # fmt: skip
    return knowledge_base
