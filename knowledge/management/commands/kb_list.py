"""`manage.py kb_list [--json]`."""

import json

from django.core.management.base import BaseCommand

from knowledge.models import KnowledgeBase


class Command(BaseCommand):
    help = "List knowledge bases with their document, chunk and turn counts."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        rows = [
            {
                "slug": kb.slug,
                "name": kb.name,
                "documents": kb.documents.count(),
                "chunks": kb.chunks.count(),
                "turns": kb.turns.count(),
                "live_retriever_version": kb.live_space.retriever_version if kb.live_space else None,
                "generator": kb.generator_version,
            }
            for kb in KnowledgeBase.objects.select_related("live_space")
        ]
        if options["json"]:
            self.stdout.write(json.dumps(rows))
            return
        for row in rows:
            self.stdout.write(
                f"{row['slug']:<24} {row['documents']:>7} docs {row['chunks']:>8} chunks {row['turns']:>7} turns"
                f"  retriever={row['live_retriever_version']} generator={row['generator']}"
            )
