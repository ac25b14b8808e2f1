"""`manage.py import_labels <kb> FILE` or `import_labels <kb> --beir-queries Q --beir-qrels R
--curator NAME`: existing judgments become imported turns with curator labels (all or nothing)."""

import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from curation.services.label_io import (
    beir_records_parse,
    label_records_parse,
    labels_import,
)
from knowledge.management.cli import service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get


def _read(raw: str) -> tuple[str, bytes]:
    """(name for messages, bytes) of a file argument; "-" reads standard input."""
    if raw == "-":
        return "<stdin>", sys.stdin.buffer.read()
    path = Path(raw)
    try:
        if not path.is_file():
            raise CommandError(f"{raw}: no such file", returncode=2)
        return raw, path.read_bytes()
    except OSError as error:  # unreadable, a name too long, ...
        raise CommandError(f"{raw}: cannot read ({error.strerror or error})", returncode=2) from error


class Command(BaseCommand):
    help = (
        "Import judgments into a knowledge base: a labels JSONL file (docs/labels-format.md), or BEIR "
        "queries and qrels filed under one curator. Imported turns have no model answer."
    )

    def add_arguments(self, parser):
        parser.add_argument("kb")
        parser.add_argument("file", nargs="?", help="labels JSONL file ('-' for standard input)")
        parser.add_argument("--beir-queries", metavar="FILE", help="BEIR queries.jsonl (with --beir-qrels and --curator)")
        parser.add_argument("--beir-qrels", metavar="FILE", help="BEIR qrels TSV: score > 0 relevant, 0 not relevant")
        parser.add_argument("--curator", help="with BEIR input: the username the judgments are filed under")
        parser.add_argument("--create-curators", action="store_true",
                            help="create curators named in the input that do not exist (no password, curator role, "
                                 "member of this knowledge base)")
        parser.add_argument("--skip-missing", action="store_true",
                            help="leave out judgments of documents that are not in the knowledge base, and report them")
        parser.add_argument("--json", action="store_true", help="print the summary as JSON")

    def handle(self, *args, kb, file, beir_queries, beir_qrels, curator, create_curators, skip_missing, **options):
        beir = beir_queries or beir_qrels
        if file and beir:
            raise CommandError("give a labels file or BEIR input (--beir-queries/--beir-qrels), not both", returncode=2)
        if not file and not beir:
            raise CommandError("give a labels JSONL file, or --beir-queries, --beir-qrels and --curator", returncode=2)
        if beir and not (beir_queries and beir_qrels and curator):
            raise CommandError("BEIR input needs --beir-queries, --beir-qrels and --curator", returncode=2)
        if file and curator:
            raise CommandError("--curator is for BEIR input; a labels file names the curator on every line", returncode=2)

        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            if file:
                name, data = _read(file)
                records = label_records_parse(filename=name, data=data)
            else:
                queries_name, queries_data = _read(beir_queries)
                qrels_name, qrels_data = _read(beir_qrels)
                records = beir_records_parse(
                    queries_filename=queries_name, queries_data=queries_data,
                    qrels_filename=qrels_name, qrels_data=qrels_data, curator=curator,
                )
            result = labels_import(
                knowledge_base=knowledge_base, records=records, create_curators=create_curators, skip_missing=skip_missing
            )
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict()))
            return
        self.stdout.write(
            f"{kb}: turns {result.turns_created} created, {result.turns_existing} existing; "
            f"passages {result.passages_added} added; labels {result.labels_created} created, "
            f"{result.labels_updated} updated, {result.labels_unchanged} unchanged"
        )
        if result.curators_created:
            self.stdout.write(f"curators created (no password yet): {', '.join(result.curators_created)}")
        for where, document in result.skipped_documents:
            self.stdout.write(f"skipped: document {document!r} is not in {kb} ({where})")
        for where in result.skipped_records:
            self.stdout.write(f"skipped: nothing left to import on {where}")
