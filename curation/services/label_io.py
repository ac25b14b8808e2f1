"""Label import and export: existing relevance judgments (a labels JSONL file, or BEIR queries
plus qrels) become imported turns with curator labels, and labels are written back out as JSONL.

The labels JSONL format (docs/labels-format.md has the full description), one object per line,
one line per label (one curator's judgment of one query):

    {"query_id": "q17",                          optional; names the turn ("import:q17")
     "query": "Does vitamin D prevent fractures?",
     "curator": "alice",                         a username
     "relevant":   [{"document": "d-vitd"}, {"text": "a passage", "title": "optional"}],
     "partly":     [...],                        optional, same items
     "irrelevant": [{"document": "d-coffee", "text": "an exact passage of it"}, "d-sleep"],
     "answer_rating": "correct" | "partly" | "wrong" | "",   optional
     "gold_answer": "...", "rationale": "...",   optional
     "turn_id": 12}                              written by export, ignored by import

A passage item is {"document": <document external id>}, {"text": ...}, or both (a passage of that
document); a bare string is short for {"document": <string>}. A document-only item stands for the
document's whole text. Unknown fields are refused, so a misspelt list is never silently dropped.

Import: lines with the same query_id (or, without one, the same query text) share one turn, an
imported turn (`imported=True`, no model answer) whose passages are the items listed, ranked in
the order they first appear. Each line is submitted as that curator's label with `imported=True`.
The whole input is validated before anything is written, and written in one transaction;
importing the same input again changes nothing (a label is resubmitted only if it differs).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Prefetch

from curation.models import AnswerRating, Label, Membership, PassageJudgment, Relevance
from curation.permissions import CURATOR_GROUP
from curation.services.labels import MAX_TEXT, LabelInput, label_payload, label_submit
from knowledge.errors import InvalidInput
from knowledge.models import Document, KnowledgeBase, RetrievedPassage, Turn
from knowledge.services.turns import (
    MAX_TURNS_PER_BATCH,
    PassageRecord,
    TurnRecord,
    turns_ingest,
)

IMPORT_PREFIX = "import:"
HASHED_QUERY_PREFIX = "query-sha256:"
MAX_QUERY_ID_LENGTH = 255 - len(IMPORT_PREFIX)
MAX_DOCUMENT_ID_LENGTH = 512
MAX_USERNAME_LENGTH = 150
# Passages may be whole documents (a document-only item, or its export), longer than a label's texts.
MAX_PASSAGE_TEXT = 1_000_000
# The file's relevance lists, in the order their items are ranked on a new turn.
RELEVANCE_LISTS = {"relevant": Relevance.RELEVANT, "partly": Relevance.PARTLY, "irrelevant": Relevance.NOT_RELEVANT}
RECORD_FIELDS = {"query_id", "query", "curator", *RELEVANCE_LISTS, "answer_rating", "gold_answer", "rationale", "turn_id"}
ITEM_FIELDS = {"document", "text", "title"}
CONTENT_TYPE = "application/x-ndjson; charset=utf-8"


class LabelFileError(InvalidInput):
    """A problem in an input file; the message names the file and the line."""

    def __init__(self, problem: str, *, origin: str) -> None:
        super().__init__(f"{origin}: {problem}")
        self.origin = origin


@dataclass(frozen=True)
class PassageRef:
    """A judged passage as a file names it: a document, a text, or a passage of a document."""

    document: str = ""
    text: str = ""
    title: str = ""
    origin: str = field(default="", compare=False)  # "file, line N", for error messages


@dataclass(frozen=True)
class LabelRecord:
    """One curator's judgment of one query, parsed from a file and not yet checked against a KB."""

    origin: str
    query: str
    curator: str
    query_id: str | None = None
    judgments: tuple[tuple[PassageRef, str], ...] = ()  # (passage, relevance), in file order
    answer_rating: str = ""
    gold_answer: str = ""
    rationale: str = ""

    @property
    def turn_external_id(self) -> str:
        return import_external_id(query_id=self.query_id, query=self.query)


def import_external_id(*, query_id: str | None, query: str) -> str:
    """The external id of the imported turn for a query: by its id, or by a hash of its text."""
    if query_id is not None:
        return IMPORT_PREFIX + query_id
    return IMPORT_PREFIX + HASHED_QUERY_PREFIX + hashlib.sha256(query.encode("utf-8")).hexdigest()


