"""Where a turn stands in the curation queue. Pure, so serving can place a turn as it stores it,
the re-scoring task (training.services.queue_rescoring) can place open turns again with the
current models, a benchmark can apply the same rule to plain data, and the queue
(curation.services.queue) reads one index in order: ascending (queue_tier, queue_order, id).

The exact order:

  tier 0  negative user feedback; queue_order = -created (newest first).
  tier 1  informative turns, in bands of queue_order (a lower band always comes first):
            [-1, 0)  the live retriever and the newest candidate disagree: rank-biased overlap
                     (RBO, p = RBO_PERSISTENCE) of their top RESCORE_DEPTH documents is below
                     CANDIDATE_AGREEMENT_THRESHOLD; queue_order = RBO - 1 (most disagreement
                     first); reason "candidate", value RBO.
            [0, LOW_CONFIDENCE_MARGIN)
                     low retrieval confidence: the top two documents' scores are less than
                     LOW_CONFIDENCE_MARGIN apart; queue_order = margin (smallest first). Under
                     the live retriever when re-scored (reason "margin", value the margin);
                     at ingest, the stored passages' scores (reason blank: not re-scored yet).
            [1, 2)   agents disagree (a hook: the caller passes the agreement of agents'
                     suggestions in [0, 1] once there are any); queue_order = 1 + agreement;
                     reason "agents", value the agreement.
          A turn that qualifies for several bands takes the first.
  tier 2  the rest, in a stable random order in [0, 1) (a random sample, the same for
          everyone). A turn keeps its random position while it stays in this tier; one that
          comes back to it from tier 1 gets `stable_random_order(turn id)`, the same every time,
          so re-scoring twice changes nothing.
Turns with fewer than two scored documents have no margin.
"""

import hashlib
import random
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

LOW_CONFIDENCE_MARGIN = 0.05
RANDOM_TIER = 2
INFORMATIVE_TIER = 1
# RBO of the live and the candidate top-10 below this: they disagree. With p = 0.9: the same
# ranking 1, nothing shared 0; the top two swapped 0.85; a new document on top pushing the
# others down one rank 0.64; the same top 5 reversed, the rest different, 0.47.
CANDIDATE_AGREEMENT_THRESHOLD = 0.6
RBO_PERSISTENCE = 0.9
RESCORE_DEPTH = 10  # documents compared per ranking

# Reason codes stored on the turn (Turn.queue_reason), with queue_reason_value.
REASON_FEEDBACK = "feedback"
REASON_CANDIDATE = "candidate"
REASON_MARGIN = "margin"
REASON_AGENTS = "agents"
REASON_NONE = ""  # the random tier, or a place set at ingest and not re-scored yet


@dataclass(frozen=True)
class QueuePosition:
    """A turn's place (tier, order within it) and why it is there (a reason code and a value)."""

    tier: int
    order: float
    reason: str = REASON_NONE
    value: float | None = None


def turn_queue_position(*, feedback: int | None, scores: list[float | None], created: float | None = None) -> tuple[int, float]:
    """(tier, order within the tier) for a turn when it is stored; see the module docstring."""
    if feedback == -1:
        return 0, -(created if created is not None else time.time())
    margin = top_margin(scores)
    if margin is not None and margin < LOW_CONFIDENCE_MARGIN:
        return INFORMATIVE_TIER, margin
    return RANDOM_TIER, random.random()


def top_margin(scores: Sequence[float | None]) -> float | None:
    """The gap between the two best known scores; None with fewer than two."""
    known = sorted((s for s in scores if s is not None), reverse=True)
    return known[0] - known[1] if len(known) >= 2 else None


