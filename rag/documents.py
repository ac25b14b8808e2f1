"""Parse uploaded files and folders (JSONL, text, Markdown, PDF) into source documents.

Parsing is all-or-nothing: a file with any problem raises DocumentParseError naming the
file (and line), so a knowledge base never receives half an upload.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

SUPPORTED_SUFFIXES = (".jsonl", ".txt", ".md", ".markdown", ".pdf")

_MARKDOWN_SUFFIXES = (".md", ".markdown")
_MARKDOWN_TITLE = re.compile(r"^#[ \t]+(?P<title>.+?)(?:[ \t]+#+)?[ \t]*$")
_CODE_FENCE = re.compile(r"^[ \t]*(```|~~~)")


# The length of Document.external_id in the database; longer ids are refused here, by name.
MAX_EXTERNAL_ID_LENGTH = 512


@dataclass(frozen=True)
class SourceDocument:
    """One document of a knowledge base as found in an uploaded file."""

    external_id: str
    title: str
    text: str
    metadata: dict = field(default_factory=dict)


class DocumentParseError(ValueError):
    """An uploaded file cannot be turned into documents; the message is safe to show a user."""

    def __init__(self, problem: str, *, filename: str, line: int | None = None) -> None:
        self.problem = problem
        self.filename = filename
        self.line = line
        where = f"{filename}, line {line}" if line is not None else filename
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple:
        # The keyword-only constructor defeats Exception's default pickling, which Celery
        # and multiprocessing rely on to hand the error back to the caller.
        return (_rebuild_parse_error, (self.problem, self.filename, self.line))


def _rebuild_parse_error(problem: str, filename: str, line: int | None) -> DocumentParseError:
    return DocumentParseError(problem, filename=filename, line=line)


def parse_upload(*, filename: str, data: bytes) -> list[SourceDocument]:
    """Parse one uploaded file; the suffix of `filename` decides the format."""
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix == ".jsonl":
        documents = _parse_jsonl(filename=filename, data=data)
    elif suffix == ".txt":
        text = _decode_text(filename=filename, data=data)
        documents = [_file_document(filename=filename, title=_stem(filename), text=text)]
    elif suffix in _MARKDOWN_SUFFIXES:
        text = _decode_text(filename=filename, data=data)
        title = _markdown_title(text) or _stem(filename)
        documents = [_file_document(filename=filename, title=title, text=text)]
    elif suffix == ".pdf":
        documents = [_parse_pdf(filename=filename, data=data)]
    else:
        supported = ", ".join(SUPPORTED_SUFFIXES)
        raise DocumentParseError(
            f"unsupported file type {suffix or '(no suffix)'!r}; supported: {supported}",
            filename=filename,
        )
    return documents


def parse_path(path: Path) -> list[SourceDocument]:
    """Parse a file, or every supported non-hidden file under a folder in path order."""
    path = Path(path)
    if path.is_file():
        return parse_upload(filename=path.name, data=path.read_bytes())
    if not path.is_dir():
        raise DocumentParseError("no such file or folder", filename=str(path))

    relative_paths = sorted(
        (
            candidate.relative_to(path).as_posix()
            for candidate in path.rglob("*")
            if candidate.is_file()
            and candidate.suffix.lower() in SUPPORTED_SUFFIXES
            and not any(part.startswith(".") for part in candidate.relative_to(path).parts)
        ),
    )
    if not relative_paths:
        supported = ", ".join(SUPPORTED_SUFFIXES)
        raise DocumentParseError(f"folder has no supported files ({supported})", filename=str(path))

    documents: list[SourceDocument] = []
    file_of_external_id: dict[str, str] = {}
    for relative_path in relative_paths:
        for document in parse_upload(filename=relative_path, data=(path / relative_path).read_bytes()):
            first_file = file_of_external_id.setdefault(document.external_id, relative_path)
            if first_file != relative_path:
                raise DocumentParseError(
                    f"duplicate document id {document.external_id!r} (also in {first_file})",
                    filename=relative_path,
                )
            documents.append(document)
    return documents


def content_hash(document: SourceDocument) -> str:
    """Fingerprint of what a document says, so re-ingesting an unchanged document is a no-op."""
    canonical = json.dumps(
        {"title": document.title, "text": document.text, "metadata": document.metadata},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _decode_text(*, filename: str, data: bytes) -> str:
    # Some Windows editors start UTF-8 files with a byte order mark; it is not content.
    # It is skipped by hand (not with "utf-8-sig") so error offsets count from the file start.
    bom = b"\xef\xbb\xbf" if data.startswith(b"\xef\xbb\xbf") else b""
    try:
        return data[len(bom) :].decode("utf-8")
    except UnicodeDecodeError as error:
        raise DocumentParseError(
            f"is not valid UTF-8 (byte offset {error.start + len(bom)}); save it as UTF-8 and upload again",
            filename=filename,
        ) from None


def _contains_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


def _file_document(*, filename: str, title: str, text: str) -> SourceDocument:
    if len(filename) > MAX_EXTERNAL_ID_LENGTH:
        raise DocumentParseError(
            f"its path is used as the document id and is longer than {MAX_EXTERNAL_ID_LENGTH} characters",
            filename=filename[:80] + "…",
        )
    # Postgres text columns cannot store NUL, and a NUL in a text file means it is binary.
    if "\x00" in text:
        raise DocumentParseError("contains NUL bytes; is it a binary file?", filename=filename)
    text = text.strip()
    if not text:
        raise DocumentParseError("is empty (no text after removing whitespace)", filename=filename)
    return SourceDocument(external_id=filename, title=title.strip(), text=text)


def _stem(filename: str) -> str:
    return PurePosixPath(filename).stem


def _markdown_title(text: str) -> str:
    # A "# comment" inside a fenced shell snippet is not a heading.
    in_code_block = False
    for line in text.splitlines():
        if _CODE_FENCE.match(line):
            in_code_block = not in_code_block
            continue
        if in_code_block:
            continue
        match = _MARKDOWN_TITLE.match(line)
        if match:
            return match.group("title").strip()
    return ""


def _parse_jsonl(*, filename: str, data: bytes) -> list[SourceDocument]:
    text = _decode_text(filename=filename, data=data)
    documents: list[SourceDocument] = []
    line_of_external_id: dict[str, int] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        document = _jsonl_document(filename=filename, line_number=line_number, line=line)
        first_line = line_of_external_id.setdefault(document.external_id, line_number)
        if first_line != line_number:
            raise DocumentParseError(
                f"duplicate document id {document.external_id!r} (first seen on line {first_line})",
                filename=filename,
                line=line_number,
            )
        documents.append(document)
    if not documents:
        raise DocumentParseError("is empty (no JSON lines)", filename=filename)
    return documents


def _jsonl_document(*, filename: str, line_number: int, line: str) -> SourceDocument:
    def problem(message: str) -> DocumentParseError:
        return DocumentParseError(message, filename=filename, line=line_number)

    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as error:
        raise problem(f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise problem(f"expected a JSON object, got {type(record).__name__}")

    # BEIR corpora use "_id"; other exports use "external_id" or "id".
    id_key = next((key for key in ("_id", "external_id", "id") if key in record), None)
    if id_key is None:
        raise problem('missing document id ("_id", "external_id" or "id")')
    raw_id = record[id_key]
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise problem(f'"{id_key}" must be a string or an integer, got {type(raw_id).__name__}')
    external_id = str(raw_id).strip()
    if len(external_id) > MAX_EXTERNAL_ID_LENGTH:
        raise problem(f"document id is {len(external_id)} characters long; the limit is {MAX_EXTERNAL_ID_LENGTH}")
    if not external_id:
        raise problem(f'"{id_key}" is empty')

    if "text" not in record:
        raise problem(f'document {external_id!r} is missing "text"')
    text = record["text"]
    if not isinstance(text, str):
        raise problem(f'"text" of document {external_id!r} must be a string, got {type(text).__name__}')
    title = record.get("title", "")
    if not isinstance(title, str):
        raise problem(f'"title" of document {external_id!r} must be a string, got {type(title).__name__}')
    metadata = record.get("metadata", {})
    if not isinstance(metadata, dict):
        raise problem(
            f'"metadata" of document {external_id!r} must be a JSON object, got {type(metadata).__name__}'
        )

    # PostgreSQL refuses NUL in text and in jsonb alike.
    if "\x00" in text or "\x00" in title or "\x00" in external_id or _contains_nul(metadata):
        raise problem(f"document {external_id!r} contains NUL characters")
    if not text.strip():
        raise problem(f'document {external_id!r} is empty ("text" is blank)')
    return SourceDocument(external_id=external_id, title=title.strip(), text=text.strip(), metadata=metadata)


def _parse_pdf(*, filename: str, data: bytes) -> SourceDocument:
    # pypdf is only needed for PDFs; importing it lazily keeps text-only ingestion light.
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            reader.decrypt("")
        page_texts = [page.extract_text() or "" for page in reader.pages]
        pdf_title = (reader.metadata.title if reader.metadata else None) or ""
    except Exception as error:  # pypdf raises many types for damaged files; all mean "unreadable".
        raise DocumentParseError(f"could not be read as a PDF ({error})", filename=filename) from None

    # A NUL in extracted text is a font-mapping artefact the user cannot fix, so drop it.
    text = "\n\n".join(page_text.strip() for page_text in page_texts if page_text.strip())
    text = text.replace("\x00", "")
    if not text.strip():
        raise DocumentParseError(
            "PDF has no text layer (is it a scan? run OCR on it first)", filename=filename
        )
    title = pdf_title.strip() if isinstance(pdf_title, str) and pdf_title.strip() else _stem(filename)
    return _file_document(filename=filename, title=title, text=text)
