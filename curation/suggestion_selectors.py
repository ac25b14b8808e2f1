"""Reads of suggestions: what the judging page shows for a turn (the pre-selected suggestion per
passage and for the answer, and the others), the pairs of (suggested, final) judgments the
agents are measured on, the retriever's calibration pairs, and the review page's figures.

Kept apart from curation.selectors, whose final-judgment rules it reads, for size.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from curation.models import (
    Label,
    PassageJudgment,
    RetrieverCalibration,
    Suggestion,
    SuggestionAgentAgreement,
    SuggestionAttempt,
)
from curation.selectors import turn_final_judgments
from knowledge.models import KnowledgeBase, RetrievedPassage, Turn
from rag.agreement import Agreement, agreement_from_table
from rag.suggestions import agent_rank

# --- the judging page ---------------------------------------------------------------------


@dataclass(frozen=True)
class SuggestionShown:
    id: int
    agent: str
    value: str
    score: float | None
    reason: str

    def as_dict(self) -> dict:
        return {"id": self.id, "agent": self.agent, "value": self.value, "score": self.score, "reason": self.reason}


@dataclass(frozen=True)
class ItemSuggestions:
    """The suggestions for one passage (or the answer): the pre-selected one and the others."""

    primary: SuggestionShown
    others: list[SuggestionShown] = field(default_factory=list)


@dataclass(frozen=True)
class TurnSuggestions:
    passages: dict[int, ItemSuggestions]  # retrieved passage id ->
    answer: ItemSuggestions | None

    def as_state(self) -> dict:
        """What the page's script pre-selects: {"passages": {"<id>": {...}}, "answer": {...} | null}."""
        return {
            "passages": {str(pid): item.primary.as_dict() for pid, item in self.passages.items()},
            "answer": self.answer.primary.as_dict() if self.answer else None,
        }


def agent_trust(*, knowledge_base: KnowledgeBase) -> dict[tuple[str, str], float | None]:
    """{(agent, target): measured kappa} for the agents measured on enough items
    (RAGLOOP_SUGGESTION_TRUST_MIN_ITEMS); others count as unmeasured (None)."""
    rows = SuggestionAgentAgreement.objects.filter(
        knowledge_base=knowledge_base, items__gte=settings.RAGLOOP_SUGGESTION_TRUST_MIN_ITEMS
    ).values_list("agent", "target", "kappa")
    return {(agent, target): kappa for agent, target, kappa in rows}


def turn_suggestions(*, knowledge_base: KnowledgeBase, turn: Turn) -> TurnSuggestions:
    """The turn's suggestions, each item's agents ordered by the pre-selection rule
    (rag.suggestions.agent_rank): the agent with the highest kappa measured on this knowledge
    base's final judgments goes first; agents not measured on enough items come after the
    measured ones, in the order reranker, llm-judge, retriever. Two queries. Only a turn of
    `knowledge_base` has suggestions here (the caller checked the curator may see it)."""
    trust = agent_trust(knowledge_base=knowledge_base)
    by_item: dict[int | None, list[SuggestionShown]] = defaultdict(list)
    rows = Suggestion.objects.filter(turn=turn, turn__knowledge_base=knowledge_base).order_by("pk")
    for row in rows:
        by_item[row.retrieved_passage_id].append(
            SuggestionShown(id=row.pk, agent=row.agent, value=row.value, score=row.score, reason=row.reason)
        )
    items: dict[int | None, ItemSuggestions] = {}
    for passage_id, shown in by_item.items():
        target = "answer" if passage_id is None else "passage"
        shown.sort(key=lambda s: agent_rank(s.agent, kappa=trust.get((s.agent, target))))
        items[passage_id] = ItemSuggestions(primary=shown[0], others=shown[1:])
    answer = items.pop(None, None)
    return TurnSuggestions(passages=items, answer=answer)


# --- measuring the agents -----------------------------------------------------------------


@dataclass(frozen=True)
class SuggestionPair:
    agent: str
    target: str  # "passage" | "answer"
    suggested: str
    final: str
    suggested_at: datetime


def _final_turns(knowledge_base: KnowledgeBase):
    return Turn.objects.filter(knowledge_base=knowledge_base).filter(
        Q(label_count__gte=1) | Q(adjudication__isnull=False)
    )


def suggestion_pairs(*, knowledge_base: KnowledgeBase) -> list[SuggestionPair]:
    """Every suggestion on a turn with a final judgment of the same item, next to that judgment
    (curation.selectors.turn_final_judgments: adjudication, agreeing labels or a single label;
    disputed turns have none). Four queries."""
    turns = _final_turns(knowledge_base).filter(
        pk__in=Suggestion.objects.filter(turn__knowledge_base=knowledge_base).values("turn_id")
    )
    finals = turn_final_judgments(turns=turns)
    pairs = []
    rows = Suggestion.objects.filter(turn__in=turns.values("pk")).values_list(
        "turn_id", "retrieved_passage_id", "agent", "value", "created_at"
    )
    for turn_id, passage_id, agent, value, created_at in rows:
        final = finals.get(turn_id)
        if final is None or not final.is_final:
            continue
        decided = final.answer_rating if passage_id is None else final.passages.get(passage_id, "")
        if decided:
            pairs.append(SuggestionPair(agent, "answer" if passage_id is None else "passage", value, decided, created_at))
    return pairs


