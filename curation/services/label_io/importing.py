"""Label import: LabelRecords checked against a knowledge base and written, all or nothing, as
imported turns with curator labels."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction

from curation.models import FailureTag, Label, Membership
from curation.permissions import CURATOR_GROUP
from curation.services.label_io.records import LabelFileError, LabelRecord
from curation.services.labels import LabelInput, label_input_scrubbed, label_payload, label_submit
from curation.signals import labels_finalised_send_on_commit
from knowledge.errors import InvalidInput
from knowledge.models import Document, KnowledgeBase, RetrievedPassage, Turn
from knowledge.services.audit import audit_record
from knowledge.services.personal_data import PersonalDataScrubber
from knowledge.services.turns import (
    MAX_TURNS_PER_BATCH,
    PassageRecord,
    TurnRecord,
    turns_ingest,
)


@dataclass
class LabelImportResult:
    turns_created: int = 0
    turns_existing: int = 0
    passages_added: int = 0
    labels_created: int = 0
    labels_updated: int = 0
    labels_unchanged: int = 0
    curators_created: list[str] = field(default_factory=list)
    # With skip_missing: (where, document id) of each item left out, and the lines left with
    # nothing to import once those were left out.
    skipped_documents: list[tuple[str, str]] = field(default_factory=list)
    skipped_records: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "turns_created": self.turns_created,
            "turns_existing": self.turns_existing,
            "passages_added": self.passages_added,
            "labels_created": self.labels_created,
            "labels_updated": self.labels_updated,
            "labels_unchanged": self.labels_unchanged,
            "curators_created": self.curators_created,
            "skipped_documents": [{"where": where, "document": document} for where, document in self.skipped_documents],
            "skipped_records": self.skipped_records,
        }


@dataclass(frozen=True)
class _Passage:
    """A passage resolved against the knowledge base: what a RetrievedPassage row will hold."""

    document_external_id: str
    text: str
    title: str = field(compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return self.document_external_id, self.text


def _documents_for(*, knowledge_base: KnowledgeBase, records: list[LabelRecord]) -> dict[str, Document]:
    wanted = {ref.document for record in records for ref, _ in record.judgments if ref.document}
    return {
        document.external_id: document
        for document in Document.objects.filter(knowledge_base=knowledge_base, external_id__in=wanted).only(
            "external_id", "title", "text"
        )
    }


def _resolve(
    *,
    records: list[LabelRecord],
    documents: dict[str, Document],
    skip_missing: bool,
    result: LabelImportResult,
    scrubber: PersonalDataScrubber,
) -> list[tuple[LabelRecord, list[tuple[_Passage, str]]]]:
    missing = [
        (ref.origin, ref.document)
        for record in records
        for ref, _ in record.judgments
        if ref.document and ref.document not in documents
    ]
    if missing and not skip_missing:
        shown = "; ".join(f"{document!r} ({where})" for where, document in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise InvalidInput(
            f"{len(missing)} judged document(s) are not in the knowledge base: {shown}{more}. "
            "Ingest them first, or leave them out (--skip-missing)."
        )
    result.skipped_documents = missing
    resolved = []
    for record in records:
        passages: list[tuple[_Passage, str]] = []
        seen: set[tuple[str, str]] = set()
        for ref, relevance in record.judgments:
            if ref.document and ref.document not in documents:
                continue
            document = documents.get(ref.document)
            # As turns_ingest will store the copy (redacted under redact and reject), so the
            # stored passage is found again by this key.
            passage = _Passage(
                document_external_id=ref.document,
                text=scrubber.produced(ref.text or document.text),
                title=scrubber.produced(ref.title or (document.title if document is not None else "")),
            )
            if passage.key in seen:
                raise LabelFileError(f"the same passage is listed twice ({_describe(passage)})", origin=record.origin)
            seen.add(passage.key)
            passages.append((passage, relevance))
        if not passages and not record.answer_rating and not record.gold_answer.strip():
            result.skipped_records.append(record.origin)  # only possible when its documents were skipped
            continue
        resolved.append((record, passages))
    return resolved


def _records_scrubbed(*, knowledge_base: KnowledgeBase, records: list[LabelRecord]) -> list[LabelRecord]:
    """The records' queries as the imported turns are to store them under the knowledge base's
    personal-data mode (PersonalDataRejected, a 422 naming the lines, under reject), before
    anything is keyed on them: a query without a query_id is found again by a hash of its stored
    text, so a re-import of the same file finds the redacted turn instead of clashing with it.
    The labels' own texts are checked by label_submit; passage copies in `_resolve`."""
    scrubber = PersonalDataScrubber.for_knowledge_base(knowledge_base)
    if not scrubber.active:
        return records
    scrubbed = [
        replace(
            record,
            query=scrubber.written(record.query, where=f"{record.origin} query"),
            rewritten_query=None if record.rewritten_query is None else scrubber.produced(record.rewritten_query),
        )
        for record in records
    ]
    scrubber.raise_if_rejected()
    return scrubbed


