"""`manage.py ingest <kb> <paths...> [--wait]`: documents from files and folders."""

import json

from django.core.management.base import BaseCommand, CommandError

from knowledge.management.cli import (
    service_errors_as_command_errors,
    wait_for_embedding_jobs,
)
from knowledge.models import EmbeddingJob
from knowledge.selectors import knowledge_base_get
from knowledge.services.documents import documents_ingest
from rag.documents import DocumentParseError, parse_path


class Command(BaseCommand):
    help = "Ingest documents (BEIR/generic JSONL, .txt, .md, .pdf, or folders of them) into a knowledge base."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        parser.add_argument("paths", nargs="+")
        parser.add_argument("--wait", action="store_true", help="block until every chunk is embedded, showing progress")
        parser.add_argument("--timeout", type=float, default=None, help="with --wait: give up waiting after this many seconds")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, kb, paths, wait, timeout, **options):
        from pathlib import Path

        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            documents = []
            for raw in paths:
                path = Path(raw)
                try:
                    if not path.exists():
                        raise CommandError(f"{raw}: no such file or folder", returncode=2)
                    documents.extend(parse_path(path))
                except DocumentParseError as error:
                    raise CommandError(str(error), returncode=2) from error
                except OSError as error:  # unreadable, a name too long, ...
                    raise CommandError(f"{raw}: cannot read ({error.strerror or error})", returncode=2) from error
            result = documents_ingest(knowledge_base=knowledge_base, documents=documents)
        summary = result.as_dict()
        if not options["json"]:
            self.stdout.write(
                f"{kb}: {result.created} created, {result.updated} updated, {result.unchanged} unchanged, "
                f"{result.chunks_created} chunks to embed"
            )
        if wait and result.jobs:
            jobs = wait_for_embedding_jobs([job.pk for job in result.jobs], timeout=timeout)
            failed = [job for job in jobs if job.status == EmbeddingJob.Status.FAILED]
            if failed:
                raise CommandError(f"embedding failed: {failed[0].error}", returncode=1)
        if options["json"]:
            self.stdout.write(json.dumps(summary))
