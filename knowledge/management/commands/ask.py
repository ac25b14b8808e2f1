"""`manage.py ask <kb> "<query>" [--conversation ID] [--json]`: answer with the live versions; the
turn is logged (as the next turn of the conversation with that external id, if given)."""

import json

from django.core.management.base import BaseCommand

from knowledge.management.cli import service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get
from knowledge.services.conversations import conversation_ask
from knowledge.services.turns import turn_ask


class Command(BaseCommand):
    help = "Ask a knowledge base a question (retrieve + generate); the turn is stored."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        parser.add_argument("query")
        parser.add_argument("-k", type=int, default=5)
        parser.add_argument(
            "--conversation", help="continue (or start) the conversation with this external id; follow-ups are rewritten"
        )
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, kb, query, k, conversation, **options):
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            if conversation:
                turn = conversation_ask(
                    knowledge_base=knowledge_base, question=query, k=k, conversation_external_id=conversation
                )
            else:
                turn = turn_ask(knowledge_base=knowledge_base, query=query, k=k)
        passages = list(turn.passages.all())
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "turn_id": turn.pk,
                        "conversation": conversation,
                        "position": turn.position,
                        "rewritten_query": turn.rewritten_query,
                        "answer": turn.answer,
                        "retriever_version": turn.retriever_version,
                        "generator_version": turn.generator_version,
                        "latency_ms": turn.latency_ms,
                        "passages": [
                            {"rank": p.rank, "document": p.source_id, "chunk": p.chunk_id, "score": p.score, "text": p.text}
                            for p in passages
                        ],
                    }
                )
            )
            return
        if turn.rewritten_query:
            self.stdout.write(f"(searched for: {turn.rewritten_query})")
        self.stdout.write(turn.answer + "\n")
        for p in passages:
            self.stdout.write(f"[{p.rank}] {p.score:.3f} {p.source_id}  {p.text[:100]}")
        self.stdout.write(f"(turn {turn.pk}, {turn.latency_ms:.0f} ms)")
