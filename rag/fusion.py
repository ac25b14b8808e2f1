"""Fusing the rankings of several retrievers (dense and lexical) into one: reciprocal rank
fusion and a weighted fusion of min-max normalised scores. Pure functions over ids and scores.

Ties in either fusion are broken the same way, so a fused list is the same every time: the
item that appears first when the input lists are read rank by rank (rank 1 of the first list,
rank 1 of the second, rank 2 of the first, ...) comes first.
"""

from collections.abc import Hashable, Sequence

# Cormack, Clarke & Buettcher (SIGIR 2009), "Reciprocal rank fusion outperforms Condorcet and
# individual rank learning methods": k = 60 damps the weight of the very top ranks, so one list's
# first place does not outvote an item both lists rank well. The usual default (Elasticsearch,
# OpenSearch and Vespa use it too).
RRF_K = 60
# Weighted score fusion: the dense list's weight; the lexical list gets 1 - alpha.
SCORE_FUSION_ALPHA = 0.5


def _first_seen_order(rankings: Sequence[Sequence[Hashable]]) -> dict[Hashable, int]:
    """Each item's place when the lists are read rank by rank: the tie-break of both fusions."""
    order: dict[Hashable, int] = {}
    for rank in range(max((len(r) for r in rankings), default=0)):
        for ranking in rankings:
            if rank < len(ranking) and ranking[rank] not in order:
                order[ranking[rank]] = len(order)
    return order


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hashable]], *, k: int = RRF_K, weights: Sequence[float] | None = None
) -> list[tuple[Hashable, float]]:
    """The union of the rankings (each best first), ranked by sum over lists of w / (k + rank),
    rank 1-based; an item absent from a list gets nothing from it. (item, fused score), best first.

    An item repeated within one list counts at its first (best) rank only.
    """
    if k < 0:
        raise ValueError(f"k must be 0 or more, got {k}")
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    fused: dict[Hashable, float] = {}
    for ranking, weight in zip(rankings, weights):
        seen: set[Hashable] = set()
        for rank, item in enumerate(ranking, start=1):
            if item in seen:
                continue
            seen.add(item)
            fused[item] = fused.get(item, 0.0) + weight / (k + rank)
    order = _first_seen_order(rankings)
    return sorted(fused.items(), key=lambda pair: (-pair[1], order[pair[0]]))


def min_max_normalise(scores: Sequence[float]) -> list[float]:
    """Scores mapped onto [0, 1] (the lowest to 0, the highest to 1). When all are equal (one
    score, or a flat list) every one maps to 1: each is the list's best."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high == low:
        return [1.0] * len(scores)
    return [(score - low) / (high - low) for score in scores]


def weighted_score_fusion(
    dense: Sequence[tuple[Hashable, float]], lexical: Sequence[tuple[Hashable, float]], *, alpha: float = SCORE_FUSION_ALPHA
) -> list[tuple[Hashable, float]]:
    """The union of two scored lists ((item, score), best first), ranked by
    alpha * dense' + (1 - alpha) * lexical', where ' is the score min-max normalised within its
    own list, and an item a list did not return counts 0 there. (item, fused score), best first.

    Normalising within the list makes cosine similarities and BM25 scores comparable only
    roughly (a list's worst item always gets 0), which is why RRF is the default fusion.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    fused: dict[Hashable, float] = {}
    for scored, weight in ((dense, alpha), (lexical, 1.0 - alpha)):
        best: dict[Hashable, float] = {}
        for item, score in scored:  # a repeated item keeps its first (best) score
            best.setdefault(item, score)
        for item, normalised in zip(best, min_max_normalise(list(best.values()))):
            fused[item] = fused.get(item, 0.0) + weight * normalised
    order = _first_seen_order([[item for item, _ in dense], [item for item, _ in lexical]])
    return sorted(fused.items(), key=lambda pair: (-pair[1], order[pair[0]]))