def _describe(passage: _Passage) -> str:
    if passage.document_external_id:
        return f"document {passage.document_external_id!r}"
    return f"text {passage.text[:40]!r}"


def _check_consistency(resolved: list[tuple[LabelRecord, list]]) -> None:
    """Lines of one turn must agree on its query (and on its rewritten query, where they give
    one); a curator judges each turn at most once."""
    queries: dict[str, LabelRecord] = {}
    rewrites: dict[str, LabelRecord] = {}
    labels: dict[tuple[str, str], str] = {}
    for record, _ in resolved:
        first = queries.setdefault(record.turn_external_id, record)
        if first.query != record.query:
            raise LabelFileError(
                f"query_id {record.query_id!r} has another query here than on {first.origin}", origin=record.origin
            )
        if record.rewritten_query is not None:
            first = rewrites.setdefault(record.turn_external_id, record)
            if first.rewritten_query != record.rewritten_query:
                raise LabelFileError(
                    f"this query has another rewritten_query here than on {first.origin}", origin=record.origin
                )
        key = (record.turn_external_id, record.curator)
        if key in labels:
            raise LabelFileError(
                f"curator {record.curator!r} judges this query twice (first on {labels[key]})", origin=record.origin
            )
        labels[key] = record.origin


def _curators(
    *, knowledge_base: KnowledgeBase, first_origin: dict[str, str], create: bool, result: LabelImportResult
) -> dict[str, Any]:
    """The users named in the input (username -> user), by the line that first names them."""
    usernames = list(first_origin)
    User = get_user_model()
    users = {user.username: user for user in User.objects.filter(username__in=usernames)}
    missing = [name for name in usernames if name not in users]
    if missing and not create:
        shown = ", ".join(f"{name!r} ({first_origin[name]})" for name in missing[:10])
        raise InvalidInput(
            f"Unknown curator(s): {shown}. Create the users first, or let the import create them (--create-curators)."
        )
    if missing:
        username_field = User._meta.get_field(User.USERNAME_FIELD)
        for name in missing:
            try:
                username_field.run_validators(name)
            except ValidationError as error:
                raise LabelFileError(
                    f"cannot create curator {name!r}: {' '.join(error.messages)}", origin=first_origin[name]
                ) from None
        group = Group.objects.get(name=CURATOR_GROUP)
        for name in missing:
            # No usable password: an admin sets one (or invites the person) before they log in.
            user = User.objects.create_user(username=name, password=None)
            user.groups.add(group)
            Membership.objects.get_or_create(knowledge_base=knowledge_base, user=user)
            users[name] = user
        result.curators_created = missing
    return users


