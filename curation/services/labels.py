"""Labels: one curator's judgment of one turn (passage relevance, answer rating, gold answer),
submitted, edited with an append-only history, and drafted as the curator works.

A label's state travels as a *payload*, the same dict the workbench autosaves:
    {"passages": {"<retrieved passage id>": "relevant" | "partly" | "not_relevant"},
     "attached": [{"chunk_id": 12, "relevance": "relevant"}],
     "answer_rating": "correct" | "partly" | "wrong" | "",
     "gold_answer": "", "rationale": "", "has_personal_data": false, "comment": "",
     "rewrite_wrong": false, "corrected_query": "",
     "skipped": false, "skip_reason": "",
     "failure_tags": ["retrieval-miss", ...],
     "suggestions": {"passages": {"<retrieved passage id>": <suggestion id>}, "answer": <suggestion id> | null}}

`suggestions` (optional) names the suggestions the judging page pre-selected: for every judged
passage (and the answer rating) that had one, the submit records the suggestion on the
PassageJudgment (or Label) and whether the curator's final choice equals it
(`suggestion_matched`, `answer_suggestion_matched`). A suggestion of another turn, or of
another passage, is refused (InvalidInput). It is not part of the label's history.

`failure_tags` are slugs of the knowledge base's failure tags (curation.services.failure_tags):
a slug that is not one of this knowledge base's tags is refused (InvalidInput, naming it), and
so is a retired tag the label did not carry already. A skip carries no tags.

`rewrite_wrong` and `corrected_query` are the rewrite verdict: only for a turn whose follow-up
question retrieval saw rewritten (`Turn.rewritten_query`), the curator says the rewrite missed
what the user meant and may write a better self-contained query. A submit that gives them for
a turn without a rewrite is refused (InvalidInput) rather than silently dropped.
"""

from dataclasses import dataclass, field, replace

from django.db import transaction

from curation.models import (
    AnswerRating,
    FailureTag,
    Label,
    LabelDraft,
    LabelRevision,
    PassageJudgment,
    Relevance,
    Suggestion,
    TurnHold,
)
from curation.services.failure_tags import failure_tags_resolve
from curation.signals import labels_finalised_send_on_commit
from knowledge.errors import Conflict, InvalidInput
from knowledge.models import Chunk, KnowledgeBase, Turn
from knowledge.services.audit import audit_record
from knowledge.services.personal_data import PersonalDataScrubber

# The label text a curator writes, which the knowledge base's personal-data mode applies to.
LABEL_TEXT_FIELDS = ("gold_answer", "rationale", "comment", "corrected_query", "skip_reason")

MAX_TEXT = 20_000


