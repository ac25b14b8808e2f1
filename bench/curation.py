"""The curator workbench at scale, in a database of its own: server time (p50 / p95) and SQL
queries per request of the queue page, "next" and "submit", on knowledge bases of 10k and 100k
turns with 5 retrieved passages each. The query counts must be the same at both sizes.

Turns are loaded with COPY, in realistic queue tiers (`turn_queue_position` of a feedback and
retrieval scores drawn at random), a share of them already labelled by another curator. The
requests go through django.test.Client to the real views (`/kbs/<kb>/queue/`, `/kbs/<kb>/judge/`,
`POST /kbs/<kb>/turns/<id>/label/`); where those views do not exist, the services behind them
are called instead (`turn_queue_list`, `turn_next`, `label_submit`).

    python bench/curation.py                                  # 10k and 100k turns, 100 rounds
    python bench/curation.py --sizes 1000000 --rounds 200 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "demo" / "scifact"
CURATOR, OTHER_CURATOR = "bench-curator", "bench-other"
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
QUEUE_PAGE_SIZE = 50  # as the queue page shows
DEEP_PAGE_EVERY = 5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", type=lambda v: [int(x) for x in v.split(",")],
                        help="turns per knowledge base, one knowledge base per size (default: 10000,100000)")
    parser.add_argument("--passages-per-turn", type=int, default=5, help="(default: %(default)s)")
    parser.add_argument("--labelled-share", type=float, default=0.2,
                        help="share of the turns already labelled by another curator (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=100,
                        help="timed requests of each kind per size: queue pages, and next + judging page + submit "
                             "rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--through", choices=["auto", "views", "services"], default="auto",
                        help="measure the views, or the services behind them (auto: the views where they exist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database", default="ragloop_bench_curation",
                        help="database created on the embedded server (ignored when DATABASE_URL is set)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")
    return parser.parse_args()


# --- loading --------------------------------------------------------------------------------


def _copy(table: str, columns: list[str], rows) -> int:
    """COPY rows into a table through Django's connection (psycopg 3); returns the row count."""
    from django.db import connection

    count = 0
    with connection.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def _next_ids(table: str, count: int) -> int:
    """Reserve `count` ids of a table's identity sequence; returns the first."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT pg_get_serial_sequence('{table}', 'id')")
        sequence = cursor.fetchone()[0]
        cursor.execute("SELECT nextval(%s)", [sequence])
        first = cursor.fetchone()[0]
        cursor.execute("SELECT setval(%s, %s)", [sequence, first + count])
    return first


def knowledge_base_with_documents(slug: str):
    """A knowledge base holding the 300 demo SciFact abstracts, one chunk each (nothing embedded:
    the measured pages do not retrieve)."""
    import hashlib

    from knowledge.models import Chunk, Document, KnowledgeBase

    knowledge_base = KnowledgeBase.objects.create(slug=slug, name=slug)
    rows = [json.loads(line) for line in (DEMO / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    documents = Document.objects.bulk_create(
        Document(knowledge_base=knowledge_base, external_id=row["_id"], title=row["title"], text=row["text"],
                 content_hash=hashlib.sha256(row["text"].encode()).hexdigest())
        for row in rows
    )
    Chunk.objects.bulk_create(
        Chunk(document=d, knowledge_base=knowledge_base, order=0, text=d.text[:900], token_count=len(d.text[:900].split()))
        for d in documents
    )
    return knowledge_base


def load_turns(*, knowledge_base, count: int, passages_per_turn: int, labelled_share: float, other_curator, seed: int) -> dict:
    """COPY `count` turns with their passages, and labels of `other_curator` on a share of them."""
    from django.db import connection

    from knowledge.models import Chunk, Turn
    from rag.queue_priority import turn_queue_position

    rng = random.Random(seed)
    random.seed(seed)  # turn_queue_position draws the random tier's order from `random`
    claims = [json.loads(line)["text"] for line in (DEMO / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    chunks = list(
        Chunk.objects.filter(knowledge_base=knowledge_base)
        .values_list("pk", "document_id", "document__external_id", "document__title", "text")
    )
    started = time.perf_counter()
    first_turn = _next_ids("curation_turn", count)
    first_passage = _next_ids("curation_retrievedpassage", count * passages_per_turn)
    labelled = sorted(rng.sample(range(count), int(count * labelled_share)))
    first_label = _next_ids("curation_label", len(labelled))
    first_judgment = _next_ids("curation_passagejudgment", len(labelled) * passages_per_turn)

    turns, passages, tiers = [], [], [0, 0, 0]
    labelled_set = set(labelled)
    for number in range(count):
        created = NOW - timedelta(seconds=rng.uniform(0, 90 * 86400))
        roll = rng.random()
        feedback = -1 if roll < 0.03 else 1 if roll < 0.13 else None
        scores, score = [], rng.uniform(0.35, 0.9)
        for _ in range(passages_per_turn):
            scores.append(round(score, 4))
            score -= rng.expovariate(1 / 0.12)
        tier, order = turn_queue_position(feedback=feedback, scores=scores, created=created.timestamp())
        tiers[tier] += 1
        done = number in labelled_set
        turn_id = first_turn + number
        turns.append((
            turn_id, knowledge_base.pk, "ingested", f"bench-{number}", f"{rng.choice(claims)} ({number})",
            "An extractive answer quoting the best passage.", "base", "extractive", rng.uniform(80, 900), feedback,
            "", "{}", created, tier, order, 1 if done else 0, not done, False, False, "", "[]", "", "", "",
        ))
        for rank, (chunk_id, document_id, external_id, title, text) in enumerate(rng.sample(chunks, passages_per_turn), start=1):
            passages.append((first_passage + number * passages_per_turn + rank - 1, turn_id, rank, scores[rank - 1],
                             chunk_id, document_id, external_id, title, text))
    _copy("curation_turn", ["id", "knowledge_base_id", "source", "external_id", "query", "answer", "retriever_version",
                            "generator_version", "latency_ms", "feedback", "feedback_comment", "metadata", "created_at",
                            "queue_tier", "queue_order", "label_count", "needs_labels", "disputed", "imported",
                            "continuation_hash", "history", "rewritten_query", "queue_reason", "queue_scored_with"], turns)
    _copy("curation_retrievedpassage",
          ["id", "turn_id", "rank", "score", "chunk_id", "document_id", "source_id", "title", "text"], passages)

    labels, judgments = [], []
    for index, number in enumerate(labelled):
        label_id, turn_id = first_label + index, first_turn + number
        labels.append((label_id, turn_id, other_curator.pk, rng.choice(["correct", "partly", "wrong"]), "A gold answer.",
                       "", False, "", False, "", False, 1, NOW, NOW, "", False))
        for rank in range(passages_per_turn):
            judgments.append((first_judgment + index * passages_per_turn + rank, label_id,
                              first_passage + number * passages_per_turn + rank, None, None, False, "",
                              "relevant" if rank == 0 else "not_relevant"))
    _copy("curation_label", ["id", "turn_id", "curator_id", "answer_rating", "gold_answer", "rationale", "has_personal_data",
                             "comment", "skipped", "skip_reason", "imported", "version", "created_at", "updated_at",
                             "corrected_query", "rewrite_wrong"], labels)
    _copy("curation_passagejudgment", ["id", "label_id", "retrieved_passage_id", "chunk_id", "document_id", "attached",
                                       "text", "relevance"], judgments)
    copied = time.perf_counter() - started
    with connection.cursor() as cursor:
        for table in ("curation_turn", "curation_retrievedpassage", "curation_label", "curation_passagejudgment"):
            cursor.execute(f"VACUUM ANALYZE {table}")
    assert Turn.objects.filter(knowledge_base=knowledge_base).count() == count
    return {"copy_seconds": copied, "total_seconds": time.perf_counter() - started, "tiers": tiers,
            "labelled": len(labelled), "passages": len(passages)}


# --- measuring ------------------------------------------------------------------------------


def views_exist(slug: str) -> bool:
    from django.urls import Resolver404, resolve

    try:
        for path in (f"/kbs/{slug}/queue/", f"/kbs/{slug}/judge/", f"/kbs/{slug}/turns/1/label/"):
            resolve(path)
    except Resolver404:
        return False
    return True


class Requests:
    """The measured operations, through the views (or the services where the views are missing)."""

    def __init__(self, *, knowledge_base, curator, through_views: bool, turns: int) -> None:
        from django.test import Client

        self.knowledge_base, self.curator, self.through_views = knowledge_base, curator, through_views
        self.client = Client()
        self.client.force_login(curator)
        self.slug = knowledge_base.slug
        self.turn_id: int | None = None
        self.last_page = str(max(1, -(-turns // QUEUE_PAGE_SIZE)))

    def queue(self, page: str = "1") -> None:
        if self.through_views:
            response = self.client.get(f"/kbs/{self.slug}/queue/", {"page": page})
            assert response.status_code == 200, response.status_code
            return
        from django.core.paginator import Paginator

        from curation.services.queue import QueueFilter, turn_queue_list

        turns = turn_queue_list(knowledge_base=self.knowledge_base, curator=self.curator, queue_filter=QueueFilter())
        list(Paginator(turns, QUEUE_PAGE_SIZE).get_page(page))

    def next(self) -> None:
        if self.through_views:
            from django.urls import resolve

            response = self.client.get(f"/kbs/{self.slug}/judge/")
            assert response.status_code == 302, response.status_code
            self.turn_id = resolve(response["Location"]).kwargs["turn_id"]
            return
        from curation.services.queue import turn_next

        self.turn_id = turn_next(knowledge_base=self.knowledge_base, curator=self.curator).pk

    def judge_page(self) -> None:
        response = self.client.get(f"/kbs/{self.slug}/turns/{self.turn_id}/judge/")
        assert response.status_code == 200, response.status_code

    def label_payload(self) -> dict:
        """The label the curator submits for the turn on screen (built outside the timing: the
        page already has its passage ids)."""
        from knowledge.models import RetrievedPassage

        passage_ids = RetrievedPassage.objects.filter(turn_id=self.turn_id).order_by("rank").values_list("pk", flat=True)
        return {"passages": {str(pk): "relevant" if i == 0 else "not_relevant" for i, pk in enumerate(passage_ids)},
                "answer_rating": "partly", "gold_answer": "The first passage answers it."}

    def submit(self, payload: dict) -> None:
        if self.through_views:
            response = self.client.post(f"/kbs/{self.slug}/turns/{self.turn_id}/label/",
                                        json.dumps({"payload": payload, "base_version": 0}), content_type="application/json")
            assert response.status_code == 200, (response.status_code, response.content[:300])
            return
        from curation.services.labels import LabelInput, label_submit
        from knowledge.models import Turn

        label_submit(turn=Turn.objects.get(pk=self.turn_id), curator=self.curator, data=LabelInput.from_payload(payload))

    def release_holds(self) -> None:
        """Drop the curator's holds, so "next" searches the queue rather than returning the
        turn already held (the submit before it holds the following turn, as the page does)."""
        from curation.models import TurnHold

        TurnHold.objects.filter(curator=self.curator).delete()


def timed(operation, *args) -> tuple[float, int]:
    """(seconds, SQL queries) of one call. The queries are counted by an execute wrapper on the
    connection: it costs a function call per query, where CaptureQueriesContext would switch on
    the debug cursor (and its timing and SQL formatting) for the measured call."""
    from django.db import connection

    counter = {"n": 0}

    def count(execute, sql, params, many, context):
        counter["n"] += 1
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        started = time.perf_counter()
        operation(*args)
        seconds = time.perf_counter() - started
    return seconds, counter["n"]


def measure(requests: Requests, *, rounds: int, warmup: int) -> dict[str, tuple[list[float], list[int]]]:
    results: dict[str, tuple[list[float], list[int]]] = {}

    def record(name: str, seconds: float, queries: int, keep: bool) -> None:
        times, counts = results.setdefault(name, ([], []))  # first seen, first in the table
        if keep:
            times.append(seconds)
            counts.append(queries)

    for index in range(warmup + rounds):
        keep = index >= warmup
        record("queue page (first 50)", *timed(requests.queue), keep)
        if index % DEEP_PAGE_EVERY == 0:  # seconds at 100k turns: sampled, to keep the run short
            record(f"queue page (last page, every {DEEP_PAGE_EVERY}th round)", *timed(requests.queue, requests.last_page), keep)
        requests.release_holds()
        record("next (GET judge/ -> hold a turn)" if requests.through_views else "next (turn_next)", *timed(requests.next), keep)
        if requests.through_views:
            record("judging page", *timed(requests.judge_page), keep)
        record("submit (store label, hand next turn)" if requests.through_views else "submit (label_submit)",
               *timed(requests.submit, requests.label_payload()), keep)
    return results


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", message="No directory at")  # WhiteNoise: no collectstatic here
    database = harness.django_setup(database_name=args.database)
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from curation.models import Membership
    from knowledge.models import KnowledgeBase

    print(harness.table("Environment", ["", ""], harness.environment()), flush=True)
    User = get_user_model()
    curator = User.objects.create_user(CURATOR, password="bench-password-1")
    other = User.objects.create_user(OTHER_CURATOR, password="bench-password-2")
    for user in (curator, other):
        user.groups.add(Group.objects.get(name="curator"))
    slugs = [f"bench-curation-{size}" for size in args.sizes]
    load_rows, figures = [], {}
    try:
        for size, slug in zip(args.sizes, slugs):
            knowledge_base = knowledge_base_with_documents(slug)
            for user in (curator, other):
                Membership.objects.create(knowledge_base=knowledge_base, user=user)
            loaded = load_turns(knowledge_base=knowledge_base, count=size, passages_per_turn=args.passages_per_turn,
                                labelled_share=args.labelled_share, other_curator=other, seed=args.seed)
            load_rows.append([f"{size:,}", f"{loaded['passages']:,}", f"{loaded['labelled']:,}",
                              " / ".join(f"{n:,}" for n in loaded["tiers"]), f"{loaded['copy_seconds']:.1f}",
                              f"{loaded['total_seconds']:.1f}", f"{size / loaded['copy_seconds']:,.0f}"])
            print(f"loaded {size:,} turns into {slug} in {loaded['total_seconds']:.1f} s", flush=True)
            through_views = views_exist(slug) if args.through == "auto" else args.through == "views"
            contention = harness.Contention(database_name=database.name).start()
            requests = Requests(knowledge_base=KnowledgeBase.objects.get(slug=slug), curator=curator,
                                through_views=through_views, turns=size)
            figures[size] = measure(requests, rounds=args.rounds, warmup=args.warmup)
            figures[size]["_contention"] = contention.stop()
            print(f"measured {size:,} turns ({'views' if through_views else 'services'}): "
                  f"other programs' running threads, mean {figures[size]['_contention']}", flush=True)

        print(f"\n1-minute load average at the end: {harness.load_average()} ({len(os.sched_getaffinity(0))} CPUs)")
        print(harness.table(
            f"Loading (COPY, then VACUUM ANALYZE): {args.passages_per_turn} passages per turn, "
            f"{args.labelled_share:.0%} labelled by another curator",
            ["turns", "passages", "labelled", "tiers 0 / 1 / 2", "COPY s", "with VACUUM s", "turns/s (COPY)"], load_rows,
        ))
        operations = [name for name in figures[args.sizes[0]] if not name.startswith("_")]
        rows = []
        for name in operations:
            row = [name]
            for size in args.sizes:
                times, counts = figures[size][name]
                row.append(f"{harness.percentile_ms(times, 50):.1f} / {harness.percentile_ms(times, 95):.1f}")
            for size in args.sizes:
                counts = figures[size][name][1]
                row.append(str(counts[0]) if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}")
            rows.append(row)
        header = ["request"] + [f"ms p50 / p95 @ {s:,}" for s in args.sizes] + [f"SQL queries @ {s:,}" for s in args.sizes]
        print(harness.table(
            f"Server time per request ({'django.test.Client against the views' if through_views else 'service calls'}, "
            f"{args.rounds} rounds after {args.warmup} warm-up) and SQL queries",
            header, rows,
        ))
        constant = all(len({c for size in args.sizes for c in figures[size][name][1]}) == 1 for name in operations)
        print(f"\nSQL queries per request the same at every size and in every round: {'yes' if constant else 'NO'}")
    finally:
        if args.keep:
            print(f"\nKept database {database.name!r}")
        elif database.created:
            database.drop()
        else:
            KnowledgeBase.objects.filter(slug__in=slugs).delete()
            User.objects.filter(username__in=[CURATOR, OTHER_CURATOR]).delete()


if __name__ == "__main__":
    main()
