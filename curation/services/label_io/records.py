"""The label file formats and their validation: the labels JSONL format and BEIR queries plus
qrels, parsed into LabelRecords without touching the database."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from curation.models import AnswerRating, Relevance
from curation.services.labels import MAX_TEXT
from knowledge.errors import InvalidInput

IMPORT_PREFIX = "import:"
HASHED_QUERY_PREFIX = "query-sha256:"
MAX_QUERY_ID_LENGTH = 255 - len(IMPORT_PREFIX)
MAX_DOCUMENT_ID_LENGTH = 512
MAX_USERNAME_LENGTH = 150
# Passages may be whole documents (a document-only item, or its export), longer than a label's texts.
MAX_PASSAGE_TEXT = 1_000_000
# The file's relevance lists, in the order their items are ranked on a new turn.
RELEVANCE_LISTS = {"relevant": Relevance.RELEVANT, "partly": Relevance.PARTLY, "irrelevant": Relevance.NOT_RELEVANT}
# The rewrite verdict of a follow-up question (optional; written only for a rewritten turn).
REWRITE_FIELDS = ("rewritten_query", "rewrite_wrong", "corrected_query")
RECORD_FIELDS = {
    "query_id", "query", "curator", *RELEVANCE_LISTS, "answer_rating", "gold_answer", "rationale", *REWRITE_FIELDS,
    "failure_tags", "turn_id",
}
MAX_FAILURE_TAGS = 50
ITEM_FIELDS = {"document", "text", "title"}


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
    # None: the line does not say (an older file), so an import keeps what is stored.
    rewritten_query: str | None = None
    rewrite_wrong: bool | None = None
    corrected_query: str | None = None
    # Slugs of the knowledge base's failure tags; None: the line does not say (kept as stored).
    failure_tags: tuple[str, ...] | None = None

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
    rewritten_query, rewrite_wrong, corrected_query = _rewrite_verdict(record, origin=origin)
    return LabelRecord(
        origin=origin,
        query=query,
        curator=curator,
        query_id=query_id,
        judgments=tuple(judgments),
        answer_rating=rating,
        gold_answer=gold_answer,
        rationale=_text(record, "rationale", origin=origin),
        rewritten_query=rewritten_query,
        rewrite_wrong=rewrite_wrong,
        corrected_query=corrected_query,
        failure_tags=_failure_tags(record, origin=origin),
    )


def _failure_tags(record: dict, *, origin: str) -> tuple[str, ...] | None:
    """The line's failure tag slugs (checked against the knowledge base on import)."""
    tags = record.get("failure_tags")
    if tags is None:
        return None
    if not isinstance(tags, list):
        raise LabelFileError(f'"failure_tags" must be a list of tag slugs, got {_json_type(tags)}', origin=origin)
    if len(tags) > MAX_FAILURE_TAGS:
        raise LabelFileError(f'"failure_tags" lists more than {MAX_FAILURE_TAGS} tags', origin=origin)
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip() or "\x00" in tag or len(tag) > 50:
            raise LabelFileError(f'"failure_tags": {tag!r} is not a tag slug', origin=origin)
    return tuple(dict.fromkeys(tags))


def _rewrite_verdict(record: dict, *, origin: str) -> tuple[str | None, bool | None, str | None]:
    """(rewritten_query, rewrite_wrong, corrected_query) of a line, None where it is absent; the
    same rules as a submit from the workbench (curation.services.labels), checked per line."""
    rewritten_query = None if record.get("rewritten_query") is None else _text(record, "rewritten_query", origin=origin)
    rewrite_wrong = record.get("rewrite_wrong")
    if rewrite_wrong is not None and not isinstance(rewrite_wrong, bool):
        raise LabelFileError(f'"rewrite_wrong" must be true, false or null, got {_json_type(rewrite_wrong)}', origin=origin)
    corrected_query = None if record.get("corrected_query") is None else _text(record, "corrected_query", origin=origin)
    if rewrite_wrong or corrected_query:
        if not (rewritten_query or "").strip():
            raise LabelFileError(
                '"rewrite_wrong" and "corrected_query" judge the turn\'s "rewritten_query", which this line lacks',
                origin=origin,
            )
        if corrected_query and not corrected_query.strip():
            raise LabelFileError('"corrected_query" is blank (leave it empty or write the better query)', origin=origin)
        if corrected_query and not rewrite_wrong:
            raise LabelFileError('"corrected_query" needs "rewrite_wrong": true', origin=origin)
    return rewritten_query, rewrite_wrong, corrected_query


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