@dataclass(frozen=True)
class LabelInput:
    passages: dict[int, str] = field(default_factory=dict)  # retrieved passage id -> relevance
    attached: dict[int, str] = field(default_factory=dict)  # chunk id -> relevance
    answer_rating: str = ""
    gold_answer: str = ""
    rationale: str = ""
    has_personal_data: bool = False
    comment: str = ""
    rewrite_wrong: bool = False
    corrected_query: str = ""
    skipped: bool = False
    skip_reason: str = ""
    # The suggestions the page pre-selected: retrieved passage id -> suggestion id, and the answer's.
    suggestions: dict[int, int] = field(default_factory=dict)
    answer_suggestion: int | None = None
    failure_tags: tuple[str, ...] = ()  # slugs of the knowledge base's failure tags

    @classmethod
    def from_payload(cls, payload: dict) -> "LabelInput":
        """Validate a payload's shape and values; InvalidInput names the first problem."""
        if not isinstance(payload, dict):
            raise InvalidInput("The label must be a JSON object.")

        def text(name: str) -> str:
            value = payload.get(name, "")
            if value is None:
                return ""
            if not isinstance(value, str):
                raise InvalidInput(f"{name} must be a string.")
            if "\x00" in value:
                raise InvalidInput(f"{name} must not contain NUL characters.")
            if len(value) > MAX_TEXT:
                raise InvalidInput(f"{name} is longer than {MAX_TEXT} characters.")
            return value

        def flag(name: str) -> bool:
            value = payload.get(name, False)
            if not isinstance(value, bool):
                raise InvalidInput(f"{name} must be true or false.")
            return value

        passages_raw = payload.get("passages", {}) or {}
        if not isinstance(passages_raw, dict):
            raise InvalidInput("passages must map passage ids to a relevance.")
        passages = {}
        for key, relevance in passages_raw.items():
            try:
                passage_id = int(key)
            except (TypeError, ValueError):
                raise InvalidInput(f"passages: {key!r} is not a passage id.") from None
            if relevance in ("", None):
                continue
            if relevance not in Relevance.values:
                raise InvalidInput(f"passages: {relevance!r} is not one of {', '.join(Relevance.values)}.")
            passages[passage_id] = relevance
        attached_raw = payload.get("attached", []) or []
        if not isinstance(attached_raw, list):
            raise InvalidInput("attached must be a list of {chunk_id, relevance}.")
        attached = {}
        for item in attached_raw:
            if not isinstance(item, dict) or not isinstance(item.get("chunk_id"), int):
                raise InvalidInput("attached: each item needs an integer chunk_id.")
            relevance = item.get("relevance", Relevance.RELEVANT)
            if relevance not in Relevance.values:
                raise InvalidInput(f"attached: {relevance!r} is not one of {', '.join(Relevance.values)}.")
            attached[item["chunk_id"]] = relevance
        suggestions, answer_suggestion = _suggestions_from(payload.get("suggestions"))
        failure_tags = payload.get("failure_tags") or []
        if not isinstance(failure_tags, list) or not all(isinstance(slug, str) and slug for slug in failure_tags):
            raise InvalidInput("failure_tags must be a list of failure tag slugs.")
        if len(failure_tags) > 50:
            raise InvalidInput("failure_tags: at most 50 tags.")
        rating = text("answer_rating")
        if rating and rating not in AnswerRating.values:
            raise InvalidInput(f"answer_rating: {rating!r} is not one of {', '.join(AnswerRating.values)}.")
        return cls(
            passages=passages,
            attached=attached,
            answer_rating=rating,
            gold_answer=text("gold_answer"),
            rationale=text("rationale"),
            has_personal_data=flag("has_personal_data"),
            comment=text("comment"),
            rewrite_wrong=flag("rewrite_wrong"),
            corrected_query=text("corrected_query"),
            skipped=flag("skipped"),
            skip_reason=text("skip_reason"),
            suggestions=suggestions,
            answer_suggestion=answer_suggestion,
            failure_tags=tuple(dict.fromkeys(failure_tags)),
        )


def _suggestions_from(raw) -> tuple[dict[int, int], int | None]:
    if raw in (None, ""):
        return {}, None
    if not isinstance(raw, dict):
        raise InvalidInput("suggestions must be an object with passages and answer.")
    passages_raw = raw.get("passages") or {}
    if not isinstance(passages_raw, dict):
        raise InvalidInput("suggestions.passages must map passage ids to suggestion ids.")
    passages = {}
    for key, suggestion_id in passages_raw.items():
        try:
            passage_id = int(key)
        except (TypeError, ValueError):
            raise InvalidInput(f"suggestions.passages: {key!r} is not a passage id.") from None
        if suggestion_id is None:
            continue
        if isinstance(suggestion_id, bool) or not isinstance(suggestion_id, int):
            raise InvalidInput(f"suggestions.passages: {suggestion_id!r} is not a suggestion id.")
        passages[passage_id] = suggestion_id
    answer = raw.get("answer")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, int)):
        raise InvalidInput(f"suggestions.answer: {answer!r} is not a suggestion id.")
    return passages, answer


