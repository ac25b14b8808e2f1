"""`manage.py kb_list [--spaces] [--json]`."""

import json

from django.core.management.base import BaseCommand

from knowledge.models import KnowledgeBase
from knowledge.selectors import live_version_names_of


def _moment(value) -> str | None:
    return value.isoformat() if value else None


class Command(BaseCommand):
    help = "List knowledge bases with their document, chunk and turn counts (and their embedding spaces)."

    def add_arguments(self, parser):
        parser.add_argument("--spaces", action="store_true", help="also list each embedding space and its state")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        rows = []
        for kb in KnowledgeBase.objects.select_related("live_space"):
            live = live_version_names_of(knowledge_base=kb)
            row = {
                "slug": kb.slug,
                "name": kb.name,
                "documents": kb.documents.count(),
                "chunks": kb.chunks.count(),
                "turns": kb.turns.count(),
                "live_retriever_version": live["retriever"],
                "generator": live["generator"],
            }
            if options["spaces"]:
                row["spaces"] = [
                    {
                        "retriever_version": space.retriever_version,
                        "status": space.status,
                        "state": space.state_label,
                        "vectors": space.embeddings.count(),
                        "hnsw_index_built": space.hnsw_index_built,
                        "retired_at": _moment(space.retired_at),
                        "vectors_dropped_at": _moment(space.vectors_dropped_at),
                    }
                    for space in kb.embedding_spaces.order_by("pk")
                ]
            rows.append(row)
        if options["json"]:
            self.stdout.write(json.dumps(rows))
            return
        for row in rows:
            self.stdout.write(
                f"{row['slug']:<24} {row['documents']:>7} docs {row['chunks']:>8} chunks {row['turns']:>7} turns"
                f"  retriever={row['live_retriever_version']} generator={row['generator']}"
            )
            for space in row.get("spaces", []):
                since = f" since {space['retired_at'][:10]}" if space["retired_at"] else ""
                self.stdout.write(f"  space {space['retriever_version']:<22} {space['state']}{since}, {space['vectors']} vectors")
