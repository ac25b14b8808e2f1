"""Suggestion agents: machines that propose a passage's relevance and an answer's rating before a
curator judges a turn, and the calibration of the retriever's score threshold on curators'
final judgments. Plain data in and out; curation persists, schedules and measures them.

Three kinds of agent, one interface (`SuggestionAgent.suggest`):
- `RetrieverThresholdAgent` ("retriever:<version>"): the score the live retriever gave the
  passage, cut at a threshold calibrated per knowledge base (`threshold_calibrate`). It says
  relevant or not_relevant, never partly (see `threshold_calibrate` for why).
- `LLMJudgeAgent` ("llm-judge:<model>"): an OpenAI-compatible chat model asked, in one prompt
  per turn, for every passage's relevance and the answer's rating with a short reason each.
- a trained reranker ("reranker:<version>"): none exists yet. It plugs in through
  `register_agent_factory("reranker", factory)`: the factory gets the knowledge base's
  `AgentContext` and returns an agent (or None when the knowledge base has no reranker), and
  `agents_build` then runs it like the built-in ones. Its `suggest` scores each (query,
  passage) and returns `Proposal`s named "reranker:<version>" for passages only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rag.agreement import cohen_kappa

RELEVANCE_VALUES = ("relevant", "partly", "not_relevant")
ANSWER_VALUES = ("correct", "partly", "wrong")
MAX_REASON_CHARS = 300
# Before this many passages with a final relevant / not relevant judgment exist (of both kinds),
# the retriever agent cuts at DEFAULT_THRESHOLD, uncalibrated, and says so.
DEFAULT_THRESHOLD = 0.5
MIN_CALIBRATION_PASSAGES = 20


# --- what agents see and say ---------------------------------------------------------------


@dataclass(frozen=True)
class PassageToJudge:
    passage_id: int
    rank: int
    text: str
    title: str = ""
    score: float | None = None


@dataclass(frozen=True)
class TurnToJudge:
    turn_id: int
    query: str
    answer: str
    retriever_version: str = ""
    passages: list[PassageToJudge] = field(default_factory=list)


@dataclass(frozen=True)
class Proposal:
    """One suggestion: a passage's relevance (passage_id set) or the answer's rating (None)."""

    turn_id: int
    passage_id: int | None
    agent: str
    value: str
    score: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class AgentFailure:
    """An agent could not suggest for a turn (an endpoint down, a reply that does not parse)."""

    turn_id: int
    agent: str
    error: str


@dataclass
class AgentOutcome:
    proposals: list[Proposal] = field(default_factory=list)
    failures: list[AgentFailure] = field(default_factory=list)
    # (turn id, agent) pairs the agent finished, with or without proposals.
    done: list[tuple[int, str]] = field(default_factory=list)


class SuggestionAgent(Protocol):
    kind: str  # "retriever", "reranker", "llm-judge"

    def agent_name(self, turn: TurnToJudge) -> str: ...

    def suggest(self, turns: Sequence[TurnToJudge]) -> AgentOutcome: ...


# --- the retriever's score ----------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """The threshold that agreed best with curators, on `items` passages (`agreed` of them)."""

    threshold: float
    calibrated: bool
    items: int
    agreed: int
    kappa: float | None

    @property
    def percent(self) -> float | None:
        return 100.0 * self.agreed / self.items if self.items else None


def threshold_calibrate(
    judged: Sequence[tuple[float, str]],
    *,
    default: float = DEFAULT_THRESHOLD,
    min_passages: int = MIN_CALIBRATION_PASSAGES,
) -> Calibration:
    """The score threshold t (relevant when score >= t) that maximises agreement with curators'
    final judgments, given (retriever score, final relevance) per labelled passage.

    "partly" passages are left out: the agent is binary, and a partly passage is neither a
    positive nor a hard negative for training, so no cut is right or wrong on it. Agreement is
    then counted on relevant vs not_relevant passages only.

    Candidates are the midpoints between consecutive distinct scores, and one step below the
    lowest and above the highest (everything relevant / nothing relevant); the accuracy of each
    is counted in one sorted pass. Ties go to the higher Cohen's kappa, then the lower threshold.
    With fewer than `min_passages` such passages, or only one of the two kinds, `default` is
    returned uncalibrated (its agreement on what there is still reported).
    """
    pairs = sorted((float(score), relevance == "relevant") for score, relevance in judged
                   if relevance in ("relevant", "not_relevant") and score is not None)
    positives = sum(1 for _, relevant in pairs if relevant)
    if len(pairs) < min_passages or positives in (0, len(pairs)):
        agreed = sum(1 for score, relevant in pairs if (score >= default) == relevant)
        return Calibration(default, False, len(pairs), agreed, _binary_kappa(pairs, default))
    scores = sorted({score for score, _ in pairs})
    candidates = [scores[0] - 1e-6] + [(a + b) / 2 for a, b in zip(scores, scores[1:])] + [scores[-1] + 1e-6]
    best: tuple[int, float, float] | None = None  # (agreed, kappa, -threshold)
    # Walking the candidates upwards, each passage below the threshold flips from "suggested
    # relevant" to "suggested not relevant": agreement goes down by one for a relevant one and
    # up by one for a not relevant one.
    agreed = positives  # at the lowest candidate everything is suggested relevant
    index = 0
    for threshold in candidates:
        while index < len(pairs) and pairs[index][0] < threshold:
            agreed += -1 if pairs[index][1] else 1
            index += 1
        key = (agreed, _binary_kappa(pairs, threshold) or 0.0, -threshold)
        if best is None or key > best:
            best = key
    threshold = -best[2]
    return Calibration(round(threshold, 6), True, len(pairs), best[0], _binary_kappa(pairs, threshold))


def _binary_kappa(pairs: Sequence[tuple[float, bool]], threshold: float) -> float | None:
    return cohen_kappa([("relevant" if score >= threshold else "not_relevant", "relevant" if relevant else "not_relevant")
                        for score, relevant in pairs])


@dataclass(frozen=True)
class RetrieverThresholdAgent:
    """Relevant when the retriever's score reaches the threshold, not relevant below it."""

    threshold: float
    calibrated: bool
    kind: str = "retriever"

    def agent_name(self, turn: TurnToJudge) -> str:
        return f"retriever:{turn.retriever_version or 'unknown'}"

    def suggest(self, turns: Sequence[TurnToJudge]) -> AgentOutcome:
        outcome = AgentOutcome()
        how = "calibrated threshold" if self.calibrated else "default threshold (not calibrated yet)"
        for turn in turns:
            name = self.agent_name(turn)
            for passage in turn.passages:
                if passage.score is None:
                    continue  # an app that logged no scores: nothing to cut
                above = passage.score >= self.threshold
                outcome.proposals.append(Proposal(
                    turn_id=turn.turn_id, passage_id=passage.passage_id, agent=name,
                    value="relevant" if above else "not_relevant", score=passage.score,
                    reason=f"score {passage.score:.3f} {'≥' if above else '<'} {how} {self.threshold:.3f}",
                ))  # fmt: skip
            outcome.done.append((turn.turn_id, name))
        return outcome


