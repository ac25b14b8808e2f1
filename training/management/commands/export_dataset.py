"""`manage.py export_dataset <kb> --format openai|raft|triplets|pairs|beir [--snapshot ID|latest|new]
[--split train|heldout|all] --output PATH [--json]`: a dataset snapshot as training or evaluation
files (beir: a folder with corpus.jsonl, queries.jsonl and qrels/test.tsv)."""

import json
from pathlib import Path

from django.core.management.base import BaseCommand

from knowledge.management.cli import service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get
from training.selectors import snapshot_get
from training.services.exports import (
    EXPORT_FORMATS,
    EXPORT_SPLITS,
    dataset_export,
    dataset_export_files,
)
from training.services.snapshots import dataset_snapshot_create

# Command-line option -> rag.datasets option (only given ones are passed; the rest keep defaults).
FORMAT_OPTIONS = {
    "max_passages": "max_passages",
    "system_prompt": "system_prompt",
    "max_history_words": "max_history_words",
    "distractors": "distractors",
    "oracle_probability": "oracle_probability",
    "seed": "seed",
    "pool_size": "pool_size",
    "negatives_per_positive": "max_negatives_per_positive",
}


class Command(BaseCommand):
    help = "Export a dataset snapshot (OpenAI chat, RAFT, sentence-transformers triplets or pairs, BEIR)."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        # Checked by the service, not argparse, so a bad value exits 2 like every other bad input.
        parser.add_argument("--format", required=True, dest="export_format", help=", ".join(EXPORT_FORMATS))
        parser.add_argument("--snapshot", default="latest", help="a snapshot id, 'latest' (default) or 'new' (snapshot the labels now)")
        parser.add_argument("--split", default="train", help=f"{', '.join(EXPORT_SPLITS)} (default: train)")
        parser.add_argument("--output", "-o", required=True, help="the JSONL file to write (beir: a folder)")
        parser.add_argument("--json", action="store_true", help="print the summary as JSON")
        parser.add_argument("--max-passages", type=int, help="openai: context passages per example (default 5)")
        parser.add_argument("--system-prompt", help="openai: the system message (default: the serving prompt)")
        parser.add_argument(
            "--max-history-words", type=int,
            help="openai: words of a conversation's earlier messages kept, oldest dropped first (default: RAGLOOP_CHAT_HISTORY_TOKENS, what serving shows)",
        )  # fmt: skip
        parser.add_argument("--distractors", type=int, help="raft: distractor documents per example (default 4)")
        parser.add_argument("--oracle-probability", type=float, help="raft: share of examples with the oracle in context, P (default 0.8)")
        parser.add_argument("--seed", type=int, help="raft: seed of the draws and of the random chunk pool (default 0)")
        parser.add_argument("--pool-size", type=int, help="raft: random chunks of the knowledge base to top distractors up from (default 2000)")
        parser.add_argument("--negatives-per-positive", type=int, help="triplets: hard negatives per relevant passage (default 1)")

    def handle(self, *args, kb, export_format, snapshot, split, output, **options):
        format_options = {name: options[key] for key, name in FORMAT_OPTIONS.items() if options.get(key) is not None}
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            if export_format not in EXPORT_FORMATS or split not in EXPORT_SPLITS:
                # Said before a new snapshot is taken, so a typo leaves nothing behind.
                dataset_export_files(snapshot=None, format=export_format, split=split)
            if snapshot == "new":
                chosen = dataset_snapshot_create(knowledge_base=knowledge_base, reuse_identical=True)
            else:
                chosen = snapshot_get(knowledge_base=knowledge_base, snapshot_id=snapshot)
            summary = dataset_export(
                snapshot=chosen, format=export_format, split=split, output=Path(output), **format_options
            )
        if options["json"]:
            self.stdout.write(json.dumps(summary))
            return
        skipped = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in summary["skipped"].items())
        self.stdout.write(
            f"{kb}: snapshot {summary['snapshot']} ({summary['split']}, {summary['examples']} examples) -> "
            f"{summary['records']} {summary['format']} records in {summary['output']}" + (f"; left out: {skipped}" if skipped else "")
        )
