"""`manage.py retrieve <kb> "<query>" | --queries FILE.jsonl [-k 10] [--json] [--version V]
[--mode dense|lexical|hybrid]`.

--mode retrieves in that mode instead of the knowledge base's (side-by-side evaluation).

Nothing is logged. With --queries, one `{"id", "text"}` per input line gives one
`{"id", "passages": [{"document", "chunk", "score"}, ...]}` per output line.
"""

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from knowledge.management.cli import service_errors_as_command_errors
from knowledge.models import RetrievalMode
from knowledge.selectors import knowledge_base_get, passages_search


def _read_queries(path: Path) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"{path}: cannot read queries ({error})", returncode=2) from error
    queries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise CommandError(f"{path}:{number}: not valid JSON ({error.msg})", returncode=2) from error
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "id" not in row:
            raise CommandError(f'{path}:{number}: expected an object with "id" and a string "text"', returncode=2)
        if isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)):
            raise CommandError(f'{path}:{number}: "id" must be a string or an integer', returncode=2)
        # Checked here, before any output, so a bad line fails the run with its line number
        # instead of half-way through the results.
        if not row["text"].strip():
            raise CommandError(f'{path}:{number}: "text" is empty', returncode=2)
        queries.append((str(row["id"]), row["text"]))
    return queries


class Command(BaseCommand):
    help = "Retrieve passages for a query, or for every query of a JSONL file (scripted evaluation)."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        parser.add_argument("query", nargs="?")
        parser.add_argument("--queries", type=Path, help='JSONL file, one {"id", "text"} per line')
        parser.add_argument("-k", type=int, default=10)
        parser.add_argument("--json", action="store_true")
        # `--version V` picks a retriever version here, so it replaces Django's own --version flag.
        parser.conflict_handler = parser._optionals.conflict_handler = "resolve"
        parser.add_argument("--version", dest="retriever_version", default=None, help="a ready retriever version (default: live)")
        parser.add_argument(
            "--mode", choices=RetrievalMode.values, default=None, help="how to retrieve (default: the knowledge base's mode)"
        )

    def handle(self, *args, kb, query, queries, k, retriever_version, mode, **options):
        if (query is None) == (queries is None):
            raise CommandError("give either a query or --queries FILE.jsonl", returncode=2)
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            served = {}

            def search(text: str):
                retrieval = passages_search(
                    knowledge_base=knowledge_base, query=text, k=k, mode=mode, retriever_version=retriever_version
                )
                served.update(version=retrieval.retriever_version, mode=retrieval.mode)
                return retrieval.passages

            if queries is not None:
                for query_id, text in _read_queries(queries):
                    passages = search(text)
                    out = [{"document": p.document_external_id, "chunk": p.chunk_id, "score": p.score} for p in passages]
                    self.stdout.write(json.dumps({"id": query_id, "passages": out}))
                return
            passages = search(query)
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "retriever_version": served["version"],
                        "mode": served["mode"],
                        "passages": [
                            {"rank": p.rank, "document": p.document_external_id, "chunk": p.chunk_id, "score": p.score, "text": p.text}
                            for p in passages
                        ],
                    }
                )
            )
            return
        for p in passages:
            self.stdout.write(f"[{p.rank}] {p.score:.3f} {p.document_external_id}  {p.text[:100]}")