def _suggestions_shown(turn: Turn, data: LabelInput) -> dict[int, Suggestion]:
    """The suggestions the submit names, checked to be the turn's own and of the right item."""
    wanted = set(data.suggestions.values()) | ({data.answer_suggestion} if data.answer_suggestion else set())
    if not wanted:
        return {}
    found = {s.pk: s for s in Suggestion.objects.filter(pk__in=wanted, turn=turn)}
    for passage_id, suggestion_id in data.suggestions.items():
        suggestion = found.get(suggestion_id)
        if suggestion is None or suggestion.retrieved_passage_id != passage_id:
            raise InvalidInput(f"Suggestion {suggestion_id} is not a suggestion for passage {passage_id} of turn {turn.pk}.")
    if data.answer_suggestion:
        suggestion = found.get(data.answer_suggestion)
        if suggestion is None or suggestion.retrieved_passage_id is not None:
            raise InvalidInput(f"Suggestion {data.answer_suggestion} is not an answer suggestion of turn {turn.pk}.")
    return found


def label_audit_summary(label: Label) -> dict:
    """What the audit log keeps of a label: its verdicts, not the curator's texts (which may
    hold what an end user typed)."""
    judgments = list(label.passage_judgments.all())
    return {
        "version": label.version,
        "curator": label.curator.get_username(),
        "skipped": label.skipped,
        "answer_rating": label.answer_rating,
        "passages_judged": len(judgments),
        "relevant": sum(1 for j in judgments if j.relevance == "relevant"),
        "has_gold_answer": bool(label.gold_answer.strip()),
        "has_personal_data": label.has_personal_data,
    }


def label_payload(label: Label) -> dict:
    """A label's state as a payload (also what the history stores before and after)."""
    judgments = list(label.passage_judgments.all())
    return {
        "passages": {str(j.retrieved_passage_id): j.relevance for j in judgments if j.retrieved_passage_id},
        "attached": [{"chunk_id": j.chunk_id, "relevance": j.relevance} for j in judgments if j.attached and j.chunk_id],
        "answer_rating": label.answer_rating,
        "gold_answer": label.gold_answer,
        "rationale": label.rationale,
        "has_personal_data": label.has_personal_data,
        "comment": label.comment,
        "rewrite_wrong": label.rewrite_wrong,
        "corrected_query": label.corrected_query,
        "skipped": label.skipped,
        "skip_reason": label.skip_reason,
        "failure_tags": [tag.slug for tag in label.failure_tags.all()],  # FailureTag.Meta.ordering: picker order
    }


def _validate_against_turn(turn: Turn, data: LabelInput, *, imported: bool = False) -> dict[int, Chunk]:
    if data.skipped:
        if not data.skip_reason.strip():
            raise InvalidInput("A skip needs a reason.")
        return {}
    _validate_rewrite_verdict(turn, data)
    if data.answer_rating and not turn.answer.strip() and not imported:
        # An imported turn (or any turn logged without one) has no model answer: the judging
        # page asks for no rating, and a rating sent anyway would rate nothing.
        raise InvalidInput(f"Turn {turn.pk} has no answer to rate: leave answer_rating empty.")
    passage_ids = set(turn.passages.values_list("pk", flat=True))
    unknown = sorted(set(data.passages) - passage_ids)
    if unknown:
        raise InvalidInput(f"Passage(s) {unknown} do not belong to turn {turn.pk}.")
    chunks = {c.pk: c for c in Chunk.objects.filter(pk__in=data.attached, knowledge_base_id=turn.knowledge_base_id)}
    missing = sorted(set(data.attached) - set(chunks))
    if missing:
        raise InvalidInput(f"Chunk(s) {missing} are not in knowledge base {turn.knowledge_base.slug!r}.")
    if not data.passages and not data.attached and not data.answer_rating and not data.gold_answer.strip():
        raise InvalidInput("The label is empty: judge at least one passage or the answer.")
    return chunks


def _validate_rewrite_verdict(turn: Turn, data: LabelInput) -> None:
    """The rewrite verdict is about `turn.rewritten_query`: without a rewrite there is nothing to
    call wrong, and a better query only makes sense for a rewrite called wrong. Checked at submit
    only, so a draft keeps whatever the curator typed while they make up their mind."""
    if not (data.rewrite_wrong or data.corrected_query):
        return
    if not turn.rewritten_query.strip():
        raise InvalidInput(
            f"Turn {turn.pk}'s query was not rewritten for retrieval: "
            "rewrite_wrong and corrected_query are only for a turn with a rewritten query."
        )
    if data.corrected_query and not data.corrected_query.strip():
        raise InvalidInput("corrected_query is blank: write the better query, or leave it empty.")
    if data.corrected_query and not data.rewrite_wrong:
        raise InvalidInput(
            "corrected_query needs rewrite_wrong: a better query is for a rewrite that missed what the user meant."
        )