def retriever_calibration_pairs(*, knowledge_base: KnowledgeBase) -> list[tuple[float, str]]:
    """(retriever score, final relevance) of every labelled retrieved passage that has a score."""
    turns = _final_turns(knowledge_base)
    finals = turn_final_judgments(turns=turns)
    judged = {pid: rel for final in finals.values() if final.is_final for pid, rel in final.passages.items()}
    scores = RetrievedPassage.objects.filter(pk__in=list(judged), score__isnull=False).values_list("pk", "score")
    return [(score, judged[pid]) for pid, score in scores]


# --- the review page ----------------------------------------------------------------------


@dataclass(frozen=True)
class WeekFigure:
    week: date  # the Monday
    agreement: Agreement


@dataclass(frozen=True)
class AgentStanding:
    agent: str
    target: str
    overall: Agreement
    weeks: list[WeekFigure]
    # Of the curators' judgments where this agent's suggestion was pre-selected: how many kept it.
    shown: int
    kept: int
    failures: int


@dataclass(frozen=True)
class SuggestionReview:
    calibration: RetrieverCalibration | None
    default_threshold: float
    min_passages: int
    agents: list[AgentStanding]


def _monday(moment: datetime) -> date:
    day = timezone.localtime(moment).date()
    return day - timedelta(days=day.weekday())


def suggestion_review(*, knowledge_base: KnowledgeBase, weeks: int = 12) -> SuggestionReview:
    """Per agent and target: Cohen's kappa and accuracy against the final judgments, overall and
    per week of the suggestion (the last `weeks` weeks), how often curators kept its
    pre-selected suggestion, and its recorded failures; and the retriever's calibration."""
    tables: dict[tuple[str, str], dict] = defaultdict(lambda: defaultdict(int))
    weekly: dict[tuple[str, str], dict[date, dict]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    first_week = _monday(timezone.now()) - timedelta(weeks=weeks - 1)
    for pair in suggestion_pairs(knowledge_base=knowledge_base):
        key = (pair.agent, pair.target)
        tables[key][(pair.suggested, pair.final)] += 1
        week = _monday(pair.suggested_at)
        if week >= first_week:
            weekly[key][week][(pair.suggested, pair.final)] += 1
    kept: dict[tuple[str, str], tuple[int, int]] = {}
    passage_rows = (
        PassageJudgment.objects.filter(label__turn__knowledge_base=knowledge_base, suggestion__isnull=False)
        .values("suggestion__agent")
        .annotate(shown=Count("pk"), kept=Count("pk", filter=Q(suggestion_matched=True)))
    )
    for row in passage_rows:
        kept[(row["suggestion__agent"], "passage")] = (row["shown"], row["kept"])
    answer_rows = (
        Label.objects.filter(turn__knowledge_base=knowledge_base, answer_suggestion__isnull=False)
        .values("answer_suggestion__agent")
        .annotate(shown=Count("pk"), kept=Count("pk", filter=Q(answer_suggestion_matched=True)))
    )
    for row in answer_rows:
        kept[(row["answer_suggestion__agent"], "answer")] = (row["shown"], row["kept"])
    failures = dict(
        SuggestionAttempt.objects.filter(turn__knowledge_base=knowledge_base, status=SuggestionAttempt.Status.FAILED)
        .values("agent")
        .annotate(n=Count("pk"))
        .values_list("agent", "n")
    )
    agents_seen = (
        Suggestion.objects.filter(turn__knowledge_base=knowledge_base)
        .annotate(is_answer=Q(retrieved_passage__isnull=True))
        .values_list("agent", "is_answer")
        .distinct()
    )
    keys = set(tables) | set(kept) | {(agent, "answer" if is_answer else "passage") for agent, is_answer in agents_seen}
    standings = [
        AgentStanding(
            agent=agent,
            target=target,
            overall=agreement_from_table(tables.get((agent, target), {})),
            weeks=[WeekFigure(week, agreement_from_table(table)) for week, table in sorted(weekly[(agent, target)].items())],
            shown=kept.get((agent, target), (0, 0))[0],
            kept=kept.get((agent, target), (0, 0))[1],
            # An attempt covers a whole turn: its failures show on the agent's passage row.
            failures=failures.get(agent, 0) if target == "passage" or (agent, "passage") not in keys else 0,
        )
        for agent, target in sorted(keys, key=lambda key: (key[1] != "passage", key[0]))
    ]
    return SuggestionReview(
        calibration=RetrieverCalibration.objects.filter(knowledge_base=knowledge_base).first(),
        default_threshold=settings.RAGLOOP_SUGGESTION_DEFAULT_THRESHOLD,
        min_passages=settings.RAGLOOP_SUGGESTION_CALIBRATION_MIN_PASSAGES,
        agents=standings,
    )
