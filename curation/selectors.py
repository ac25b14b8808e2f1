"""Reads of curation: the final judgment of a turn, agreement between curators, the disputes
to adjudicate, a knowledge base's curation dashboard, guidelines and invitations (the
conversation around a turn on the judging page: curation.conversation_selectors).

Every function here runs a fixed number of SQL queries whatever the amount of data: counts
and confusion tables are aggregated in the database.

One module (~600 lines) because the final judgment of a turn is the base of the rest:
agreement, disputes and the dashboard all read it, and splitting them would scatter one rule.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta

import markdown
import nh3
from django.db.models import BooleanField, Count, Exists, F, Func, OuterRef, Q, QuerySet
from django.db.models.functions import Trim, TruncDate
from django.utils import timezone

from curation.models import (
    Adjudication,
    AnswerRating,
    FailureTag,
    Invitation,
    Label,
    PassageJudgment,
    Relevance,
)
from knowledge.models import KnowledgeBase, RetrievedPassage, Turn
from rag.agreement import Agreement, agreement_from_table, pairs_combined

# --- final judgment ----------------------------------------------------------------------


@dataclass(frozen=True)
class FinalJudgment:
    """What a turn's curation finally says, whoever said it.

    `source` is where it came from: "adjudication", "agreement" (two or more labels that do
    not disagree), "single" (one label), "disputed" (labels disagree and no admin has decided
    yet: no judgment) or "none" (no submitted label).
    """

    turn_id: int
    source: str
    passages: dict[int, str] = field(default_factory=dict)  # retrieved passage id -> relevance
    attached: dict[int, str] = field(default_factory=dict)  # attached chunk id -> relevance
    answer_rating: str = ""
    gold_answer: str = ""
    # The self-contained query a curator wrote for a follow-up whose rewrite was wrong (the
    # most recently updated label's, as for gold answers); blank when none did.
    corrected_query: str = ""
    # Slugs of the failure tags: the adjudication's when an admin decided, else every tag any
    # of the labels carries (tags are never compared, so they never make a turn disputed).
    failure_tags: tuple[str, ...] = ()

    @property
    def is_final(self) -> bool:
        return self.source in {"adjudication", "agreement", "single"}

    @property
    def retriever_ready(self) -> bool:
        """At least one passage (retrieved or attached) is judged relevant: a positive for
        retriever training ("partly" is not a positive)."""
        return Relevance.RELEVANT in self.passages.values() or Relevance.RELEVANT in self.attached.values()

    @property
    def generator_ready(self) -> bool:
        """A gold answer to train on: with an answer rating from the curators, or written by
        an admin in an adjudication (the admin's answer needs no rating)."""
        if not self.gold_answer.strip():
            return False
        return bool(self.answer_rating) or self.source == "adjudication"


def turn_final_judgments(*, turns: QuerySet[Turn]) -> dict[int, FinalJudgment]:
    """The final judgment of each of the turns, by turn id, in five queries.

    The rules, in order:
    1. An adjudication decides: its passage relevances, answer rating and gold answer, as the
       admin entered them (the adjudication form starts from what the curators agreed on).
    2. Otherwise a turn without submitted (non-skipped) labels has none ("none"), and a
       disputed turn has none until an admin adjudicates it ("disputed").
    3. Otherwise the labels agree (one label: "single"; more: "agreement"): every passage any
       curator judged, with that judgment (curators who judged the same passage agree, or the
       turn would be disputed); the answer rating they gave; the gold answer of the most
       recently updated label that has one (gold answers are free text and never compared).
    Attached passages (found by search, outside the retrieved list) are taken from the labels
    in cases 1 and 3 when every curator who attached the chunk gave it the same relevance;
    they never make a turn disputed, so a conflicting one is left out rather than guessed.

    `knowledge_base_dashboard` counts the training-ready turns with the same rules in SQL
    (`_final_judgment_readiness`); tests keep the two in step.
    """
    turn_list = list(turns.select_related("adjudication").prefetch_related("adjudication__failure_tags"))
    labels = (
        Label.objects.filter(turn__in=turns.values("pk"), skipped=False)
        .prefetch_related("passage_judgments", "failure_tags")
        .order_by("updated_at", "pk")
    )
    labels_by_turn: dict[int, list[Label]] = defaultdict(list)
    for label in labels:
        labels_by_turn[label.turn_id].append(label)
    return {turn.pk: _final_judgment(turn, labels_by_turn.get(turn.pk, [])) for turn in turn_list}


def turn_final_judgment(turn: Turn) -> FinalJudgment:
    """The final judgment of one turn (see `turn_final_judgments` for the rules)."""
    return turn_final_judgments(turns=Turn.objects.filter(pk=turn.pk))[turn.pk]


def _agreed_attached(labels: list[Label]) -> dict[int, str]:
    seen: dict[int, set[str]] = defaultdict(set)
    for label in labels:
        for judgment in label.passage_judgments.all():
            if judgment.attached and judgment.chunk_id:
                seen[judgment.chunk_id].add(judgment.relevance)
    return {chunk_id: relevances.pop() for chunk_id, relevances in seen.items() if len(relevances) == 1}


def _corrected_query(labels: list[Label]) -> str:
    corrections = [label.corrected_query.strip() for label in labels if label.corrected_query.strip()]  # oldest first
    return corrections[-1] if corrections else ""


def _labels_failure_tags(labels: list[Label]) -> tuple[str, ...]:
    tags = {tag.slug: tag for label in labels for tag in label.failure_tags.all()}
    return tuple(slug for slug, _ in sorted(tags.items(), key=lambda item: (item[1].position, item[1].pk)))


def _final_judgment(turn: Turn, labels: list[Label]) -> FinalJudgment:
    adjudication = getattr(turn, "adjudication", None)
    if adjudication is not None:
        return FinalJudgment(
            turn_id=turn.pk,
            source="adjudication",
            passages={int(pid): rel for pid, rel in adjudication.passage_relevance.items()},
            attached=_agreed_attached(labels),
            answer_rating=adjudication.answer_rating,
            gold_answer=adjudication.gold_answer,
            corrected_query=_corrected_query(labels),
            failure_tags=tuple(tag.slug for tag in adjudication.failure_tags.all()),
        )
    if not labels:
        return FinalJudgment(turn_id=turn.pk, source="none")
    if turn.disputed:
        return FinalJudgment(turn_id=turn.pk, source="disputed")
    passages: dict[int, str] = {}
    conflicting: set[int] = set()
    for label in labels:
        for judgment in label.passage_judgments.all():
            pid = judgment.retrieved_passage_id
            if pid is None:
                continue
            if passages.setdefault(pid, judgment.relevance) != judgment.relevance:
                conflicting.add(pid)  # only with a stale `disputed` flag; never guess
    ratings = {label.answer_rating for label in labels if label.answer_rating}
    golds = [label.gold_answer for label in labels if label.gold_answer.strip()]  # oldest first
    return FinalJudgment(
        turn_id=turn.pk,
        source="single" if len(labels) == 1 else "agreement",
        passages={pid: rel for pid, rel in passages.items() if pid not in conflicting},
        attached=_agreed_attached(labels),
        answer_rating=ratings.pop() if len(ratings) == 1 else "",
        gold_answer=golds[-1] if golds else "",
        corrected_query=_corrected_query(labels),
        failure_tags=_labels_failure_tags(labels),
    )


class _JsonHasRelevant(Func):
    """jsonb_path_exists(passage_relevance, '$.* ? (@ == "relevant")'): some passage of the
    adjudication is relevant. The path is a constant, so no user text reaches the SQL."""

    function = "jsonb_path_exists"
    template = "%(function)s(%(expressions)s, '$.* ? (@ == \"" + Relevance.RELEVANT + "\")')"
    output_field = BooleanField()


def _final_judgment_readiness() -> tuple[Q, Q]:
    """(retriever-ready, generator-ready) as conditions on Turn: `FinalJudgment.retriever_ready`
    and `.generator_ready` of `turn_final_judgments`, expressed in SQL for counting."""
    adjudications = Adjudication.objects.filter(turn=OuterRef("pk"))
    adjudicated = Exists(adjudications)
    submitted = PassageJudgment.objects.filter(label__turn=OuterRef("pk"), label__skipped=False)
    attached_conflict = PassageJudgment.objects.filter(
        label__turn=OuterRef(OuterRef("pk")), label__skipped=False, attached=True, chunk_id=OuterRef("chunk_id")
    ).exclude(relevance=Relevance.RELEVANT)
    attached_relevant = Exists(
        submitted.filter(attached=True, chunk__isnull=False, relevance=Relevance.RELEVANT).filter(~Exists(attached_conflict))
    )
    labelled_relevant = Exists(submitted.filter(retrieved_passage__isnull=False, relevance=Relevance.RELEVANT))
    agreed_labels = Q(label_count__gte=1, disputed=False) & ~Q(adjudicated)
    retriever_ready = Q(Exists(adjudications.filter(_JsonHasRelevant(F("passage_relevance"))))) | Q(
        adjudicated
    ) & Q(attached_relevant) | agreed_labels & (Q(labelled_relevant) | Q(attached_relevant))

    submitted_labels = Label.objects.filter(turn=OuterRef("pk"), skipped=False)
    has_gold = Exists(submitted_labels.annotate(gold=Trim("gold_answer")).exclude(gold=""))
    has_rating = Exists(submitted_labels.filter(answer_rating__in=AnswerRating.values))
    adjudicated_gold = Exists(adjudications.annotate(gold=Trim("gold_answer")).exclude(gold=""))
    # Agreeing labels never carry two different ratings, so "some label rated" = "rated".
    generator_ready = Q(adjudicated_gold) | agreed_labels & Q(has_gold) & Q(has_rating)
    return retriever_ready, generator_ready


# --- agreement ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CuratorPairAgreement:
    curator_a: str
    curator_b: str
    passages: Agreement  # items: (turn, retrieved passage) both judged
    answers: Agreement  # items: turns both rated


@dataclass(frozen=True)
class KnowledgeBaseAgreement:
    pairs: list[CuratorPairAgreement]
    passages: Agreement  # all pairs combined (rag.agreement.pairs_combined)
    answers: Agreement


def knowledge_base_agreement(*, knowledge_base: KnowledgeBase) -> KnowledgeBaseAgreement:
    """Cohen's kappa and percent agreement per pair of curators and for the knowledge base, on
    passage relevance and on answer ratings (three categories each), in two queries.

    Each query returns the pairs' confusion tables already counted by the database: one row
    per (curator a, curator b, a's category, b's category), with a's id below b's.
    """
    passage_rows = (
        PassageJudgment.objects.filter(
            label__turn__knowledge_base=knowledge_base,
            label__skipped=False,
            retrieved_passage__isnull=False,
            retrieved_passage__judgments__label__skipped=False,
            retrieved_passage__judgments__label__curator_id__gt=F("label__curator_id"),
        )
        .values(
            "label__curator_id",
            "label__curator__username",
            "retrieved_passage__judgments__label__curator_id",
            "retrieved_passage__judgments__label__curator__username",
            "relevance",
            "retrieved_passage__judgments__relevance",
        )
        .annotate(items=Count("pk"))
        .order_by()
    )
    answer_rows = (
        Label.objects.filter(
            turn__knowledge_base=knowledge_base,
            skipped=False,
            answer_rating__in=AnswerRating.values,
            turn__labels__skipped=False,
            turn__labels__answer_rating__in=AnswerRating.values,
            turn__labels__curator_id__gt=F("curator_id"),
        )
        .values(
            "curator_id",
            "curator__username",
            "turn__labels__curator_id",
            "turn__labels__curator__username",
            "answer_rating",
            "turn__labels__answer_rating",
        )
        .annotate(items=Count("pk"))
        .order_by()
    )
    names: dict[tuple[int, int], tuple[str, str]] = {}
    passage_tables: dict[tuple[int, int], dict] = defaultdict(dict)
    for row in passage_rows:
        pair = (row["label__curator_id"], row["retrieved_passage__judgments__label__curator_id"])
        names[pair] = (row["label__curator__username"], row["retrieved_passage__judgments__label__curator__username"])
        passage_tables[pair][(row["relevance"], row["retrieved_passage__judgments__relevance"])] = row["items"]
    answer_tables: dict[tuple[int, int], dict] = defaultdict(dict)
    for row in answer_rows:
        pair = (row["curator_id"], row["turn__labels__curator_id"])
        names[pair] = (row["curator__username"], row["turn__labels__curator__username"])
        answer_tables[pair][(row["answer_rating"], row["turn__labels__answer_rating"])] = row["items"]
    pairs = [
        CuratorPairAgreement(
            curator_a=names[pair][0],
            curator_b=names[pair][1],
            passages=agreement_from_table(passage_tables.get(pair, {})),
            answers=agreement_from_table(answer_tables.get(pair, {})),
        )
        for pair in names
    ]
    pairs.sort(key=lambda p: (p.curator_a, p.curator_b))
    return KnowledgeBaseAgreement(
        pairs=pairs,
        passages=pairs_combined(p.passages for p in pairs),
        answers=pairs_combined(p.answers for p in pairs),
    )


# --- disputes ----------------------------------------------------------------------------


def disputed_turns(*, knowledge_base: KnowledgeBase) -> QuerySet[Turn]:
    """Turns whose curators disagree and that no admin has adjudicated, oldest first."""
    return Turn.objects.filter(knowledge_base=knowledge_base, disputed=True).order_by("created_at", "pk")


def adjudicated_turns(*, knowledge_base: KnowledgeBase) -> QuerySet[Turn]:
    """Turns an admin has adjudicated, most recently decided first."""
    return (
        Turn.objects.filter(knowledge_base=knowledge_base, adjudication__isnull=False)
        .select_related("adjudication__admin")
        .order_by("-adjudication__updated_at", "-pk")
    )


@dataclass(frozen=True)
class PassageComparison:
    passage: RetrievedPassage
    relevances: list[str | None]  # one per label, in `DisputeComparison.labels` order
    differs: bool
    final: str  # the adjudication's relevance, else the one the curators agree on, else ""


@dataclass(frozen=True)
class DisputeComparison:
    turn: Turn
    labels: list[Label]
    passages: list[PassageComparison]
    ratings: list[str]
    ratings_differ: bool
    adjudication: Adjudication | None
    final_rating: str
    final_gold_answer: str
    final_note: str
    final_failure_tags: tuple[str, ...] = ()  # the adjudication's, else every tag a curator put on


def _agreed_value(values: list[str | None]) -> str:
    given = {v for v in values if v}
    return given.pop() if len(given) == 1 else ""


def dispute_comparison(*, turn: Turn) -> DisputeComparison:
    """The curators' labels of a turn side by side, with the adjudication form's starting
    values: the existing adjudication, else what the curators agree on (six queries)."""
    labels = list(
        Label.objects.filter(turn=turn, skipped=False)
        .select_related("curator")
        .prefetch_related("passage_judgments", "failure_tags")
        .order_by("curator__username")
    )
    adjudication = Adjudication.objects.filter(turn=turn).prefetch_related("failure_tags").first()
    judged = [
        {j.retrieved_passage_id: j.relevance for j in label.passage_judgments.all() if j.retrieved_passage_id}
        for label in labels
    ]
    passages = []
    for passage in RetrievedPassage.objects.filter(turn=turn).order_by("rank"):
        relevances = [by_passage.get(passage.pk) for by_passage in judged]
        if adjudication is not None:
            final = adjudication.passage_relevance.get(str(passage.pk), "")
        else:
            final = _agreed_value(relevances)
        passages.append(
            PassageComparison(
                passage=passage,
                relevances=relevances,
                differs=len({r for r in relevances if r}) > 1,
                final=final,
            )
        )
    ratings = [label.answer_rating for label in labels]
    latest_gold = max(
        (label for label in labels if label.gold_answer.strip()), key=lambda label: (label.updated_at, label.pk), default=None
    )
    return DisputeComparison(
        turn=turn,
        labels=labels,
        passages=passages,
        ratings=ratings,
        ratings_differ=len({r for r in ratings if r}) > 1,
        adjudication=adjudication,
        final_rating=adjudication.answer_rating if adjudication else _agreed_value(ratings),
        final_gold_answer=adjudication.gold_answer if adjudication else (latest_gold.gold_answer if latest_gold else ""),
        final_note=adjudication.note if adjudication else "",
        final_failure_tags=(
            tuple(tag.slug for tag in adjudication.failure_tags.all()) if adjudication else _labels_failure_tags(labels)
        ),
    )


# --- dashboard ---------------------------------------------------------------------------

DASHBOARD_DAYS = 30


@dataclass(frozen=True)
class CuratorLabelCount:
    username: str
    submitted: int
    skipped: int


@dataclass(frozen=True)
class KnowledgeBaseDashboard:
    """Curation progress; docs/curation.md defines each count.

    turns = complete + partly_labelled + unlabelled, always: the three partition the turns by
    how many submitted (not skipped) labels they have against the knowledge base's
    labels_per_turn. `labelled` (partly + complete) and `pending` (unlabelled + partly) are
    the sums the queue works with.
    """

    turns: int
    complete: int  # as many submitted labels as the knowledge base asks for (not needs_labels)
    partly_labelled: int  # at least one submitted label, fewer than asked for
    unlabelled: int  # no submitted label (skips are not labels)
    labelled: int  # at least one submitted label: partly_labelled + complete
    pending: int  # fewer labels than the knowledge base asks for (needs_labels): unlabelled + partly_labelled
    disputed: int
    adjudicated: int
    retriever_ready: int  # final judgment with a relevant passage
    generator_ready: int  # final judgment with a gold answer (see FinalJudgment)
    labels_per_day: list[tuple[date, int]]  # the last DASHBOARD_DAYS days, oldest first
    curators: list[CuratorLabelCount]


def knowledge_base_dashboard(*, knowledge_base: KnowledgeBase, today: date | None = None) -> KnowledgeBaseDashboard:
    """Curation progress of a knowledge base, in three aggregate queries.

    Labels per day counts labels by the day they were first submitted (edits do not add a
    label), in the server's time zone; skipped turns are not labels.
    """
    today = today or timezone.localdate()
    retriever_ready, generator_ready = _final_judgment_readiness()
    # Aliases differ from the field names: an aggregate named like a field it filters on
    # would shadow the field.
    counts = Turn.objects.filter(knowledge_base=knowledge_base).aggregate(
        n_turns=Count("pk"),
        n_complete=Count("pk", filter=Q(needs_labels=False)),
        n_partly_labelled=Count("pk", filter=Q(needs_labels=True, label_count__gte=1)),
        n_unlabelled=Count("pk", filter=Q(needs_labels=True, label_count=0)),
        n_labelled=Count("pk", filter=Q(label_count__gte=1)),
        n_pending=Count("pk", filter=Q(needs_labels=True)),
        n_disputed=Count("pk", filter=Q(disputed=True)),
        n_adjudicated=Count("pk", filter=Q(Exists(Adjudication.objects.filter(turn=OuterRef("pk"))))),
        n_retriever_ready=Count("pk", filter=retriever_ready),
        n_generator_ready=Count("pk", filter=generator_ready),
    )
    figures = {name.removeprefix("n_"): value for name, value in counts.items()}
    first_day = today - timedelta(days=DASHBOARD_DAYS - 1)
    per_day = dict(
        Label.objects.filter(turn__knowledge_base=knowledge_base, skipped=False, created_at__date__gte=first_day)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(n=Count("pk"))
        .values_list("day", "n")
        .order_by()
    )
    curators = [
        CuratorLabelCount(username=row["curator__username"], submitted=row["submitted"], skipped=row["skipped"])
        for row in Label.objects.filter(turn__knowledge_base=knowledge_base)
        .values("curator__username")
        .annotate(submitted=Count("pk", filter=Q(skipped=False)), skipped=Count("pk", filter=Q(skipped=True)))
        .order_by("-submitted", "curator__username")
    ]
    return KnowledgeBaseDashboard(
        **figures,
        labels_per_day=[(first_day + timedelta(days=i), per_day.get(first_day + timedelta(days=i), 0)) for i in range(DASHBOARD_DAYS)],
        curators=curators,
    )


@dataclass(frozen=True)
class CuratorProgress:
    """Where a curator stands in a knowledge base; docs/curation.md defines each count."""

    done_today: int  # turns this curator first labelled today (edits and skips not counted)
    done: int  # turns this curator has labelled here, ever (skips not counted)
    waiting: int  # turns that still need labels, that this curator has neither labelled nor skipped, besides the one on screen


def curator_progress(
    *, knowledge_base: KnowledgeBase, curator, on_screen: Turn | None = None, today: date | None = None
) -> CuratorProgress:
    """The personal figures the judging and queue pages show.

    The judging page passes the turn it shows: "waiting" counts the turns after it, so the
    figure on the last turn is 0, not a 1 that reads as lagging behind.
    """
    today = today or timezone.localdate()
    mine = Label.objects.filter(turn__knowledge_base=knowledge_base, curator=curator)
    done = mine.aggregate(done=Count("pk", filter=Q(skipped=False)), today=Count("pk", filter=Q(skipped=False, created_at__date=today)))
    waiting = Turn.objects.filter(knowledge_base=knowledge_base, needs_labels=True).exclude(
        Exists(Label.objects.filter(turn=OuterRef("pk"), curator=curator))
    )
    if on_screen is not None:
        waiting = waiting.exclude(pk=on_screen.pk)
    return CuratorProgress(done_today=done["today"], done=done["done"], waiting=waiting.count())


@dataclass(frozen=True)
class FailureTagCount:
    slug: str
    name: str
    retired: bool
    turns: int


def failure_tag_counts(*, knowledge_base: KnowledgeBase, since: date | None = None) -> list[FailureTagCount]:
    """Per failure tag of the knowledge base, how many turns a curator's submitted label tags
    with it (a turn tagged by two curators counts once), in picker order, in one query.

    `since`: only labels last submitted on or after that day (server time zone); None: all.
    A retired tag is listed only while some label in the period still carries it.
    """
    in_period = Q(labels__skipped=False, labels__turn__knowledge_base=knowledge_base)
    if since is not None:
        in_period &= Q(labels__updated_at__date__gte=since)
    rows = FailureTag.objects.filter(knowledge_base=knowledge_base).annotate(
        n_turns=Count("labels__turn", filter=in_period, distinct=True)
    )
    return [
        FailureTagCount(slug=tag.slug, name=tag.name, retired=tag.retired, turns=tag.n_turns)
        for tag in rows
        if not tag.retired or tag.n_turns
    ]


def knowledge_base_failure_tags(*, knowledge_base: KnowledgeBase, include_retired: bool = False) -> list[FailureTag]:
    """The knowledge base's failure tags in picker order (the ones offered, unless include_retired)."""
    tags = FailureTag.objects.filter(knowledge_base=knowledge_base)
    if not include_retired:
        tags = tags.filter(retired_at__isnull=True)
    return list(tags)


# --- guidelines --------------------------------------------------------------------------


def guidelines_html(markdown_text: str) -> str:
    """Guidelines Markdown as HTML that is safe to insert in a page: rendered by Markdown,
    then sanitised by nh3 (scripts, event handlers and javascript: links do not survive)."""
    if not markdown_text.strip():
        return ""
    rendered = markdown.markdown(markdown_text, extensions=["tables", "fenced_code", "sane_lists"])
    # No images (they would load from anywhere while a curator works) and only web/mail links.
    return nh3.clean(rendered, tags=nh3.ALLOWED_TAGS - {"img", "area", "map"}, url_schemes={"http", "https", "mailto"})


# --- invitations -------------------------------------------------------------------------


@dataclass(frozen=True)
class InvitationRow:
    invitation: Invitation
    status: str  # "accepted", "revoked", "expired" or "pending"


def invitations_recent(*, limit: int = 20) -> list[InvitationRow]:
    """The latest invitations with their status, newest first (three queries)."""
    now = timezone.now()
    invitations = (
        Invitation.objects.select_related("invited_by", "accepted_by")
        .prefetch_related("knowledge_bases")
        .order_by("-created_at", "-pk")[:limit]
    )
    return [
        InvitationRow(
            invitation=invitation,
            status=(
                "accepted" if invitation.accepted_at else "revoked" if invitation.revoked_at
                else "expired" if invitation.expires_at <= now else "pending"
            ),
        )
        for invitation in invitations
    ]


def turn_ids_held_for_personal_data(*, turn_ids) -> set[int]:
    """The turns (of `turn_ids`) a curator's label flags as holding personal data that no admin
    has cleared: training snapshots leave them out (curation.services.personal_data)."""
    return set(
        Label.objects.filter(
            turn_id__in=turn_ids, has_personal_data=True, personal_data_cleared_at__isnull=True
        ).values_list("turn_id", flat=True)
    )


def turn_personal_data_flags(*, turn: Turn) -> list[Label]:
    """The labels of the turn that flag personal data, cleared or not, with who cleared them."""
    return list(
        Label.objects.filter(turn=turn, has_personal_data=True)
        .select_related("curator", "personal_data_cleared_by")
        .order_by("pk")
    )