# --- parsing (no database) ------------------------------------------------------------------


def _origin(filename: str, line: int) -> str:
    return f"{filename}, line {line}"


def _decoded_lines(*, filename: str, data: bytes) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 file, skipping blank lines; a byte order mark is ignored."""
    bom = b"\xef\xbb\xbf" if data.startswith(b"\xef\xbb\xbf") else b""
    try:
        text = data[len(bom) :].decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise LabelFileError(
            f"not valid UTF-8 (byte offset {error.start}); save the file as UTF-8", origin=_origin(filename, line)
        ) from None
    # split("\n"), not splitlines(): a U+2028 inside a JSON string is not a line break.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            yield number, line


def _json_object(line: str, *, origin: str) -> dict:
    try:
        value: Any = json.loads(line)
    except json.JSONDecodeError as error:
        raise LabelFileError(f"not valid JSON ({error.msg} at column {error.colno})", origin=origin) from None
    if not isinstance(value, dict):
        raise LabelFileError(f"expected a JSON object, got {_json_type(value)}", origin=origin)
    return value


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def _text(record: dict, name: str, *, origin: str, required: bool = False, limit: int = MAX_TEXT) -> str:
    value = record.get(name)
    if value is None:
        if required:
            raise LabelFileError(f'"{name}" is missing', origin=origin)
        return ""
    if not isinstance(value, str):
        raise LabelFileError(f'"{name}" must be a string, got {_json_type(value)}', origin=origin)
    if "\x00" in value:
        raise LabelFileError(f'"{name}" contains NUL characters', origin=origin)
    if len(value) > limit:
        raise LabelFileError(f'"{name}" is longer than {limit} characters', origin=origin)
    if required and not value.strip():
        raise LabelFileError(f'"{name}" is empty', origin=origin)
    return value


def _identifier(value: Any, name: str, *, origin: str, limit: int) -> str:
    """A query or document id: a string or an integer (BEIR files have both), not blank."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise LabelFileError(f'"{name}" must be a string or an integer, got {_json_type(value)}', origin=origin)
    identifier = str(value).strip()
    if not identifier:
        raise LabelFileError(f'"{name}" is empty', origin=origin)
    if "\x00" in identifier:
        raise LabelFileError(f'"{name}" contains NUL characters', origin=origin)
    if len(identifier) > limit:
        raise LabelFileError(f'"{name}" is longer than {limit} characters', origin=origin)
    return identifier


def _passage_ref(item: Any, *, list_name: str, origin: str) -> PassageRef:
    where = f'"{list_name}"'
    if isinstance(item, (str, int)) and not isinstance(item, bool):
        document = _identifier(item, f"{list_name} item", origin=origin, limit=MAX_DOCUMENT_ID_LENGTH)
        return PassageRef(document=document, origin=origin)
    if not isinstance(item, dict):
        raise LabelFileError(
            f'{where}: each item must be an object ({{"document": ...}} or {{"text": ...}}) or a document id, '
            f"got {_json_type(item)}",
            origin=origin,
        )
    unknown = sorted(set(item) - ITEM_FIELDS)
    if unknown:
        raise LabelFileError(f'{where}: unknown field "{unknown[0]}" in an item (known: document, text, title)', origin=origin)
    document = ""
    if item.get("document") is not None:
        document = _identifier(item["document"], "document", origin=origin, limit=MAX_DOCUMENT_ID_LENGTH)
    text = _text(item, "text", origin=origin, limit=MAX_PASSAGE_TEXT)
    if not text.strip():
        text = ""  # a blank text adds nothing to a document id
        if not document:
            raise LabelFileError(f'{where}: an item needs a "document" or a non-empty "text"', origin=origin)
    title = _text(item, "title", origin=origin)
    return PassageRef(document=document, text=text, title=title, origin=origin)