def labels_import(
    *,
    knowledge_base: KnowledgeBase,
    records: list[LabelRecord],
    create_curators: bool = False,
    skip_missing: bool = False,
) -> LabelImportResult:
    """Create the imported turns and submit the labels of `records`; all or nothing.

    InvalidInput (a LabelFileError where a line is to blame) is raised before anything is
    written: unknown curators, documents missing from the knowledge base, two lines of one
    query with different texts, a curator judging a query twice, a clash with a turn that was
    not imported.
    """
    if not records:
        raise InvalidInput("Nothing to import.")
    records = _records_scrubbed(knowledge_base=knowledge_base, records=records)
    result = LabelImportResult()
    with transaction.atomic():
        # One import (or ingest) per knowledge base at a time, so two runs of one file cannot
        # both create a turn or a label; the checks below read under this lock.
        KnowledgeBase.objects.select_for_update().get(pk=knowledge_base.pk)
        documents = _documents_for(knowledge_base=knowledge_base, records=records)
        scrubber = PersonalDataScrubber.for_knowledge_base(knowledge_base)
        resolved = _resolve(
            records=records, documents=documents, skip_missing=skip_missing, result=result, scrubber=scrubber
        )
        _check_consistency(resolved)
        if not resolved:
            return result
        tag_order = _check_failure_tags(knowledge_base=knowledge_base, resolved=resolved)

        external_ids = list(dict.fromkeys(record.turn_external_id for record, _ in resolved))
        existing = {t.external_id: t for t in Turn.objects.filter(knowledge_base=knowledge_base, external_id__in=external_ids)}
        for record, _ in resolved:
            turn = existing.get(record.turn_external_id)
            if turn is None:
                continue
            if not turn.imported:
                raise LabelFileError(
                    f"turn {turn.external_id!r} exists in {knowledge_base.slug!r} and was not imported; "
                    "give this query another query_id",
                    origin=record.origin,
                )
            if turn.query != record.query:
                raise LabelFileError(
                    f"turn {turn.external_id!r} was imported earlier with another query text", origin=record.origin
                )
            if record.rewritten_query is not None and turn.rewritten_query != record.rewritten_query:
                raise LabelFileError(
                    f"turn {turn.external_id!r} was imported earlier with another rewritten_query", origin=record.origin
                )
        first_origin: dict[str, str] = {}
        for record, _ in resolved:
            first_origin.setdefault(record.curator, record.origin)
        curators = _curators(knowledge_base=knowledge_base, first_origin=first_origin, create=create_curators, result=result)

        # Every turn's passages: the items of its lines, in the order they first appear.
        passages_by_turn: dict[str, dict[tuple[str, str], _Passage]] = {}
        queries: dict[str, str] = {}
        rewrites: dict[str, str] = {}
        for record, passages in resolved:
            queries.setdefault(record.turn_external_id, record.query)
            if record.rewritten_query:
                rewrites.setdefault(record.turn_external_id, record.rewritten_query)
            bucket = passages_by_turn.setdefault(record.turn_external_id, {})
            for passage, _ in passages:
                bucket.setdefault(passage.key, passage)

        new_ids = [e for e in external_ids if e not in existing]
        result.turns_existing = len(external_ids) - len(new_ids)
        created: dict[str, int] = {}
        for start in range(0, len(new_ids), MAX_TURNS_PER_BATCH):
            batch = [
                TurnRecord(
                    external_id=external_id,
                    query=queries[external_id],
                    # A follow-up's rewrite is part of the turn, as its query is: the labels'
                    # rewrite verdict judges it.
                    rewritten_query=rewrites.get(external_id, ""),
                    # source_id links the passage to the document, as for any ingested turn.
                    passages=[
                        PassageRecord(text=p.text, source_id=p.document_external_id, title=p.title)
                        for p in passages_by_turn[external_id].values()
                    ],
                )
                for external_id in new_ids[start : start + MAX_TURNS_PER_BATCH]
            ]
            created.update(turns_ingest(knowledge_base=knowledge_base, records=batch).created)
        Turn.objects.filter(pk__in=created.values()).update(imported=True)
        result.turns_created = len(created)
        result.passages_added = sum(len(passages_by_turn[e]) for e in created)
        turn_ids = {**{e: t.pk for e, t in existing.items()}, **created}

        stored = _stored_passages(turn_ids=list(turn_ids.values()))
        # A re-import with passages an earlier import did not have: append them to the turn.
        appended = []
        for external_id, turn in existing.items():
            have = stored.get(turn.pk, {})
            rank = max((rank for _, rank in have.values()), default=0)
            for key, passage in passages_by_turn[external_id].items():
                if key not in have:
                    rank += 1
                    appended.append(RetrievedPassage(
                        turn=turn, rank=rank, document_id=documents[key[0]].pk if key[0] else None,
                        source_id=key[0], title=passage.title, text=passage.text,
                    ))
        if appended:
            RetrievedPassage.objects.bulk_create(appended)
            result.passages_added += len(appended)
            stored = _stored_passages(turn_ids=list(turn_ids.values()))

        labels = {
            (label.turn_id, label.curator_id): label
            for label in Label.objects.filter(
                turn_id__in=turn_ids.values(), curator__in=curators.values()
            ).prefetch_related("passage_judgments", "failure_tags")
        }
        turns = Turn.objects.select_related("knowledge_base").in_bulk(turn_ids.values())
        for record, passages in resolved:
            turn = turns[turn_ids[record.turn_external_id]]
            curator = curators[record.curator]
            label = labels.get((turn.pk, curator.pk))
            data = LabelInput(
                passages={stored[turn.pk][p.key][0]: relevance for p, relevance in passages},
                answer_rating=record.answer_rating,
                gold_answer=record.gold_answer,
                rationale=record.rationale,
                # Not in the file: what the curator set in the workbench stays.
                has_personal_data=label.has_personal_data if label else False,
                comment=label.comment if label else "",
                # An older file (no rewrite fields) keeps the stored verdict too.
                rewrite_wrong=_given(record.rewrite_wrong, label.rewrite_wrong if label else False),
                corrected_query=_given(record.corrected_query, label.corrected_query if label else ""),
                failure_tags=tuple(
                    sorted(
                        _given(record.failure_tags, [t.slug for t in label.failure_tags.all()] if label else []),
                        key=tag_order.__getitem__,
                    )
                ),
            )
            # Compared as it would be stored (redacted under the personal-data mode), so an
            # unchanged line of a re-imported file counts as unchanged.
            data = label_input_scrubbed(knowledge_base=knowledge_base, data=data)
            if label is not None and label_payload(label) == _payload(data):
                result.labels_unchanged += 1
                continue
            label_submit(turn=turn, curator=curator, data=data, imported=True)
            if label is None:
                result.labels_created += 1
            else:
                result.labels_updated += 1
        if result.labels_created or result.labels_updated:
            labels_finalised_send_on_commit(knowledge_base.pk)
        audit_record(
            action="label.import", object_type="knowledge_base", object_id=knowledge_base.pk, knowledge_base=knowledge_base,
            after={
                "records": len(records), "turns_created": result.turns_created, "labels_created": result.labels_created,
                "labels_updated": result.labels_updated, "labels_unchanged": result.labels_unchanged,
                "curators_created": result.curators_created,
            },
        )  # fmt: skip
    return result


