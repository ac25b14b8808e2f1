"""`manage.py embedding_space_restore <kb> <retriever_version>`: make a retired embedding space
servable again, re-embedding the corpus into it if its vectors were dropped, so a rollback or
promotion to the version that owns it can go through once it is ready."""

import json

from django.core.management.base import BaseCommand

from knowledge.errors import Conflict, NotFound
from knowledge.management.cli import service_errors_as_command_errors
from knowledge.models import EmbeddingSpace
from knowledge.selectors import knowledge_base_get
from knowledge.services.embedding_spaces import embedding_space_restore


class Command(BaseCommand):
    help = "Restore a retired embedding space (re-embedding its chunks if its vectors were dropped)."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        parser.add_argument("retriever_version", metavar="RETRIEVER_VERSION")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, kb, retriever_version, **options):
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            space = knowledge_base.embedding_spaces.filter(retriever_version=retriever_version).first()
            if space is None:
                raise NotFound(f"Retriever version {retriever_version!r} has no embedding space in {kb!r}.")
            if space.status != EmbeddingSpace.Status.RETIRED:
                raise Conflict(f"The embedding space {retriever_version!r} is {space.status}, not retired.")
            job = embedding_space_restore(space=space)
        space.refresh_from_db()
        if options["json"]:
            summary = {"space": retriever_version, "status": space.status, "embedding_job": job.pk if job else None}
            self.stdout.write(json.dumps(summary))
            return
        embedding = f"; embedding job #{job.pk} fills in {job.total_chunks - job.embedded_chunks} chunks" if job else ""
        self.stdout.write(f"{kb}: embedding space {retriever_version} is {space.status}{embedding}.")