def label_record_parse(record: dict, *, origin: str) -> LabelRecord:
    """One line of a labels JSONL file, checked for shape and values."""
    unknown = sorted(set(record) - RECORD_FIELDS)
    if unknown:
        raise LabelFileError(
            f'unknown field "{unknown[0]}" (known: {", ".join(sorted(RECORD_FIELDS))})', origin=origin
        )
    query_id = None
    if record.get("query_id") is not None:
        query_id = _identifier(record["query_id"], "query_id", origin=origin, limit=MAX_QUERY_ID_LENGTH)
    # Texts are kept exactly as written (not stripped), so an export imports to the same passages.
    query = _text(record, "query", origin=origin, required=True)
    curator = _text(record, "curator", origin=origin, required=True, limit=MAX_USERNAME_LENGTH)
    turn_id = record.get("turn_id")
    if turn_id is not None and (isinstance(turn_id, bool) or not isinstance(turn_id, int)):
        raise LabelFileError(f'"turn_id" must be an integer or null, got {_json_type(turn_id)}', origin=origin)
    judgments: list[tuple[PassageRef, str]] = []
    for list_name, relevance in RELEVANCE_LISTS.items():
        items = record.get(list_name)
        if items is None:
            continue
        if not isinstance(items, list):
            raise LabelFileError(f'"{list_name}" must be a list, got {_json_type(items)}', origin=origin)
        judgments.extend((_passage_ref(item, list_name=list_name, origin=origin), relevance) for item in items)
    rating = _text(record, "answer_rating", origin=origin)
    if rating and rating not in AnswerRating.values:
        raise LabelFileError(
            f'"answer_rating": {rating!r} is not one of {", ".join(AnswerRating.values)} (or empty)', origin=origin
        )
    gold_answer = _text(record, "gold_answer", origin=origin)
    if not judgments and not rating and not gold_answer.strip():
        raise LabelFileError("nothing to import: no judged passage, answer rating or gold answer", origin=origin)
    return LabelRecord(
        origin=origin,
        query=query,
        curator=curator,
        query_id=query_id,
        judgments=tuple(judgments),
        answer_rating=rating,
        gold_answer=gold_answer,
        rationale=_text(record, "rationale", origin=origin),
    )


def label_records_parse(*, filename: str, data: bytes) -> list[LabelRecord]:
    """Every line of a labels JSONL file; LabelFileError names the first bad line."""
    records = [
        label_record_parse(_json_object(line, origin=_origin(filename, number)), origin=_origin(filename, number))
        for number, line in _decoded_lines(filename=filename, data=data)
    ]
    if not records:
        raise LabelFileError("is empty (no JSON lines)", origin=filename)
    return records


def beir_records_parse(
    *, queries_filename: str, queries_data: bytes, qrels_filename: str, qrels_data: bytes, curator: str
) -> list[LabelRecord]:
    """BEIR queries (JSONL: "_id", "text") and qrels (TSV: query-id, corpus-id, score, with or
    without the header) as one label per judged query, in qrels order. A score above 0 is
    relevant and 0 is judged not relevant; any other score is refused."""
    if not curator.strip():
        raise InvalidInput("BEIR judgments need a curator to file them under.")
    queries: dict[str, tuple[str, str]] = {}  # id -> (text, origin)
    for number, line in _decoded_lines(filename=queries_filename, data=queries_data):
        origin = _origin(queries_filename, number)
        row = _json_object(line, origin=origin)
        if "_id" not in row:
            raise LabelFileError('missing the query id "_id"', origin=origin)
        query_id = _identifier(row["_id"], "_id", origin=origin, limit=MAX_QUERY_ID_LENGTH)
        text = _text(row, "text", origin=origin, required=True)
        if query_id in queries:
            raise LabelFileError(f"query id {query_id!r} appears twice (first on {queries[query_id][1]})", origin=origin)
        queries[query_id] = (text, origin)

    judged: dict[str, list[tuple[PassageRef, str]]] = {}
    first_line: dict[str, str] = {}
    seen_pairs: dict[tuple[str, str], str] = {}
    for number, line in _decoded_lines(filename=qrels_filename, data=qrels_data):
        origin = _origin(qrels_filename, number)
        columns = line.split("\t") if "\t" in line else line.split()
        if len(columns) != 3:
            raise LabelFileError(
                f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(columns)}", origin=origin
            )
        query_id, document_id, score_text = (c.strip() for c in columns)
        if not judged and not first_line and score_text.lower() == "score":
            continue  # the header
        try:
            score = int(score_text)
        except ValueError:
            raise LabelFileError(f"score {score_text!r} is not an integer", origin=origin) from None
        if score < 0:
            raise LabelFileError(
                f"unknown relevance value {score} (BEIR scores: 0 = not relevant, above 0 = relevant)", origin=origin
            )
        query_id = _identifier(query_id, "query-id", origin=origin, limit=MAX_QUERY_ID_LENGTH)
        document_id = _identifier(document_id, "corpus-id", origin=origin, limit=MAX_DOCUMENT_ID_LENGTH)
        if query_id not in queries:
            raise LabelFileError(f"query {query_id!r} is not in {queries_filename}", origin=origin)
        if (query_id, document_id) in seen_pairs:
            first = seen_pairs[query_id, document_id]
            raise LabelFileError(
                f"query {query_id!r} and document {document_id!r} are judged twice (first on {first})", origin=origin
            )
        seen_pairs[query_id, document_id] = origin
        first_line.setdefault(query_id, origin)
        relevance = Relevance.RELEVANT if score > 0 else Relevance.NOT_RELEVANT
        judged.setdefault(query_id, []).append((PassageRef(document=document_id, origin=origin), relevance))
    if not judged:
        raise LabelFileError("has no judgments", origin=qrels_filename)
    return [
        LabelRecord(
            origin=first_line[query_id], query=queries[query_id][0], curator=curator, query_id=query_id,
            judgments=tuple(judgments),
        )
        for query_id, judgments in judged.items()
    ]