def _check_failure_tags(*, knowledge_base: KnowledgeBase, resolved) -> dict[str, tuple[int, int]]:
    """Every failure tag slug of the input must be one of the knowledge base's tags (retired
    ones too: an export of old labels carries them); refused before anything is written.
    Returns slug -> picker order of the knowledge base's tags."""
    order = {
        slug: (position, pk)
        for slug, position, pk in FailureTag.objects.filter(knowledge_base=knowledge_base).values_list("slug", "position", "pk")
    }
    for record, _ in resolved:
        for slug in record.failure_tags or ():
            if slug not in order:
                raise LabelFileError(
                    f'"failure_tags": {slug!r} is not a failure tag of {knowledge_base.slug!r} '
                    f"(known: {', '.join(sorted(order, key=order.__getitem__))}); an admin can add it first",
                    origin=record.origin,
                )
    return order


def _given(value, stored):
    return stored if value is None else value


def _stored_passages(*, turn_ids: list[int]) -> dict[int, dict[tuple[str, str], tuple[int, int]]]:
    """turn id -> {(document external id or "", text): (passage id, rank)}."""
    stored: dict[int, dict[tuple[str, str], tuple[int, int]]] = {}
    rows = RetrievedPassage.objects.filter(turn_id__in=turn_ids).order_by("turn_id", "rank")
    for turn_id, pk, rank, document, text in rows.values_list("turn_id", "pk", "rank", "document__external_id", "text"):
        stored.setdefault(turn_id, {}).setdefault((document or "", text), (pk, rank))
    return stored


def _payload(data: LabelInput) -> dict:
    """The payload `label_payload` would return for a label submitted from `data`."""
    return {
        "passages": {str(pk): relevance for pk, relevance in data.passages.items()},
        "attached": [],
        "answer_rating": data.answer_rating,
        "gold_answer": data.gold_answer,
        "rationale": data.rationale,
        "has_personal_data": data.has_personal_data,
        "comment": data.comment,
        "rewrite_wrong": data.rewrite_wrong,
        "corrected_query": data.corrected_query,
        "skipped": False,
        "skip_reason": "",
        "failure_tags": list(data.failure_tags),
    }
