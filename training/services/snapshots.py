"""Dataset snapshots: the knowledge base's final judgments frozen into immutable examples.

Each turn with a final judgment (see curation.selectors.turn_final_judgments:
adjudication, else agreeing labels, else the single label) becomes one example. Passages
judged "relevant" are positives, "not_relevant" ones are hard negatives; "partly" is neither
for a retriever (too uncertain to train on either way) and is kept apart (`partly`) for the
reranker, which trains on graded targets (relevant 1.0, partly 0.5, not 0.0). A turn whose label a curator flagged "contains
personal data" is left out until an admin clears the flag (curation.services.personal_data);
the snapshot records how many were (`personal_data_excluded`).

A follow-up question in a conversation ("and for children?") is two texts: the example's
`query` is the self-contained query retrieval used (a curator's corrected query when the
rewrite was wrong, else the turn's rewrite, else its question), which retrievers train and
are evaluated on; `question` keeps the user's own words when they differ, and `history` the
messages before them as the turn stored them, which generators train and are evaluated on.

The split comes from a stable hash of the normalised query text (rag.datasets.split_key,
split_for): every copy of a query, however it was cased or punctuated, lands on the same side,
and a query never moves between train and held-out as labels grow. It is keyed on the
self-contained query, not the user's words: "and for children?" asked in two conversations
is two different questions, while two conversations whose follow-ups both mean "does vitamin
D prevent fractures in children?" ask one, and must not sit on both sides; it is also the
text retrievers train on, so held-out retrieval stays honest. (A curator's correction changes
that text, so it may move its example in a later snapshot.) Snapshots made before this rule
say `split_rule="turn_id"` and keep their rows; those made before conversations have a blank
question and an empty history, which read as a turn on its own.
"""

from django.conf import settings
from django.db import transaction

from curation.models import Label, Relevance
from curation.selectors import turn_final_judgments, turn_ids_held_for_personal_data
from knowledge.errors import Conflict, InvalidInput
from knowledge.models import Chunk, Turn
from rag.conversation import ChatMessage, history_within_budget
from rag.datasets import DatasetExample, LabeledPassage, chat_history, split_for, split_key
from training.models import DatasetSnapshot, SnapshotExample


def _passage(*, text: str, document_id: str = "", chunk_id: int | None = None, title: str = "") -> dict:
    return {"text": text, "document_id": document_id, "chunk_id": chunk_id, "title": title}


class SnapshotUnchanged(Conflict):
    """The labels have not changed since the latest snapshot: a new one would be a copy of it."""

    def __init__(self, latest: DatasetSnapshot):
        self.latest = latest
        super().__init__(
            f"Snapshot #{latest.pk} already holds exactly these examples ({latest.train_count} train / "
            f"{latest.heldout_count} held-out, held-out share {latest.heldout_share:g}); nothing was judged, "
            "corrected or adjudicated since. Label more turns first, or use snapshot "
            f"#{latest.pk}."
        )


# What makes two snapshots the same dataset: every field an example is trained or scored on.
_EXAMPLE_FIELDS = (
    "turn_id", "example_id", "split", "query", "question", "history", "gold_answer", "answer_rating", "rationale",
    "relevant", "irrelevant", "retrieved", "label_ids", "failure_tags",
)  # fmt: skip


def _same_examples(snapshot: DatasetSnapshot, examples: list[SnapshotExample]) -> bool:
    if snapshot.example_count != len(examples):
        return False
    stored = sorted(
        (tuple(row[name] for name in _EXAMPLE_FIELDS) for row in snapshot.examples.values(*_EXAMPLE_FIELDS)),
        key=repr,
    )
    new = sorted((tuple(getattr(example, name) for name in _EXAMPLE_FIELDS) for example in examples), key=repr)
    return stored == new


