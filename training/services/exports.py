"""Dataset exports: a snapshot's examples in the formats other tools train and evaluate with
(OpenAI chat JSONL, RAFT JSONL, sentence-transformers triplets or pairs, a BEIR folder).

rag.datasets builds the records; this module picks the snapshot's split, gives RAFT its pool of
random chunks from the knowledge base, and lays the records out as files. `dataset_export_files`
returns those files as bytes (the download view sends them), `dataset_export` writes them.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from knowledge.errors import InvalidInput
from knowledge.models import Chunk
from knowledge.services.audit import audit_record
from rag.datasets import (
    LabeledPassage,
    export_beir,
    export_openai,
    export_pairs,
    export_raft,
    export_triplets,
)
from training.models import DatasetSnapshot
from training.services.snapshots import snapshot_dataset_examples

EXPORT_FORMATS = ("openai", "raft", "triplets", "pairs", "beir")
EXPORT_SPLITS = ("train", "heldout", "all")
# The options each format takes (passed on to rag.datasets), with their types.
FORMAT_OPTIONS: dict[str, dict[str, type]] = {
    "openai": {"system_prompt": str, "max_passages": int, "max_history_words": int},
    "raft": {"distractors": int, "oracle_probability": float, "seed": int, "pool_size": int},
    "triplets": {"max_negatives_per_positive": int},
    "pairs": {},
    "beir": {},
}
# RAFT tops distractors up from this many random chunks of the knowledge base: enough to give
# every example fresh ones, without loading a large corpus into memory.
RAFT_POOL_SIZE = 2000
_KINDS = {int: "a whole number", float: "a number", str: "text"}
BEIR_QRELS_FILE = "qrels/test.tsv"


@dataclass
class ExportFiles:
    """The files of one export, by relative path, and what went into them."""

    files: dict[str, bytes]
    summary: dict[str, Any] = field(default_factory=dict)

    def zip_bytes(self, *, folder: str) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, content in self.files.items():
                archive.writestr(f"{folder}/{name}", content)
        return buffer.getvalue()


def _jsonl(records) -> bytes:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")


def raft_random_pool(*, knowledge_base, seed: int = 0, size: int = RAFT_POOL_SIZE) -> list[LabeledPassage]:
    """Up to `size` chunks of the knowledge base drawn with `seed`, as passages, in chunk order."""
    chunk_ids = list(Chunk.objects.filter(knowledge_base=knowledge_base).order_by("pk").values_list("pk", flat=True))
    chosen = sorted(random.Random(seed).sample(chunk_ids, min(size, len(chunk_ids))))
    chunks = Chunk.objects.filter(pk__in=chosen).select_related("document").order_by("pk")
    return [
        LabeledPassage(text=c.text, document_id=c.document.external_id, chunk_id=c.pk, title=c.document.title)
        for c in chunks
    ]


def _checked_options(export_format: str, options: dict[str, Any]) -> dict[str, Any]:
    allowed = FORMAT_OPTIONS[export_format]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        takes = ", ".join(sorted(allowed)) or "no options"
        raise InvalidInput(f"The {export_format} export does not take {', '.join(unknown)} (it takes {takes}).")
    checked = {}
    for name, value in options.items():
        try:
            checked[name] = allowed[name](value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{name} must be {_KINDS[allowed[name]]}, got {value!r}.") from None
    return checked


def _audit(snapshot: DatasetSnapshot, summary: dict[str, Any]) -> None:
    """Every export (a download, `export_dataset`) is a row of the audit log: the data leaves."""
    audit_record(
        action="dataset.export", object_type="dataset_snapshot", object_id=snapshot.pk,
        knowledge_base=snapshot.knowledge_base, after={k: summary[k] for k in ("format", "split", "examples", "records")},
    )  # fmt: skip


def dataset_export_files(
    *, snapshot: DatasetSnapshot, format: str, split: str = "train", **options: Any
) -> ExportFiles:
    """The snapshot's `split` ("train", "heldout" or "all") as files of `format`.

    JSONL formats are one file, "<format>.jsonl"; beir is corpus.jsonl, queries.jsonl and
    qrels/test.tsv (the split BEIR's loaders read by default, whichever split was exported).
    """
    if format not in EXPORT_FORMATS:
        raise InvalidInput(f"Unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    if split not in EXPORT_SPLITS:
        raise InvalidInput(f"Unknown split {split!r}; choose one of {', '.join(EXPORT_SPLITS)}.")
    options = _checked_options(format, options)
    examples = snapshot_dataset_examples(snapshot=snapshot, split=None if split == "all" else split)
    summary: dict[str, Any] = {
        "knowledge_base": snapshot.knowledge_base.slug,
        "snapshot": snapshot.pk,
        "format": format,
        "split": split,
        "examples": len(examples),
    }
    try:
        if format == "beir":
            beir = export_beir(examples)
            qrels = "query-id\tcorpus-id\tscore\n" + "".join(
                f"{row['query-id']}\t{row['corpus-id']}\t{row['score']}\n" for row in beir.qrels
            )
            files = {"corpus.jsonl": _jsonl(beir.corpus), "queries.jsonl": _jsonl(beir.queries), BEIR_QRELS_FILE: qrels.encode()}
            summary.update(records=len(beir.queries), corpus=len(beir.corpus), qrels=len(beir.qrels), skipped={})
            _audit(snapshot, summary)
            return ExportFiles(files=files, summary=summary)
        if format == "openai":
            # The history serving shows the generator, unless the caller says otherwise.
            options.setdefault("max_history_words", settings.RAGLOOP_CHAT_HISTORY_TOKENS)
            result = export_openai(examples, **options)
        elif format == "raft":
            pool_size = options.pop("pool_size", RAFT_POOL_SIZE)
            if pool_size < 0:
                raise ValueError(f"pool_size must be 0 or more, got {pool_size}")
            pool = raft_random_pool(knowledge_base=snapshot.knowledge_base, seed=options.get("seed", 0), size=pool_size)
            result = export_raft(examples, random_pool=pool, **options)
        elif format == "triplets":
            result = export_triplets(examples, **options)
        else:
            result = export_pairs(examples)
    except ValueError as error:  # a bad option value (rag.datasets says which)
        raise InvalidInput(str(error)) from error
    summary.update(records=len(result.records), skipped=result.skipped)
    _audit(snapshot, summary)
    return ExportFiles(files={f"{format}.jsonl": _jsonl(result.records)}, summary=summary)


def _write_atomically(target: Path, content: bytes) -> None:
    # Written beside the target and renamed into place: a failed export leaves no half file.
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def dataset_export(
    *, snapshot: DatasetSnapshot, format: str, split: str = "train", output: Path, **options: Any
) -> dict[str, Any]:
    """Write the export to `output` (a JSONL file; for beir, a folder) and return its summary.

    Each file is written whole or not at all; a beir folder may exist already (its three files
    are replaced) but must not be a file.
    """
    export = dataset_export_files(snapshot=snapshot, format=format, split=split, **options)
    output = Path(output)
    try:
        if format == "beir":
            if output.exists() and not output.is_dir():
                raise InvalidInput(f"{output} is a file; a BEIR export is a folder.")
            output.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=output, prefix=".export-"))
            try:
                for name, content in export.files.items():
                    (staging / name).parent.mkdir(parents=True, exist_ok=True)
                    (staging / name).write_bytes(content)
                # All files are complete before any of them replaces an older one.
                for name in export.files:
                    (output / name).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging / name, output / name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            written = [str(output / name) for name in export.files]
        else:
            if output.is_dir():
                raise InvalidInput(f"{output} is a folder; give a file name for the {format} export.")
            if not output.parent.is_dir():
                raise InvalidInput(f"{output}: no such folder {str(output.parent)!r}.")
            [content] = export.files.values()
            _write_atomically(output, content)
            written = [str(output)]
    except OSError as error:
        raise InvalidInput(f"{output}: cannot write ({error.strerror or error}).") from error
    return {**export.summary, "output": str(output), "files": written}