# --- import ---------------------------------------------------------------------------------


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
    *, records: list[LabelRecord], documents: dict[str, Document], skip_missing: bool, result: LabelImportResult
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
            passage = _Passage(
                document_external_id=ref.document,
                text=ref.text or document.text,
                title=ref.title or (document.title if document is not None else ""),
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


def _describe(passage: _Passage) -> str:
    if passage.document_external_id:
        return f"document {passage.document_external_id!r}"
    return f"text {passage.text[:40]!r}"


def _check_consistency(resolved: list[tuple[LabelRecord, list]]) -> None:
    """Lines of one turn must agree on its query; a curator judges each turn at most once."""
    queries: dict[str, LabelRecord] = {}
    labels: dict[tuple[str, str], str] = {}
    for record, _ in resolved:
        first = queries.setdefault(record.turn_external_id, record)
        if first.query != record.query:
            raise LabelFileError(
                f"query_id {record.query_id!r} has another query here than on {first.origin}", origin=record.origin
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
    result = LabelImportResult()
    with transaction.atomic():
        # One import (or ingest) per knowledge base at a time, so two runs of one file cannot
        # both create a turn or a label; the checks below read under this lock.
        KnowledgeBase.objects.select_for_update().get(pk=knowledge_base.pk)
        documents = _documents_for(knowledge_base=knowledge_base, records=records)
        resolved = _resolve(records=records, documents=documents, skip_missing=skip_missing, result=result)
        _check_consistency(resolved)
        if not resolved:
            return result

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
        first_origin: dict[str, str] = {}
        for record, _ in resolved:
            first_origin.setdefault(record.curator, record.origin)
        curators = _curators(knowledge_base=knowledge_base, first_origin=first_origin, create=create_curators, result=result)

        # Every turn's passages: the items of its lines, in the order they first appear.
        passages_by_turn: dict[str, dict[tuple[str, str], _Passage]] = {}
        queries: dict[str, str] = {}
        for record, passages in resolved:
            queries.setdefault(record.turn_external_id, record.query)
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
            ).prefetch_related("passage_judgments")
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
            )
            if label is not None and label_payload(label) == _payload(data):
                result.labels_unchanged += 1
                continue
            label_submit(turn=turn, curator=curator, data=data, imported=True)
            if label is None:
                result.labels_created += 1
            else:
                result.labels_updated += 1
    return result


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
        "skipped": False,
        "skip_reason": "",
    }


# --- export ---------------------------------------------------------------------------------


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
    return {
        "turn_id": turn.pk,
        "query_id": _query_id(turn),
        "query": turn.query,
        "curator": label.curator.get_username(),
        **lists,
        "answer_rating": label.answer_rating,
        "gold_answer": label.gold_answer,
        "rationale": label.rationale,
    }


def labels_export(*, knowledge_base: KnowledgeBase, curator=None, chunk_size: int = 500) -> Iterator[dict]:
    """The knowledge base's submitted (not skipped) labels as records of the labels format, by
    turn and then curator; streamed, so a large knowledge base is never held in memory."""
    labels = (
        Label.objects.filter(turn__knowledge_base=knowledge_base, skipped=False)
        .select_related("turn", "curator")
        .prefetch_related(
            Prefetch(
                "passage_judgments",
                queryset=PassageJudgment.objects.select_related("retrieved_passage__document", "document"),
            )
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