def dataset_snapshot_create(
    *,
    knowledge_base,
    created_by=None,
    heldout_share: float = 0.2,
    include_synthetic: bool = False,
    reuse_identical: bool = False,
) -> DatasetSnapshot:
    """Freeze the final judgments; labels of synthetic turns only when `include_synthetic`.

    Synthetic examples always go to the train split: held-out figures measure questions
    people asked, whatever was trained on.

    A snapshot identical to the knowledge base's latest one (the same examples, split the same
    way) is refused with SnapshotUnchanged, so the list never fills with copies; with
    `reuse_identical` (a training run that wants "the current labels") the latest one is
    returned instead.
    """
    if not 0.0 <= heldout_share <= 1.0:
        raise InvalidInput(f"heldout_share must be between 0 and 1, got {heldout_share}.")
    turns = Turn.objects.filter(knowledge_base=knowledge_base).filter(label_count__gte=1) | Turn.objects.filter(
        knowledge_base=knowledge_base, adjudication__isnull=False
    )
    if not include_synthetic:
        turns = turns.exclude(source=Turn.Source.SYNTHETIC)
    judgments = {pk: j for pk, j in turn_final_judgments(turns=turns.distinct()).items() if j.is_final}
    if not judgments:
        raise InvalidInput(f"Knowledge base {knowledge_base.slug!r} has no curated turns to snapshot yet.")
    # A turn a curator flagged as holding personal data stays out until an admin clears the flag.
    held = turn_ids_held_for_personal_data(turn_ids=list(judgments))
    judgments = {pk: j for pk, j in judgments.items() if pk not in held}
    if not judgments:
        raise InvalidInput(
            f"Every curated turn of {knowledge_base.slug!r} ({len(held)}) is flagged as holding personal data; "
            "an admin must clear the flags (on each turn's page) before a snapshot can use them."
        )
    turn_rows = {t.pk: t for t in Turn.objects.filter(pk__in=judgments).prefetch_related("passages__document")}
    labels = list(Label.objects.filter(turn_id__in=judgments, skipped=False).order_by("updated_at", "pk"))
    rationale_by_turn = {label.turn_id: label.rationale for label in labels if label.rationale.strip()}
    label_ids_by_turn: dict[int, list[int]] = {}
    for label in labels:
        label_ids_by_turn.setdefault(label.turn_id, []).append(label.pk)
    attached_ids = {chunk_id for j in judgments.values() for chunk_id in j.attached}
    attached_chunks = {c.pk: c for c in Chunk.objects.filter(pk__in=attached_ids).select_related("document")}

    examples = []
    synthetic_ids: set[int] = set()
    for turn_id, judgment in sorted(judgments.items()):
        turn = turn_rows[turn_id]
        retrieved, relevant, irrelevant, partly = [], [], [], []
        for passage in turn.passages.all():
            item = _passage(
                text=passage.text,
                document_id=passage.document.external_id if passage.document else passage.source_id,
                chunk_id=passage.chunk_id,
                title=passage.title,
            )
            retrieved.append(item)
            relevance = judgment.passages.get(passage.pk)
            if relevance == Relevance.RELEVANT:
                relevant.append(item)
            elif relevance == Relevance.NOT_RELEVANT:
                irrelevant.append(item)
            elif relevance == Relevance.PARTLY:
                partly.append(item)
        for chunk_id, relevance in judgment.attached.items():
            chunk = attached_chunks.get(chunk_id)
            if chunk is None:
                continue
            item = _passage(text=chunk.text, document_id=chunk.document.external_id, chunk_id=chunk.pk, title=chunk.document.title)
            if relevance == Relevance.RELEVANT:
                relevant.append(item)
            elif relevance == Relevance.NOT_RELEVANT:
                irrelevant.append(item)
            elif relevance == Relevance.PARTLY:
                partly.append(item)
        if not relevant and not judgment.gold_answer.strip():
            continue  # nothing to learn from: no positive passage and no answer
        example_id = f"turn-{turn_id}"
        query = judgment.corrected_query.strip() or turn.retrieval_query
        synthetic = turn.source == Turn.Source.SYNTHETIC
        if synthetic:
            synthetic_ids.add(turn_id)
        examples.append(
            SnapshotExample(
                turn_id=turn_id,
                example_id=example_id,
                split=SnapshotExample.Split.TRAIN if synthetic else split_for(split_key(query), heldout_share=heldout_share),
                query=query,
                question=turn.query if turn.query != query else "",
                history=[{"role": m["role"], "content": m["content"]} for m in turn.history],
                gold_answer=judgment.gold_answer,
                answer_rating=judgment.answer_rating,
                rationale=rationale_by_turn.get(turn_id, ""),
                relevant=relevant,
                irrelevant=irrelevant,
                partly=partly,
                retrieved=retrieved,
                label_ids=label_ids_by_turn.get(turn_id, []),
                failure_tags=list(judgment.failure_tags),
            )
        )
    if not examples:
        raise InvalidInput("No curated turn has a relevant passage or a gold answer yet.")
    latest = DatasetSnapshot.objects.filter(knowledge_base=knowledge_base).order_by("-created_at", "-pk").first()
    if (
        latest is not None
        and latest.heldout_share == heldout_share
        and latest.include_synthetic == include_synthetic
        and latest.split_rule == DatasetSnapshot.SplitRule.QUERY_TEXT
        and latest.personal_data_excluded == len(held)
        and _same_examples(latest, examples)
    ):
        if reuse_identical:
            return latest
        raise SnapshotUnchanged(latest)
    with transaction.atomic():
        snapshot = DatasetSnapshot.objects.create(
            knowledge_base=knowledge_base,
            created_by=created_by,
            heldout_share=heldout_share,
            split_rule=DatasetSnapshot.SplitRule.QUERY_TEXT,
            example_count=len(examples),
            train_count=sum(e.split == SnapshotExample.Split.TRAIN for e in examples),
            heldout_count=sum(e.split == SnapshotExample.Split.HELDOUT for e in examples),
            label_ids=sorted(label.pk for label in labels if label.turn_id in {e.turn_id for e in examples}),
            adjudication_ids=sorted(
                turn_rows[e.turn_id].adjudication.pk for e in examples if hasattr(turn_rows[e.turn_id], "adjudication")
            ),
            curator_ids=sorted({label.curator_id for label in labels}),
            include_synthetic=include_synthetic,
            synthetic_count=sum(e.turn_id in synthetic_ids for e in examples),
            personal_data_excluded=len(held),
        )
        for example in examples:
            example.snapshot = snapshot
        SnapshotExample.objects.bulk_create(examples, batch_size=1000)
    return snapshot


