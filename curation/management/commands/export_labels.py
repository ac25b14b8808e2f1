"""`manage.py export_labels <kb> [--output FILE] [--curator NAME]`: the knowledge base's labels
as labels JSONL (docs/labels-format.md), one line per submitted label."""

import os
import tempfile
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from curation.services.label_io import label_record_line, labels_export
from knowledge.management.cli import service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get


class Command(BaseCommand):
    help = "Export a knowledge base's labels as JSONL (the format import_labels reads)."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        parser.add_argument("--output", "-o", metavar="FILE", help="write here instead of standard output")
        parser.add_argument("--curator", help="only this curator's labels (a username)")

    def handle(self, *args, kb, output, curator, **options):
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
        curator_user = None
        if curator is not None:
            curator_user = get_user_model().objects.filter(username=curator).first()
            if curator_user is None:
                raise CommandError(f"user {curator!r} not found", returncode=2)
        records = labels_export(knowledge_base=knowledge_base, curator=curator_user)
        if output is None:
            for record in records:
                self.stdout.write(label_record_line(record), ending="")
            return
        target = Path(output)
        if not target.parent.is_dir():
            raise CommandError(f"{output}: no such folder {str(target.parent)!r}", returncode=2)
        # Written beside the target and renamed into place: a failed export leaves no half file.
        try:
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        except OSError as error:
            raise CommandError(f"{output}: cannot write ({error.strerror or error})", returncode=2) from error
        count = 0
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                for record in records:
                    stream.write(label_record_line(record))
                    count += 1
            os.replace(temporary, target)
        except OSError as error:
            Path(temporary).unlink(missing_ok=True)
            raise CommandError(f"{output}: cannot write ({error.strerror or error})", returncode=2) from error
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self.stderr.write(f"{kb}: {count} labels written to {output}")
