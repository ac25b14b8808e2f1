"""Evaluation metrics on plain data: retrieval quality per query (recall@k, MRR@k, nDCG@k) and
answer quality (SQuAD exact match and token F1, lexical groundedness), with reports that keep
the per-query figures so a candidate model version can be diffed against the live one.

Choices made here once for the whole product:
- Ranked lists are lists of ids. A repeated id counts once, at its first position, and later
  copies are dropped so the items after them move up. This is what trec_eval does with
  duplicates, and it is what a chunk-level retriever judged against document-level qrels needs:
  several chunks of one document collapse to that document at the best chunk's rank (callers
  should then retrieve more than k chunks to fill k documents).
- A query with nothing relevant has no recall, reciprocal rank or nDCG (each is 0/0): the
  per-query functions return None and the reports skip such queries and list them, instead of
  counting them as 0 (unfair to the retriever) or 1 (flattering).
- nDCG uses linear gain, rel / log2(rank + 1), as trec_eval's ndcg_cut and BEIR (through
  pytrec_eval) do, so our figures compare with published BEIR numbers. The other common
  variant, (2^rel - 1) / log2(rank + 1) (Burges et al. 2005), gives the same value when
  relevance is binary and rewards the highest grades more when it is graded.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# --- Retrieval --------------------------------------------------------------------------------


def _distinct(ranked: Iterable[str]) -> list[str]:
    """`ranked` with later copies of an id removed (see the module docstring)."""
    seen: set[str] = set()
    distinct: list[str] = []
    for item in ranked:
        if item not in seen:
            seen.add(item)
            distinct.append(item)
    return distinct


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


def recall_at_k(ranked: Sequence[str], relevant: Iterable[str], *, k: int) -> float | None:
    """Share of the relevant ids found among the first k distinct ids of `ranked`.

    None when `relevant` is empty: recall is undefined there and callers skip the query.
    """
    _check_k(k)
    relevant = set(relevant)
    if not relevant:
        return None
    found = sum(1 for item in _distinct(ranked)[:k] if item in relevant)
    return found / len(relevant)


def mrr_at_k(ranked: Sequence[str], relevant: Iterable[str], *, k: int = 10) -> float | None:
    """Reciprocal rank (1/rank, ranks from 1) of the first relevant id within the top k, else 0.

    None when `relevant` is empty, like `recall_at_k`.
    """
    _check_k(k)
    relevant = set(relevant)
    if not relevant:
        return None
    for rank, item in enumerate(_distinct(ranked)[:k], start=1):
        if item in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, float], *, k: int = 10) -> float | None:
    """Normalised discounted cumulative gain at k with graded relevance (trec_eval / BEIR form).

    DCG@k = sum over ranks i = 1..k of rel(item at i) / log2(i + 1); the ideal DCG puts every
    judged item in descending order of relevance. Ids missing from `relevance`, and judgments
    of 0 or below, gain nothing. None when no judged item has a positive relevance.
    """
    _check_k(k)
    gains = {item: float(grade) for item, grade in relevance.items() if grade > 0}
    if not gains:
        return None
    dcg = sum(gains.get(item, 0.0) / math.log2(rank + 1) for rank, item in enumerate(_distinct(ranked)[:k], start=1))
    ideal = sorted(gains.values(), reverse=True)[:k]
    ideal_dcg = sum(gain / math.log2(rank + 1) for rank, gain in enumerate(ideal, start=1))
    return dcg / ideal_dcg


def _mean(values: Iterable[float | None]) -> float | None:
    counted = [value for value in values if value is not None]
    return sum(counted) / len(counted) if counted else None


def retrieval_report(
    *,
    runs: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, float]],
    ks: Sequence[int] = (1, 5, 10),
    rank_cutoff: int = 10,
) -> dict[str, Any]:
    """Mean and per-query recall@k (for each k in `ks`), MRR@`rank_cutoff` and nDCG@`rank_cutoff`.

    `runs` maps a query id to the ids the retriever returned, best first; `qrels` maps a query
    id to graded judgments {id: relevance}, where relevance > 0 means relevant. The judged
    queries are the ones evaluated: a judged query missing from `runs` counts as an empty
    ranking (the retriever found nothing), and queries in `runs` without judgments are ignored.
    Judged queries with nothing relevant are skipped and listed under "skipped".

    Returns a JSON-able dict:
    {"queries": <evaluated count>, "skipped": [query ids],
     "mean": {"recall@1": ..., "recall@5": ..., "recall@10": ..., "mrr@10": ..., "ndcg@10": ...},
     "per_query": {query_id: {same keys}}}
    Means are None when no query was evaluated.
    """
    metric_names = [f"recall@{k}" for k in ks] + [f"mrr@{rank_cutoff}", f"ndcg@{rank_cutoff}"]
    per_query: dict[str, dict[str, float | None]] = {}
    skipped: list[str] = []
    for query_id, judgments in qrels.items():
        relevant = {item for item, grade in judgments.items() if grade > 0}
        if not relevant:
            skipped.append(query_id)
            continue
        ranked = runs.get(query_id, [])
        figures: dict[str, float | None] = {}
        for k in ks:
            figures[f"recall@{k}"] = recall_at_k(ranked, relevant, k=k)
        figures[f"mrr@{rank_cutoff}"] = mrr_at_k(ranked, relevant, k=rank_cutoff)
        figures[f"ndcg@{rank_cutoff}"] = ndcg_at_k(ranked, judgments, k=rank_cutoff)
        per_query[query_id] = figures
    return {
        "queries": len(per_query),
        "skipped": skipped,
        "mean": {name: _mean(figures[name] for figures in per_query.values()) for name in metric_names},
        "per_query": per_query,
    }


# --- Answers ----------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Answers cite passages as [1] or [1, 3] (rag.generation); those markers are not claims about
# the world, and "1" would otherwise count as a token missing from the passages.
_CITATION = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lowercase, drop punctuation, drop a/an/the, collapse spaces.

    Same steps in the same order as the official evaluation script, so EM and F1 compare with
    published SQuAD-style figures.
    """
    text = text.lower()
    text = "".join(character for character in text if character not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(golds: Iterable[str]) -> list[str]:
    # A blank gold answer is a missing one, not a request that the prediction be blank.
    return [gold for gold in golds if gold.strip()]


def exact_match(prediction: str, golds: Sequence[str]) -> float | None:
    """1.0 when the normalised prediction equals any normalised gold answer, else 0.0.

    None when there is no (non-blank) gold answer to compare with.
    """
    golds = _golds(golds)
    if not golds:
        return None
    normalized = normalize_answer(prediction)
    return max(float(normalized == normalize_answer(gold)) for gold in golds)


def _f1(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    if not prediction_tokens or not gold_tokens:
        # SQuAD's rule: when either side normalises to nothing, F1 is 1 only if both do.
        return float(prediction_tokens == gold_tokens)
    common = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(prediction_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: Sequence[str]) -> float | None:
    """SQuAD token F1 (bag of normalised tokens) against the best-matching gold answer.

    None when there is no (non-blank) gold answer to compare with.
    """
    golds = _golds(golds)
    if not golds:
        return None
    prediction_tokens = normalize_answer(prediction).split()
    return max(_f1(prediction_tokens, normalize_answer(gold).split()) for gold in golds)


def groundedness(answer: str, passages: Sequence[str]) -> float:
    """Share of the answer's normalised tokens that occur anywhere in the given passages.

    A lexical proxy for "the answer says only what the context says": every token position of
    the answer counts (a repeated unsupported word counts each time), passage-citation markers
    like [2] are ignored, and articles and punctuation are gone after normalisation. An answer
    with no tokens scores 0.0: it grounds nothing, and 1.0 would reward empty answers.
    """
    answer_tokens = normalize_answer(_CITATION.sub(" ", answer)).split()
    if not answer_tokens:
        return 0.0
    passage_tokens = {token for passage in passages for token in normalize_answer(passage).split()}
    return sum(1 for token in answer_tokens if token in passage_tokens) / len(answer_tokens)


def answer_report(
    *,
    predictions: Mapping[str, str],
    golds: Mapping[str, Sequence[str]],
    passages: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Mean and per-query exact match, token F1 and (when `passages` is given) groundedness.

    `predictions` maps a query id to the generated answer, `golds` to its gold answers, and
    `passages` to the passage texts the generator was given. The queries are those in either
    `predictions` or `golds`: a query with gold answers but no prediction counts as an empty
    answer (EM and F1 0), a query without gold answers has EM and F1 None, and groundedness is
    None for a query without a prediction or without an entry in `passages`. Means skip None.

    Returns a JSON-able dict:
    {"queries": <count>, "counted": {"exact_match": n, "f1": n, "groundedness": n},
     "mean": {"exact_match": ..., "f1": ..., "groundedness": ...},
     "per_query": {query_id: {same keys}}}
    """
    query_ids = list(predictions) + [query_id for query_id in golds if query_id not in predictions]
    per_query: dict[str, dict[str, float | None]] = {}
    for query_id in query_ids:
        prediction = predictions.get(query_id, "")
        query_golds = golds.get(query_id, [])
        grounded = None
        if passages is not None and query_id in predictions and query_id in passages:
            grounded = groundedness(prediction, passages[query_id])
        per_query[query_id] = {
            "exact_match": exact_match(prediction, query_golds),
            "f1": token_f1(prediction, query_golds),
            "groundedness": grounded,
        }
    names = ("exact_match", "f1", "groundedness")
    return {
        "queries": len(per_query),
        "counted": {name: sum(1 for figures in per_query.values() if figures[name] is not None) for name in names},
        "mean": {name: _mean(figures[name] for figures in per_query.values()) for name in names},
        "per_query": per_query,
    }


# --- Confidence ----------------------------------------------------------------------------

BOOTSTRAP_RESAMPLES = 10_000


def paired_bootstrap_interval(
    candidate: Mapping[str, float | None],
    baseline: Mapping[str, float | None],
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = 0.95,
) -> dict[str, float | int] | None:
    """The mean per-query change (candidate - baseline) with a paired bootstrap interval.

    Only queries both sides scored count. Queries are resampled with replacement, the same
    draw for both sides (paired), `resamples` times from a seeded generator, so the interval is
    reproducible; its bounds are the (1 - confidence) / 2 percentiles of the resampled means.
    None when no query was scored on both sides.
    """
    ids = sorted(q for q in candidate.keys() & baseline.keys() if candidate[q] is not None and baseline[q] is not None)
    if not ids:
        return None
    deltas = np.array([candidate[q] - baseline[q] for q in ids], dtype=float)
    rng = np.random.default_rng(seed)
    means = deltas[rng.integers(0, len(deltas), (resamples, len(deltas)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"delta": float(deltas.mean()), "low": float(low), "high": float(high), "queries": len(ids)}