def rank_biased_overlap(first: Sequence[Hashable], second: Sequence[Hashable], *, p: float = RBO_PERSISTENCE,
                        depth: int | None = None) -> float:
    """Rank-biased overlap (Webber, Moffat and Zobel 2010) of two rankings to `depth` (default
    the longer one's length), normalised so that equal rankings score 1 and disjoint ones 0.

    Unlike Kendall's tau it needs no shared set of items: two top-k lists of different
    documents are compared as they are, and the top ranks weigh most.
    """
    longest = max(len(first), len(second))
    # Two rankings shorter than the depth (a knowledge base of few documents) are compared as
    # far as they go, so equal short rankings still score 1.
    depth = longest if depth is None else min(depth, longest)
    if depth <= 0:
        return 1.0
    seen_first: set = set()
    seen_second: set = set()
    overlap = 0
    total = 0.0
    for d in range(1, depth + 1):
        a = first[d - 1] if d <= len(first) else None
        b = second[d - 1] if d <= len(second) else None
        # Each shared document is counted once, at the depth where the second list reaches it.
        if a is not None:
            overlap += a in seen_second
            seen_first.add(a)
        if b is not None:
            overlap += b in seen_first
            seen_second.add(b)
        total += p ** (d - 1) * overlap / d
    return (1 - p) * total / (1 - p**depth)


def documents_in_rank_order(ranked: Sequence[tuple[Hashable, float]]) -> list[tuple[Hashable, float]]:
    """(document, score) pairs of ranked chunks, each document once at its best (first) rank."""
    seen: set = set()
    documents = []
    for document, score in ranked:
        if document not in seen:
            seen.add(document)
            documents.append((document, score))
    return documents


def stable_random_order(key: int | str) -> float:
    """A number in [0, 1) that looks random but is the same for the same key in every process."""
    digest = hashlib.sha256(f"ragloop-queue:{key}".encode()).digest()
    return int.from_bytes(digest[:7], "big") / 2**56


def turn_queue_rescore(
    *,
    feedback: int | None,
    created: float | None,
    live_ranking: Sequence[tuple[Hashable, float]],
    candidate_ranking: Sequence[Hashable] | None = None,
    agent_agreement: float | None = None,
    current: tuple[int, float] | None = None,
    random_order: float,
) -> QueuePosition:
    """A turn's place from the current models; see the module docstring for the order.

    live_ranking: (document, score) of the live retriever's top chunks for the turn's query,
    best first (a document may repeat: its best rank counts). candidate_ranking: the newest
    candidate's documents, best first, or None without a candidate. agent_agreement: how much
    the agents' suggestions agree, in [0, 1], or None (no suggestions). current: the turn's
    stored (tier, order), which keeps its random position; random_order: its position if it
    enters the random tier (stable_random_order of its id).
    """
    if feedback == -1:
        return QueuePosition(0, -(created if created is not None else time.time()), REASON_FEEDBACK, None)
    live_documents = documents_in_rank_order(live_ranking)[:RESCORE_DEPTH]
    if candidate_ranking is not None and live_documents:
        candidate_documents = [d for d, _ in documents_in_rank_order([(d, 0.0) for d in candidate_ranking])][:RESCORE_DEPTH]
        agreement = rank_biased_overlap([d for d, _ in live_documents], candidate_documents, depth=RESCORE_DEPTH)
        if agreement < CANDIDATE_AGREEMENT_THRESHOLD:
            return QueuePosition(INFORMATIVE_TIER, agreement - 1.0, REASON_CANDIDATE, round(agreement, 4))
    margin = top_margin([score for _, score in live_documents])
    if margin is not None and margin < LOW_CONFIDENCE_MARGIN:
        return QueuePosition(INFORMATIVE_TIER, max(0.0, margin), REASON_MARGIN, round(margin, 4))
    if agent_agreement is not None and agent_agreement < 1.0:
        agreement = min(1.0, max(0.0, agent_agreement))
        return QueuePosition(INFORMATIVE_TIER, 1.0 + agreement, REASON_AGENTS, round(agreement, 4))
    if current is not None and current[0] == RANDOM_TIER:
        return QueuePosition(RANDOM_TIER, current[1], REASON_NONE, None)
    return QueuePosition(RANDOM_TIER, random_order, REASON_NONE, None)