def label_submit(
    *, turn: Turn, curator, data: LabelInput, imported: bool = False, expected_version: int | None = None
) -> Label:
    """Create or update the curator's label of the turn, record the change, drop the draft.

    A label is stored even when the curator's hold has expired: no label is ever dropped.
    `expected_version` is the label version the curator's page started from; a submit from
    a page that predates a newer label (another tab) is refused with Conflict, not applied.
    """
    chunks = _validate_against_turn(turn, data, imported=imported)
    data = label_input_scrubbed(knowledge_base=turn.knowledge_base, data=data)
    shown = {} if data.skipped else _suggestions_shown(turn, data)
    # A retired tag the label already carries may stay on it; none is put on anew.
    carried = frozenset(FailureTag.objects.filter(labels__turn=turn, labels__curator=curator).values_list("slug", flat=True))
    failure_tags = [] if data.skipped else failure_tags_resolve(
        knowledge_base=turn.knowledge_base, slugs=list(data.failure_tags), allowed_retired=carried, any_retired=imported
    )
    with transaction.atomic():
        # Lock the turn: its label counts and dispute flag are recomputed below.
        turn = Turn.objects.select_for_update().select_related("knowledge_base").get(pk=turn.pk)
        label = Label.objects.select_for_update().filter(turn=turn, curator=curator).first()
        current_version = label.version if label else 0
        if expected_version is not None and current_version > expected_version:
            raise Conflict(
                f"A newer label (version {current_version}) was submitted after this page was opened; reload to see it."
            )
        before = label_payload(label) if label else None
        before_summary = label_audit_summary(label) if label else None
        if label is None:
            label = Label(turn=turn, curator=curator, version=1)
        else:
            label.version += 1
        label.answer_rating = "" if data.skipped else data.answer_rating
        label.gold_answer = "" if data.skipped else data.gold_answer
        label.rationale = "" if data.skipped else data.rationale
        if data.has_personal_data and not (before and before["has_personal_data"]):
            # Flagged anew: an admin's earlier clearance was for an earlier flag.
            label.personal_data_cleared_by, label.personal_data_cleared_at = None, None
        label.has_personal_data = data.has_personal_data
        label.comment = data.comment
        label.rewrite_wrong = False if data.skipped else data.rewrite_wrong
        label.corrected_query = "" if data.skipped else data.corrected_query
        label.skipped = data.skipped
        label.skip_reason = data.skip_reason if data.skipped else ""
        label.imported = imported
        answer_suggestion = shown.get(data.answer_suggestion) if label.answer_rating else None
        label.answer_suggestion = answer_suggestion
        label.answer_suggestion_matched = (answer_suggestion.value == label.answer_rating) if answer_suggestion else None
        label.save()
        label.failure_tags.set(failure_tags)
        label.passage_judgments.all().delete()
        if not data.skipped:
            PassageJudgment.objects.bulk_create(
                [
                    PassageJudgment(
                        label=label,
                        retrieved_passage_id=pid,
                        relevance=rel,
                        suggestion=shown.get(data.suggestions.get(pid)),
                        suggestion_matched=(shown[data.suggestions[pid]].value == rel) if pid in data.suggestions else None,
                    )
                    for pid, rel in data.passages.items()
                ]
                + [
                    PassageJudgment(
                        label=label,
                        chunk=chunks[chunk_id],
                        document_id=chunks[chunk_id].document_id,
                        attached=True,
                        text=chunks[chunk_id].text,
                        relevance=rel,
                    )
                    for chunk_id, rel in data.attached.items()
                ]
            )
        LabelRevision.objects.create(label=label, actor=curator, before=before, after=label_payload(label))
        if not imported:  # an import is one audit row, written by labels_import
            audit_record(
                action="label.edit" if before_summary else "label.submit",
                object_type="label", object_id=label.pk, knowledge_base=turn.knowledge_base, actor=curator,
                before=before_summary, after={**label_audit_summary(label), "turn": turn.pk},
            )  # fmt: skip
        LabelDraft.objects.filter(turn=turn, curator=curator).delete()
        TurnHold.objects.filter(turn=turn, curator=curator).delete()
        turn_label_state_refresh(turn=turn)
        if not imported:  # an import announces its labels once, when it is done
            labels_finalised_send_on_commit(turn.knowledge_base_id)
    return label


