"""Repeated queries: a curator judges one turn and, on request, the same label is submitted for
the other turns that ask the same (normalised) query and were given the same passages
(curation.workbench_selectors.turn_identical_turns). Each copy is an ordinary label_submit,
with its own stale check, history and audit row; all of them are written, or none."""

from django.db import transaction

from curation.models import Label
from curation.permissions import user_can_curate
from curation.services.labels import LabelInput, label_submit
from curation.workbench_selectors import turn_identical_turns
from knowledge.errors import Forbidden, InvalidInput
from knowledge.models import Turn

MAX_IDENTICAL = 200


def _label_for(target: Turn, source_turn: Turn, data: LabelInput) -> LabelInput:
    """The label of the source turn restated for a target turn: passage ids mapped by rank
    (the passages are the same chunks at the same ranks), suggestions left out (they were
    the source turn's)."""
    target_by_rank = {p.rank: p.pk for p in target.passages.all()}
    source_rank = dict(source_turn.passages.values_list("pk", "rank"))
    return LabelInput(
        passages={target_by_rank[source_rank[pid]]: relevance for pid, relevance in data.passages.items()},
        attached=dict(data.attached),
        answer_rating=data.answer_rating,
        gold_answer=data.gold_answer,
        rationale=data.rationale,
        has_personal_data=data.has_personal_data,
        comment=data.comment,
        rewrite_wrong=data.rewrite_wrong,
        corrected_query=data.corrected_query,
        skipped=data.skipped,
        skip_reason=data.skip_reason,
        failure_tags=data.failure_tags,
    )


def label_submit_with_identical(
    *, turn: Turn, curator, data: LabelInput, expected_version: int | None, identical: dict[int, int]
) -> tuple[Label, list[Label]]:
    """Submit the curator's label of `turn`, and the same label for each turn of `identical`
    (turn id -> the label version the curator's page saw there, 0 for none).

    A target that is not a repeat of `turn` is refused (InvalidInput), as is one outside the
    curator's knowledge bases (Forbidden); a target whose label changed since the page was
    opened is refused by label_submit's own stale check (Conflict). Any refusal writes nothing.
    """
    if not user_can_curate(curator, turn.knowledge_base):
        raise Forbidden("You cannot label turns of this knowledge base.")
    if len(identical) > MAX_IDENTICAL:
        raise InvalidInput(f"At most {MAX_IDENTICAL} repeated turns at once.")
    repeats = {t.pk: t for t in turn_identical_turns(turn=turn, limit=MAX_IDENTICAL + 1)} if identical else {}
    unknown = sorted(set(identical) - set(repeats))
    if unknown:
        raise InvalidInput(f"Turn(s) {unknown} do not repeat turn {turn.pk}'s query with the same passages.")
    with transaction.atomic():
        label = label_submit(turn=turn, curator=curator, data=data, expected_version=expected_version)
        copies = [
            label_submit(
                turn=repeats[turn_id], curator=curator, data=_label_for(repeats[turn_id], turn, data),
                expected_version=base_version,
            )
            for turn_id, base_version in sorted(identical.items())
        ]  # fmt: skip
    return label, copies
