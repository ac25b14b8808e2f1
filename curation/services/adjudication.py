"""Adjudication: an admin's final judgment of a turn whose curators disagreed. It wins over the
curators' labels (see curation.selectors.turn_final_judgments) and ends the dispute."""

from django.db import transaction

from curation.models import Adjudication, AnswerRating, FailureTag, Label, Relevance
from curation.services.failure_tags import failure_tags_resolve
from curation.services.labels import MAX_TEXT, turn_label_state_refresh
from curation.signals import labels_finalised_send_on_commit
from curation.workbench_selectors import readable
from knowledge.errors import InvalidInput
from knowledge.models import Turn
from knowledge.services.audit import audit_record
from knowledge.services.personal_data import personal_data_check_written


def _text(name: str, value: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be text.")
    if "\x00" in value:
        raise InvalidInput(f"{name} must not contain NUL characters.")
    if len(value) > MAX_TEXT:
        raise InvalidInput(f"{name} is longer than {MAX_TEXT} characters.")
    return value


def _passage_relevance(turn: Turn, raw: dict) -> dict[int, str]:
    ranks = dict(turn.passages.values_list("pk", "rank"))
    relevance_by_passage: dict[int, str] = {}
    for key, relevance in raw.items():
        try:
            passage_id = int(key)
        except (TypeError, ValueError):
            raise InvalidInput(f"{key!r} is not a passage id.") from None
        if relevance in ("", None):
            continue  # not judged
        if relevance not in Relevance.values:
            where = f"Passage #{ranks[passage_id]}" if passage_id in ranks else f"Passage id {passage_id}"
            raise InvalidInput(f"{where}: {relevance!r} is not one of {', '.join(readable(v) for v in Relevance.values)}.")
        relevance_by_passage[passage_id] = relevance
    unknown = sorted(set(relevance_by_passage) - set(ranks))
    if unknown:
        raise InvalidInput(f"Passage id(s) {unknown} do not belong to turn {turn.pk}.")
    return relevance_by_passage


def _undecided_disagreements(turn: Turn, passages: dict[int, str], answer_rating: str) -> list[str]:
    """What the curators disagree on that the judgment leaves open."""
    labels = Label.objects.filter(turn=turn, skipped=False).prefetch_related("passage_judgments")
    seen: dict[int, set[str]] = {}
    ratings: set[str] = set()
    for label in labels:
        if label.answer_rating:
            ratings.add(label.answer_rating)
        for judgment in label.passage_judgments.all():
            if judgment.retrieved_passage_id:
                seen.setdefault(judgment.retrieved_passage_id, set()).add(judgment.relevance)
    # Named by rank, as the page shows them, not by database id.
    ranks = dict(turn.passages.values_list("pk", "rank"))
    open_points = [
        f"passage #{ranks.get(pid, '?')}"
        for pid, values in sorted(seen.items(), key=lambda item: ranks.get(item[0], 0))
        if len(values) > 1 and pid not in passages
    ]
    if len(ratings) > 1 and not answer_rating:
        open_points.append("the answer rating")
    return open_points


def _adjudication_summary(adjudication: Adjudication) -> dict:
    return {
        "admin": adjudication.admin.get_username() if adjudication.admin_id else None,
        "answer_rating": adjudication.answer_rating,
        "passage_relevance": adjudication.passage_relevance,
        "has_gold_answer": bool(adjudication.gold_answer.strip()),
    }


def adjudication_record(
    *,
    turn: Turn,
    admin,
    passage_relevance: dict,
    answer_rating: str = "",
    gold_answer: str = "",
    note: str = "",
    failure_tags: list[str] | None = None,
) -> Adjudication:
    """Record (or replace) the admin's final judgment of the turn; the turn is then no longer
    disputed. The caller checks that `admin` is an admin.

    `passage_relevance` maps the turn's retrieved passage ids to a relevance ("" = not judged).
    Every point the curators disagree on must be decided. `failure_tags` are slugs of the
    knowledge base's tags, the final word on them (a retired one only if a curator or the
    earlier adjudication put it on). InvalidInput names the first problem, and then nothing
    is written.
    """
    passages = _passage_relevance(turn, passage_relevance or {})
    answer_rating = _text("answer_rating", answer_rating or "")
    if answer_rating and answer_rating not in AnswerRating.values:
        raise InvalidInput(f"answer_rating: {answer_rating!r} is not one of {', '.join(AnswerRating.values)}.")
    gold_answer = _text("gold_answer", gold_answer or "")
    note = _text("note", note or "")
    scrubbed = personal_data_check_written(
        knowledge_base=turn.knowledge_base, texts={"gold_answer": gold_answer, "note": note}
    )
    gold_answer, note = scrubbed["gold_answer"], scrubbed["note"]
    if not passages and not answer_rating and not gold_answer.strip():
        raise InvalidInput("The judgment is empty: judge at least one passage or the answer.")
    open_points = _undecided_disagreements(turn, passages, answer_rating)
    if open_points:
        raise InvalidInput(f"The curators disagree on {', '.join(open_points)}: decide it.")
    carried = frozenset(
        FailureTag.objects.filter(labels__turn=turn).values_list("slug", flat=True).union(
            FailureTag.objects.filter(adjudications__turn=turn).values_list("slug", flat=True)
        )
    )
    tags = failure_tags_resolve(
        knowledge_base=turn.knowledge_base, slugs=list(failure_tags or []), allowed_retired=carried
    )
    with transaction.atomic():
        # Lock the turn as label_submit does: its dispute flag is recomputed below.
        locked = Turn.objects.select_for_update().select_related("knowledge_base").get(pk=turn.pk)
        previous = Adjudication.objects.filter(turn=locked).first()
        adjudication, _ = Adjudication.objects.update_or_create(
            turn=locked,
            defaults={
                "admin": admin,
                "answer_rating": answer_rating,
                "gold_answer": gold_answer,
                "passage_relevance": {str(pid): rel for pid, rel in sorted(passages.items())},
                "note": note,
            },
        )
        adjudication.failure_tags.set(tags)
        turn_label_state_refresh(turn=Turn.objects.select_related("knowledge_base").get(pk=turn.pk))
        audit_record(
            action="label.adjudicate", object_type="turn", object_id=locked.pk, knowledge_base=locked.knowledge_base,
            actor=admin, before=_adjudication_summary(previous) if previous else None,
            after=_adjudication_summary(adjudication),
        )  # fmt: skip
        labels_finalised_send_on_commit(locked.knowledge_base_id)
    return adjudication
