"""Label export: a knowledge base's submitted labels as records of the labels JSONL format,
streamed, and the JSONL line each record is written as."""

from __future__ import annotations

import json
from collections.abc import Iterator

from django.db.models import Prefetch

from curation.models import Label, PassageJudgment
from curation.services.label_io.records import (
    IMPORT_PREFIX,
    RELEVANCE_LISTS,
    import_external_id,
)
from knowledge.models import Document, KnowledgeBase, Turn
from knowledge.services.audit import audit_record

CONTENT_TYPE = "application/x-ndjson; charset=utf-8"


def _query_id(turn: Turn) -> str | None:
    """The id to write for a turn: its external id, without the import prefix; none for a
    served turn or one imported by the hash of its query (a re-import hashes the query again)."""
    external_id = turn.external_id
    if not external_id:
        return None
    if not external_id.startswith(IMPORT_PREFIX):
        return external_id
    if external_id == import_external_id(query_id=None, query=turn.query):
        return None
    return external_id[len(IMPORT_PREFIX) :]


def _item(*, document: Document | None, title: str, text: str) -> dict:
    item: dict[str, str] = {}
    if document is not None:
        item["document"] = document.external_id
    if title:
        item["title"] = title
    item["text"] = text
    return item


def label_record(label: Label) -> dict:
    """A label as one JSON object of the labels format (its judgments prefetched)."""
    lists: dict[str, list[dict]] = {name: [] for name in RELEVANCE_LISTS}
    list_of = {relevance: name for name, relevance in RELEVANCE_LISTS.items()}
    judgments = sorted(
        label.passage_judgments.all(),
        key=lambda j: (0, j.retrieved_passage.rank, j.pk) if j.retrieved_passage_id else (1, 0, j.pk),
    )
    seen: set[tuple[str, str]] = set()
    for judgment in judgments:
        if judgment.retrieved_passage_id:
            passage = judgment.retrieved_passage
            item = _item(document=passage.document, title=passage.title, text=passage.text)
        else:
            document = judgment.document
            item = _item(document=document, title=document.title if document else "", text=judgment.text)
        key = (item.get("document", ""), item["text"])
        if key in seen:  # two retrieved passages with the same text: one item, as an import keys them
            continue
        seen.add(key)
        lists[list_of[judgment.relevance]].append(item)
    turn = label.turn
    record = {
        "turn_id": turn.pk,
        "query_id": _query_id(turn),
        "query": turn.query,
        "curator": label.curator.get_username(),
        **lists,
        "answer_rating": label.answer_rating,
        "gold_answer": label.gold_answer,
        "rationale": label.rationale,
    }
    if turn.rewritten_query:
        # Only for a follow-up retrieval saw rewritten: other lines stay as they were, so
        # files without conversations still import into an older installation.
        record.update(
            rewritten_query=turn.rewritten_query,
            rewrite_wrong=label.rewrite_wrong,
            corrected_query=label.corrected_query,
        )
    failure_tags = [tag.slug for tag in label.failure_tags.all()]
    if failure_tags:  # as for the rewrite verdict: untagged lines stay as older installations read them
        record["failure_tags"] = failure_tags
    return record


def labels_export(*, knowledge_base: KnowledgeBase, curator=None, chunk_size: int = 500) -> Iterator[dict]:
    """The knowledge base's submitted (not skipped) labels as records of the labels format, by
    turn and then curator; streamed, so a large knowledge base is never held in memory.

    Recorded in the audit log when called (the data is on its way out), not when the stream ends."""
    audit_record(
        action="labels.export", object_type="knowledge_base", object_id=knowledge_base.pk, knowledge_base=knowledge_base,
        after={"curator": curator.get_username() if curator is not None else None},
    )
    return _labels_export(knowledge_base=knowledge_base, curator=curator, chunk_size=chunk_size)


def _labels_export(*, knowledge_base: KnowledgeBase, curator, chunk_size: int) -> Iterator[dict]:
    labels = (
        Label.objects.filter(turn__knowledge_base=knowledge_base, skipped=False)
        .select_related("turn", "curator")
        .defer("turn__history")  # a conversation's messages: not in the file, and can be long
        .prefetch_related(
            Prefetch(
                "passage_judgments",
                queryset=PassageJudgment.objects.select_related("retrieved_passage__document", "document"),
            ),
            "failure_tags",
        )
        .order_by("turn_id", "curator__username")
    )
    if curator is not None:
        labels = labels.filter(curator=curator)
    for label in labels.iterator(chunk_size=chunk_size):
        yield label_record(label)


def label_record_line(record: dict) -> str:
    """One JSONL line (UTF-8 text, not ASCII escapes: curators' answers are often not English)."""
    return json.dumps(record, ensure_ascii=False) + "\n"
