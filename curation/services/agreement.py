"""Agreement between curators: whether a turn's labels disagree (it is then disputed)."""

from curation.models import Label


def _judgments(label: Label) -> dict:
    return {j.retrieved_passage_id: j.relevance for j in label.passage_judgments.all() if j.retrieved_passage_id}


def labels_disagree(labels: list[Label]) -> bool:
    """True if two submitted labels rate the answer differently, or judge a passage that both
    judged differently. A passage only one curator judged is not a disagreement. The rewrite
    verdict (rewrite_wrong, corrected_query) is not compared: a better query is free text like
    a gold answer, and a turn is not held back from training over how its query was rewritten."""
    ratings = {label.answer_rating for label in labels if label.answer_rating}
    if len(ratings) > 1:
        return True
    seen: dict[int, str] = {}
    for label in labels:
        for passage_id, relevance in _judgments(label).items():
            if seen.setdefault(passage_id, relevance) != relevance:
                return True
    return False