# --- the LLM judge ------------------------------------------------------------------------

JUDGE_SYSTEM_PROMPT = (
    "You review the output of a retrieval-augmented assistant for a human curator. "
    "For each numbered passage, say whether it is relevant to the question (it helps answer it), "
    "partly relevant (on topic but incomplete), or not relevant. Then rate the assistant's answer "
    "as correct, partly correct, or wrong, judged against the passages and general knowledge. "
    "Give a short reason (at most one sentence) for each. Reply with JSON only, no prose."
)
JUDGE_REPLY_SHAPE = (
    '{"passages": [{"number": 1, "relevance": "relevant" | "partly" | "not_relevant", '
    '"confidence": 0.0-1.0, "reason": "..."}], '
    '"answer": {"rating": "correct" | "partly" | "wrong", "confidence": 0.0-1.0, "reason": "..."}}'
)


def judge_messages(turn: TurnToJudge) -> list[dict]:
    """The chat messages the LLM judge sends for one turn."""
    numbered = "\n\n".join(
        f"[{number}] {passage.title + ': ' if passage.title else ''}{passage.text}"
        for number, passage in enumerate(turn.passages, start=1)
    ) or "(no passages)"
    user = (
        f"Question: {turn.query}\n\nPassages:\n{numbered}\n\nAnswer: {turn.answer or '(no answer)'}\n\n"
        f"Reply with exactly this JSON shape: {JUDGE_REPLY_SHAPE}"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


_RELEVANCE_WORDS = {
    "relevant": "relevant", "yes": "relevant", "highly relevant": "relevant",
    "partly": "partly", "partial": "partly", "partially": "partly", "partly relevant": "partly",
    "partially relevant": "partly", "somewhat relevant": "partly",
    "not relevant": "not_relevant",
    "irrelevant": "not_relevant", "no": "not_relevant", "not": "not_relevant",
}  # fmt: skip
_RATING_WORDS = {
    "correct": "correct", "right": "correct",
    "partly": "partly", "partial": "partly", "partially": "partly", "partly correct": "partly",
    "partially correct": "partly",
    "wrong": "wrong", "incorrect": "wrong", "false": "wrong",
}  # fmt: skip


class JudgeReplyError(ValueError):
    """The LLM judge's reply holds no usable judgment."""


def _json_object(reply: str) -> dict:
    """The JSON object in a reply that may wrap it in a code fence or a sentence."""
    text = reply.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except ValueError:
        start, end = text.find("{"), text.rfind("}")
        if start == -1 or end <= start:
            raise JudgeReplyError(f"no JSON object in the reply: {reply[:120]!r}") from None
        try:
            value = json.loads(text[start : end + 1])
        except ValueError as error:
            raise JudgeReplyError(f"the reply's JSON does not parse ({error}): {reply[:120]!r}") from None
    if not isinstance(value, dict):
        raise JudgeReplyError(f"the reply is JSON but not an object: {reply[:120]!r}")
    return value


# Public name for other modules that read JSON out of a chat reply (rag.synthetic_questions).
json_object_in_reply = _json_object


def _normalised(value: str) -> str:
    return " ".join(value.strip().lower().replace("_", " ").replace("-", " ").split())


def _word(value, words: dict[str, str]) -> str | None:
    return words.get(_normalised(value)) if isinstance(value, str) else None


def _confidence(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0.0 <= value <= 1.0 else None


def _reason(value) -> str:
    return " ".join(value.split())[:MAX_REASON_CHARS] if isinstance(value, str) else ""


def judge_reply_parse(reply: str, *, turn: TurnToJudge, agent: str) -> list[Proposal]:
    """The proposals in an LLM judge's reply. Lenient where it can be (code fences, words like
    "irrelevant" or "incorrect", numbers as strings, "passages" as an object keyed by number),
    strict where it must be: a passage number outside the turn's list or an unknown category is
    left out, and a reply with no usable judgment at all raises JudgeReplyError."""
    value = _json_object(reply)
    by_number = {number: passage for number, passage in enumerate(turn.passages, start=1)}
    proposals: list[Proposal] = []
    raw_passages = value.get("passages", [])
    if isinstance(raw_passages, dict):  # {"1": {...}} or {"1": "relevant"}
        raw_passages = [
            {"number": key, **(item if isinstance(item, dict) else {"relevance": item})} for key, item in raw_passages.items()
        ]
    seen: set[int] = set()
    for item in raw_passages if isinstance(raw_passages, list) else []:
        if not isinstance(item, dict):
            continue
        try:
            number = int(item.get("number", item.get("passage")))
        except (TypeError, ValueError):
            continue
        relevance = _word(item.get("relevance"), _RELEVANCE_WORDS)
        if number not in by_number or number in seen or relevance is None:
            continue
        seen.add(number)
        proposals.append(Proposal(
            turn_id=turn.turn_id, passage_id=by_number[number].passage_id, agent=agent, value=relevance,
            score=_confidence(item.get("confidence")), reason=_reason(item.get("reason")),
        ))  # fmt: skip
    answer = value.get("answer")
    if isinstance(answer, str):
        answer = {"rating": answer}
    if isinstance(answer, dict):
        rating = _word(answer.get("rating"), _RATING_WORDS)
        if rating is not None and turn.answer.strip():
            proposals.append(Proposal(
                turn_id=turn.turn_id, passage_id=None, agent=agent, value=rating,
                score=_confidence(answer.get("confidence")), reason=_reason(answer.get("reason")),
            ))  # fmt: skip
    if not proposals:
        raise JudgeReplyError(f"the reply judges no passage and no answer: {reply[:120]!r}")
    return proposals


class ChatCompleter(Protocol):
    def complete(self, messages: list[dict]) -> str: ...


@dataclass
class LLMJudgeAgent:
    """Asks an OpenAI-compatible chat model (rag.generation.OpenAIChatGenerator.complete) to
    judge each turn; a turn whose request fails or whose reply does not parse is a failure of
    that turn only."""

    completer: ChatCompleter
    model: str
    kind: str = "llm-judge"

    def agent_name(self, turn: TurnToJudge) -> str:
        return f"llm-judge:{self.model}"

    def suggest(self, turns: Sequence[TurnToJudge]) -> AgentOutcome:
        outcome = AgentOutcome()
        for turn in turns:
            name = self.agent_name(turn)
            try:
                reply = self.completer.complete(judge_messages(turn))
                outcome.proposals.extend(judge_reply_parse(reply, turn=turn, agent=name))
            except Exception as error:  # noqa: BLE001  GeneratorError, JudgeReplyError: recorded, never raised
                outcome.failures.append(AgentFailure(turn_id=turn.turn_id, agent=name, error=str(error)[:1000]))
            else:
                outcome.done.append((turn.turn_id, name))
        return outcome


# --- the registry -------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentContext:
    """What a knowledge base tells the agent factories (plain values, read by curation)."""

    knowledge_base_id: int
    threshold: float = DEFAULT_THRESHOLD
    calibrated: bool = False
    # An OpenAI-compatible endpoint for the LLM judge: set when the knowledge base has one.
    judge_model: str = ""
    judge_completer: ChatCompleter | None = None
    # The live reranker's version and model path, when there is one (none exists yet).
    reranker_version: str = ""
    reranker_model: str = ""


AgentFactory = Callable[[AgentContext], "SuggestionAgent | None"]
_FACTORIES: dict[str, AgentFactory] = {}


def register_agent_factory(kind: str, factory: AgentFactory) -> None:
    """Add (or replace) the factory of one kind of agent; see the module docstring."""
    _FACTORIES[kind] = factory


def agent_kinds() -> list[str]:
    return list(_FACTORIES)


def agents_build(context: AgentContext) -> list[SuggestionAgent]:
    """Every registered agent that applies to this knowledge base, in registration order."""
    agents = []
    for factory in _FACTORIES.values():
        agent = factory(context)
        if agent is not None:
            agents.append(agent)
    return agents


def _retriever_factory(context: AgentContext) -> SuggestionAgent:
    return RetrieverThresholdAgent(threshold=context.threshold, calibrated=context.calibrated)


def _llm_judge_factory(context: AgentContext) -> SuggestionAgent | None:
    if context.judge_completer is None or not context.judge_model:
        return None
    return LLMJudgeAgent(completer=context.judge_completer, model=context.judge_model)


def _no_reranker_yet(context: AgentContext) -> SuggestionAgent | None:
    # The slot a trained reranker takes: replace with register_agent_factory("reranker", ...).
    return None


register_agent_factory("retriever", _retriever_factory)
register_agent_factory("reranker", _no_reranker_yet)
register_agent_factory("llm-judge", _llm_judge_factory)

# Which agent's suggestion is pre-selected when no agent has a measured agreement yet (the
# measured one with the highest kappa wins otherwise; see curation.selectors.turn_suggestions).
KIND_PRECEDENCE = ("reranker", "llm-judge", "retriever")


def agent_kind(agent_name: str) -> str:
    return agent_name.split(":", 1)[0]


def agent_rank(agent_name: str, *, kappa: float | None) -> tuple:
    """Sort key of agents for pre-selection: measured kappa first (higher is better), then the
    kind precedence, then the name (so the order is total and stable)."""
    kind = agent_kind(agent_name)
    precedence = KIND_PRECEDENCE.index(kind) if kind in KIND_PRECEDENCE else len(KIND_PRECEDENCE)
    return (0 if kappa is not None else 1, -(kappa or 0.0), precedence, agent_name)