def history_as_served(history) -> list[ChatMessage]:
    """The part of a stored history (dicts or ChatMessages) serving shows the generator: the
    newest whole exchanges within RAGLOOP_CHAT_HISTORY_TOKENS words, system messages aside
    (knowledge.services.turns.answer_compose). Evaluation replays it and training never
    teaches a generator on messages it would not be shown."""
    return history_within_budget(chat_history(history), max_tokens=settings.RAGLOOP_CHAT_HISTORY_TOKENS)


def snapshot_dataset_examples(*, snapshot: DatasetSnapshot, split: str | None = None) -> list[DatasetExample]:
    """The snapshot's examples as rag.datasets.DatasetExample (for exports and trainers)."""
    rows = snapshot.examples.all()
    if split:
        rows = rows.filter(split=split)

    def passages(items: list[dict]) -> list[LabeledPassage]:
        return [LabeledPassage(text=i["text"], document_id=i.get("document_id") or "", chunk_id=i.get("chunk_id"), title=i.get("title") or "") for i in items]

    return [
        DatasetExample(
            example_id=row.example_id,
            query=row.query,
            gold_answer=row.gold_answer,
            relevant=passages(row.relevant),
            irrelevant=passages(row.irrelevant),
            retrieved=passages(row.retrieved),
            rationale=row.rationale,
            question=row.question,
            history=row.history,
            failure_tags=tuple(row.failure_tags),
            partly=passages(row.partly),
        )
        for row in rows
    ]
