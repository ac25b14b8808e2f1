"""Suggestions: running the agents of rag.suggestions on stored turns (in Celery tasks, in
batches, never in a request), calibrating the retriever agent's threshold, and measuring every
agent's agreement with the curators' final judgments.

Idempotent by design: a SuggestionAttempt row per (turn, agent) records that the agent ran on
the turn (done or failed), and every write is an insert that ignores conflicts, so a message
delivered twice, or two workers on the same batch, leave the same rows as one delivery. A
failed attempt is not retried automatically (an LLM request costs money and a reply that did
not parse will not parse better); `suggestions_compute --retry-failed` runs them again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from curation.models import RetrieverCalibration, Suggestion, SuggestionAgentAgreement, SuggestionAttempt
from curation.suggestion_selectors import retriever_calibration_pairs, suggestion_pairs
from knowledge.models import KnowledgeBase, Turn
from rag.agreement import agreement_from_table
from rag.generation import make_generator
from rag.suggestions import AgentContext, PassageToJudge, TurnToJudge, agents_build, threshold_calibrate

logger = logging.getLogger(__name__)


@dataclass
class SuggestionComputeResult:
    suggestions: int = 0  # rows written
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (turn id, agent, error)
    skipped: int = 0  # (turn, agent) pairs already attempted


def agent_context_for(*, knowledge_base: KnowledgeBase) -> AgentContext:
    """What the agent factories need to know of a knowledge base: the retriever's threshold (the
    newest calibration, else the default) and, when its generator is an OpenAI-compatible
    endpoint and RAGLOOP_LLM_JUDGE is on, a client for the LLM judge (the generator's own)."""
    calibration = RetrieverCalibration.objects.filter(knowledge_base=knowledge_base).first()
    judge_model, judge_completer = "", None
    if settings.RAGLOOP_LLM_JUDGE and knowledge_base.generator_backend == KnowledgeBase.GeneratorBackend.OPENAI:
        judge_model = settings.RAGLOOP_LLM_JUDGE_MODEL or knowledge_base.generator_model
        try:
            judge_completer = make_generator(backend="openai", model=judge_model)
            judge_model = judge_completer.model
        except ValueError as error:  # no model name anywhere: no judge, and say why once per batch
            logger.warning("No LLM judge for %s: %s", knowledge_base.slug, error)
            judge_model, judge_completer = "", None
    return AgentContext(
        knowledge_base_id=knowledge_base.pk,
        threshold=calibration.threshold if calibration else settings.RAGLOOP_SUGGESTION_DEFAULT_THRESHOLD,
        calibrated=bool(calibration and calibration.calibrated),
        judge_model=judge_model,
        judge_completer=judge_completer,
    )


def _to_judge(turn: Turn) -> TurnToJudge:
    return TurnToJudge(
        turn_id=turn.pk,
        query=turn.rewritten_query or turn.query,
        answer=turn.answer,
        retriever_version=turn.retriever_version,
        passages=[
            PassageToJudge(passage_id=p.pk, rank=p.rank, text=p.text, title=p.title, score=p.score)
            for p in sorted(turn.passages.all(), key=lambda p: p.rank)
        ],
    )


def turn_suggestions_compute(*, turn_ids: list[int], retry_failed: bool = False) -> SuggestionComputeResult:
    """Run every agent that applies on the turns it has not run on yet, and store what they
    propose. Agents run outside any transaction (an LLM judge takes seconds per turn); each
    agent's results are written in one transaction with its attempts."""
    result = SuggestionComputeResult()
    turns = list(Turn.objects.filter(pk__in=turn_ids).select_related("knowledge_base").prefetch_related("passages"))
    by_knowledge_base: dict[int, list[Turn]] = {}
    for turn in turns:
        by_knowledge_base.setdefault(turn.knowledge_base_id, []).append(turn)
    for kb_turns in by_knowledge_base.values():
        knowledge_base = kb_turns[0].knowledge_base
        if retry_failed:
            SuggestionAttempt.objects.filter(turn__in=kb_turns, status=SuggestionAttempt.Status.FAILED).delete()
        attempted = set(SuggestionAttempt.objects.filter(turn__in=kb_turns).values_list("turn_id", "agent"))
        to_judge = [_to_judge(turn) for turn in kb_turns]
        for agent in agents_build(agent_context_for(knowledge_base=knowledge_base)):
            todo = [turn for turn in to_judge if (turn.turn_id, agent.agent_name(turn)) not in attempted]
            result.skipped += len(to_judge) - len(todo)
            if not todo:
                continue
            outcome = agent.suggest(todo)
            with transaction.atomic():
                written = Suggestion.objects.bulk_create(
                    [
                        Suggestion(
                            turn_id=p.turn_id, retrieved_passage_id=p.passage_id, agent=p.agent[:200], value=p.value,
                            score=p.score, reason=p.reason[:500],
                        )  # fmt: skip
                        for p in outcome.proposals
                    ],
                    ignore_conflicts=True,
                )
                SuggestionAttempt.objects.bulk_create(
                    [SuggestionAttempt(turn_id=turn_id, agent=name[:200], status=SuggestionAttempt.Status.DONE)
                     for turn_id, name in outcome.done]
                    + [SuggestionAttempt(turn_id=f.turn_id, agent=f.agent[:200], status=SuggestionAttempt.Status.FAILED,
                                         error=f.error) for f in outcome.failures],
                    ignore_conflicts=True,
                )  # fmt: skip
            result.suggestions += len(written)
            result.failures.extend((f.turn_id, f.agent, f.error) for f in outcome.failures)
            for failure in outcome.failures:
                logger.warning("Agent %s failed on turn %s: %s", failure.agent, failure.turn_id, failure.error)
    return result


def turns_without_suggestions(*, knowledge_base: KnowledgeBase) -> list[int]:
    """Ids of the knowledge base's turns no agent has run on yet (for a backfill)."""
    return list(
        Turn.objects.filter(knowledge_base=knowledge_base)
        .exclude(pk__in=SuggestionAttempt.objects.values("turn_id"))
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def retriever_calibration_refresh(*, knowledge_base: KnowledgeBase) -> RetrieverCalibration:
    """Calibrate the retriever agent's threshold on the final judgments as they are now, and
    store it unless it equals the newest stored calibration (a redelivery adds no row)."""
    calibration = threshold_calibrate(
        retriever_calibration_pairs(knowledge_base=knowledge_base),
        default=settings.RAGLOOP_SUGGESTION_DEFAULT_THRESHOLD,
        min_passages=settings.RAGLOOP_SUGGESTION_CALIBRATION_MIN_PASSAGES,
    )
    with transaction.atomic():
        KnowledgeBase.objects.select_for_update().get(pk=knowledge_base.pk)  # one refresh at a time
        latest = RetrieverCalibration.objects.filter(knowledge_base=knowledge_base).first()
        unchanged = latest is not None and (
            latest.threshold, latest.calibrated, latest.labelled_passages, latest.agreed_passages
        ) == (calibration.threshold, calibration.calibrated, calibration.items, calibration.agreed)
        if unchanged:
            return latest
        return RetrieverCalibration.objects.create(
            knowledge_base=knowledge_base,
            threshold=calibration.threshold,
            calibrated=calibration.calibrated,
            labelled_passages=calibration.items,
            agreed_passages=calibration.agreed,
            kappa=calibration.kappa,
        )


def suggestion_agents_measure(*, knowledge_base: KnowledgeBase) -> list[SuggestionAgentAgreement]:
    """Recalibrate the retriever agent and store every agent's agreement with the final
    judgments (items, agreed, Cohen's kappa per agent and target), which picks the agent whose
    suggestion the judging page pre-selects. Run after new final labels."""
    retriever_calibration_refresh(knowledge_base=knowledge_base)
    tables: dict[tuple[str, str], dict] = {}
    for pair in suggestion_pairs(knowledge_base=knowledge_base):
        table = tables.setdefault((pair.agent, pair.target), {})
        table[(pair.suggested, pair.final)] = table.get((pair.suggested, pair.final), 0) + 1
    now = timezone.now()
    rows = []
    with transaction.atomic():
        for (agent, target), table in sorted(tables.items()):
            figures = agreement_from_table(table)
            row, _ = SuggestionAgentAgreement.objects.update_or_create(
                knowledge_base=knowledge_base, agent=agent, target=target,
                defaults={"items": figures.items, "agreed": figures.agreed, "kappa": figures.kappa, "measured_at": now},
            )  # fmt: skip
            rows.append(row)
    return rows
