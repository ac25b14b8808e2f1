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
     "rewritten_query": "...",                   optional: a follow-up's rewrite that retrieval used,
     "rewrite_wrong": true, "corrected_query": "..."   and the curator's verdict on it
     "turn_id": 12}                              written by export, ignored by import

A passage item is {"document": <document external id>}, {"text": ...}, or both (a passage of that
document); a bare string is short for {"document": <string>}. A document-only item stands for the
document's whole text. Unknown fields are refused, so a misspelt list is never silently dropped.

Import: lines with the same query_id (or, without one, the same query text) share one turn, an
imported turn (`imported=True`, no model answer) whose passages are the items listed, ranked in
the order they first appear. Each line is submitted as that curator's label with `imported=True`.
The whole input is validated before anything is written, and written in one transaction;
importing the same input again changes nothing (a label is resubmitted only if it differs).

The package, by concern:

- `records`: the file formats and their validation (no database): the limits and field names,
  `LabelFileError`, `PassageRef`, `LabelRecord`, `import_external_id`, `label_record_parse`,
  `label_records_parse`, `beir_records_parse`.
- `importing`: `labels_import` and its `LabelImportResult`: records checked against a knowledge
  base and written in one transaction.
- `exporting`: `labels_export`, `label_record`, `label_record_line` and the `CONTENT_TYPE` of a
  labels file.
"""

from curation.services.label_io.exporting import (
    CONTENT_TYPE,
    label_record,
    label_record_line,
    labels_export,
)
from curation.services.label_io.importing import LabelImportResult, labels_import
from curation.services.label_io.records import (
    LabelFileError,
    LabelRecord,
    PassageRef,
    beir_records_parse,
    import_external_id,
    label_record_parse,
    label_records_parse,
)

__all__ = [
    "CONTENT_TYPE",
    "LabelFileError",
    "LabelImportResult",
    "LabelRecord",
    "PassageRef",
    "beir_records_parse",
    "import_external_id",
    "label_record",
    "label_record_line",
    "label_record_parse",
    "label_records_parse",
    "labels_export",
    "labels_import",
]