def label_input_scrubbed(*, knowledge_base: KnowledgeBase, data: LabelInput) -> LabelInput:
    """The label's text as it is to be stored under the knowledge base's personal-data mode
    (PersonalDataRejected, a 422, under reject when any of it holds personal data)."""
    scrubber = PersonalDataScrubber.for_knowledge_base(knowledge_base)
    if not scrubber.active:
        return data
    scrubbed = replace(data, **{name: scrubber.written(getattr(data, name), where=name) for name in LABEL_TEXT_FIELDS})
    scrubber.raise_if_rejected()
    return scrubbed


def _draft_payload_scrubbed(*, knowledge_base: KnowledgeBase, payload: dict) -> dict:
    scrubber = PersonalDataScrubber.for_knowledge_base(knowledge_base)
    if not scrubber.active:
        return payload
    scrubbed = {
        **payload,
        **{name: scrubber.written(payload[name], where=name) for name in LABEL_TEXT_FIELDS if isinstance(payload.get(name), str)},
    }
    scrubber.raise_if_rejected()
    return scrubbed


def turn_label_state_refresh(*, turn: Turn) -> None:
    """Recount submitted labels and recompute `needs_labels` and `disputed` for the turn."""
    from curation.services.agreement import labels_disagree

    labels = list(Label.objects.filter(turn=turn, skipped=False).prefetch_related("passage_judgments"))
    count = len(labels)
    has_adjudication = hasattr(turn, "adjudication") and Turn.objects.filter(pk=turn.pk, adjudication__isnull=False).exists()
    disputed = count >= 2 and not has_adjudication and labels_disagree(labels)
    Turn.objects.filter(pk=turn.pk).update(
        label_count=count,
        needs_labels=count < turn.knowledge_base.labels_per_turn,
        disputed=disputed,
    )


def label_draft_save(*, turn: Turn, curator, payload: dict, base_version: int) -> LabelDraft:
    """Save work in progress. Refused (Conflict) if a newer label was submitted meanwhile,
    say from another tab: the draft must not hide or overwrite it."""
    LabelInput.from_payload(payload)  # same validation as a submit, minus completeness
    payload = _draft_payload_scrubbed(knowledge_base=turn.knowledge_base, payload=payload)
    current = Label.objects.filter(turn=turn, curator=curator).values_list("version", flat=True).first() or 0
    if current > base_version:
        raise Conflict(
            f"A newer label (version {current}) was submitted after this draft started; reload to see it."
        )
    draft, _ = LabelDraft.objects.update_or_create(
        turn=turn, curator=curator, defaults={"payload": payload, "base_version": base_version}
    )
    return draft


def label_for_editing(*, turn: Turn, curator) -> tuple[dict, int, str]:
    """(payload, base version, where it came from: "draft", "label" or "new") for the form.

    A draft wins only if it started from the current label version; an older draft is stale
    and is dropped rather than shown over a newer submitted label.
    """
    label = Label.objects.filter(turn=turn, curator=curator).prefetch_related("passage_judgments").first()
    version = label.version if label else 0
    draft = LabelDraft.objects.filter(turn=turn, curator=curator).first()
    if draft is not None:
        if draft.base_version >= version:
            return draft.payload, version, "draft"
        draft.delete()
    if label is not None:
        return label_payload(label), version, "label"
    return {"passages": {}, "attached": [], "answer_rating": "", "gold_answer": turn.answer, "rationale": "",
            "has_personal_data": False, "comment": "", "rewrite_wrong": False, "corrected_query": "",
            "skipped": False, "skip_reason": "", "failure_tags": []}, 0, "new"
