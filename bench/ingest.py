"""Ingestion throughput, in a database and Redis index of its own:

(a) documents: chunks embedded per second from `documents_ingest` of SciFact abstracts until a
    real Celery worker process marks the embedding job succeeded, against the bare encoder
    (`encode_documents`) on the same chunk texts; the two alternate in rounds, so that CPU
    competition from other programs falls on both alike;
(b) turns: turns per second through `POST /api/v1/kbs/{kb}/turns` (django.test.Client with a
    bearer token): new turns with and without their own `created_at`, and the same batches
    posted again, which the API must leave unchanged.

    python bench/ingest.py                          # 500 abstracts, 3000 turns in batches of 100
    python bench/ingest.py --documents 2000 --turns 10000 --keep
    python bench/ingest.py --pipeline-backend openvino-int8 --backends torch,openvino-int8   # the worker on int8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402

SCIFACT = Path("/work/shared/datasets/scifact")
BATCH_TASK = "knowledge.tasks.chunk_batch_embed_task"
ENCODE_DEFAULT_BATCH = 64  # rag.embedding.Embedder.encode_documents


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=500, help="SciFact abstracts to ingest (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="the documents are ingested in this many calls, each followed by the bare encoder on its "
                             "chunks (default: %(default)s)")
    parser.add_argument("--warmup-documents", type=int, default=20,
                        help="abstracts embedded first, into another knowledge base, so the worker has its model "
                             "loaded when the timed run starts (default: %(default)s)")
    parser.add_argument("--turns", type=int, default=3000, help="turns per pass through the API (default: %(default)s)")
    parser.add_argument("--turns-per-batch", type=int, default=100, help="(default: %(default)s)")
    parser.add_argument("--passages-per-turn", type=int, default=5, help="(default: %(default)s)")
    parser.add_argument("--encode-batch-sizes", default=str(ENCODE_DEFAULT_BATCH),
                        type=lambda v: [int(x) for x in v.split(",")],
                        help="encode_documents batch sizes for the bare-encoder runs, e.g. 16,32,64 (default: %(default)s)")
    parser.add_argument("--backends", type=lambda v: [b for b in v.split(",") if b], default=["torch", "onnx-int8"],
                        help="embedding backends whose bare encoder also runs on each round's chunks (default: torch,onnx-int8)")
    parser.add_argument("--pipeline-backend", default="torch",
                        help="the knowledge bases' embedding backend, which the worker embeds on (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for an embedding job (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database", default="ragloop_bench_ingest",
                        help="database created on the embedded server (ignored when DATABASE_URL is set)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database (or knowledge bases) afterwards")
    return parser.parse_args()


def scifact_documents(*, count: int, skip: int = 0):
    from rag.documents import SourceDocument

    documents = []
    with (SCIFACT / "corpus.jsonl").open() as lines:
        for index, line in enumerate(lines):
            if index < skip:
                continue
            if len(documents) == count:
                break
            row = json.loads(line)
            documents.append(SourceDocument(external_id=row["_id"], title=row.get("title", ""), text=row["text"], metadata={}))
    return documents


def seconds_between(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()


# --- (a) documents ------------------------------------------------------------------------


def embed_until_done(*, knowledge_base, documents, worker: harness.Worker, timeout: float) -> dict:
    """Ingest, then wait for the worker to finish the job; times come from the job row's stamps."""
    from knowledge.models import EmbeddingJob
    from knowledge.services.documents import documents_ingest

    worker_cpu = worker.cpu_seconds()
    started_at = datetime.now(timezone.utc)
    started = time.perf_counter()
    result = documents_ingest(knowledge_base=knowledge_base, documents=documents)
    ingest_seconds = time.perf_counter() - started
    [job] = result.jobs

    def finished():
        job.refresh_from_db()
        return job.is_finished

    harness.wait_until(finished, timeout=timeout, message=f"embedding job {job.pk}", worker=worker)
    if job.status != EmbeddingJob.Status.SUCCEEDED:
        raise RuntimeError(f"embedding job {job.pk} {job.status}: {job.error}")
    return {
        "chunks": result.chunks_created,
        "ingest_seconds": ingest_seconds,
        "first_task_start_seconds": seconds_between(started_at, job.started_at),
        "total_seconds": seconds_between(started_at, job.finished_at),
        "worker_cpu_seconds": worker.cpu_seconds() - worker_cpu,
    }


def bare_encoder(batch_size: int, backend: str = "torch"):
    """The process's base embedder on `backend` (exported beside the model's other exports the
    first time), warmed up: its first call sets things up; that is not throughput."""
    from django.conf import settings

    from knowledge.services.knowledge_bases import (
        BASE_MODEL_REFERENCE,
        retriever_model_path,
    )
    from rag.embedding import load_embedder

    embedder = load_embedder(
        retriever_model_path(BASE_MODEL_REFERENCE), backend=backend, export_root=settings.RAGLOOP_INFERENCE_EXPORTS_DIR
    )
    embedder.encode_documents(["warm-up text"] * batch_size, batch_size=batch_size)
    return embedder


def bare_encode(texts: list[str], *, slice_size: int, batch_size: int, backend: str = "torch") -> tuple[float, float]:
    """Wall and CPU seconds of encode_documents over the texts, in slices as the batch tasks get them."""
    embedder = bare_encoder(batch_size, backend)
    started, started_cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(texts), slice_size):
        embedder.encode_documents(texts[start : start + slice_size], batch_size=batch_size)
    return time.perf_counter() - started, time.process_time() - started_cpu


def documents_benchmark(args, worker: harness.Worker) -> tuple[list, list, object]:
    """Rounds of (ingest a share of the documents and wait for the worker; encode the same chunks
    bare), so that CPU competition from other programs, which comes and goes, falls on both alike."""
    from django.conf import settings
    from django.db.models import Max

    from knowledge.models import Chunk, ChunkEmbedding
    from knowledge.services.knowledge_bases import knowledge_base_create

    # The warm-up also makes the worker export (or load) the pipeline's backend before the timed part.
    warmup_kb = knowledge_base_create(slug="bench-ingest-warmup", embedding_backend=args.pipeline_backend)
    started = time.perf_counter()
    warmup = embed_until_done(
        knowledge_base=warmup_kb,
        documents=scifact_documents(count=args.warmup_documents, skip=args.documents),
        worker=worker,
        timeout=600,
    )
    print(f"worker warm-up: {warmup['chunks']} chunks embedded in {time.perf_counter() - started:.1f} s "
          "(worker start and model load included)", flush=True)
    for batch_size in args.encode_batch_sizes:
        bare_encoder(batch_size)
    for backend in args.backends:
        bare_encoder(ENCODE_DEFAULT_BATCH, backend)

    knowledge_base = knowledge_base_create(slug="bench-ingest", embedding_backend=args.pipeline_backend)
    documents = scifact_documents(count=args.documents)
    per_round = -(-len(documents) // args.rounds)
    slice_size = settings.RAGLOOP_EMBED_BATCH_SIZE
    rounds = []
    tasks_before = len(worker.task_seconds(BATCH_TASK))
    for first in range(0, len(documents), per_round):
        newest_chunk = Chunk.objects.filter(knowledge_base=knowledge_base).aggregate(newest=Max("pk"))["newest"] or 0
        pipeline = embed_until_done(
            knowledge_base=knowledge_base, documents=documents[first : first + per_round], worker=worker, timeout=args.timeout
        )
        chunks = list(
            Chunk.objects.filter(knowledge_base=knowledge_base, pk__gt=newest_chunk)
            .order_by("pk")
            .values_list("text", "token_count")
        )
        pipeline["tokens"] = [tokens for _, tokens in chunks]
        pipeline["bare"] = {
            batch_size: bare_encode([text for text, _ in chunks], slice_size=slice_size, batch_size=batch_size)
            for batch_size in args.encode_batch_sizes
        }
        # Every backend on the same chunks, in turn, in the same round: competition falls on all alike.
        pipeline["backends"] = {
            backend: bare_encode([text for text, _ in chunks], slice_size=slice_size, batch_size=ENCODE_DEFAULT_BATCH,
                                 backend=backend)  # fmt: skip
            for backend in args.backends
        }
        rounds.append(pipeline)
        bare_wall = pipeline["bare"][args.encode_batch_sizes[0]][0]
        print(f"round {len(rounds)}: {pipeline['chunks']} chunks, pipeline {pipeline['total_seconds']:.1f} s, "
              f"bare encoder {bare_wall:.1f} s", flush=True)
    time.sleep(0.5)  # the worker logs a task's time just after the task commits
    batch_task_seconds = worker.task_seconds(BATCH_TASK)[tasks_before:]
    count = sum(r["chunks"] for r in rounds)
    embedded = ChunkEmbedding.objects.filter(space=knowledge_base.live_space).count()
    if embedded != count:
        raise RuntimeError(f"{embedded} vectors stored for {count} chunks")

    total = sum(r["total_seconds"] for r in rounds)
    worker_cpu = sum(r["worker_cpu_seconds"] for r in rounds)
    rows = [[
        f"pipeline on {args.pipeline_backend}: documents_ingest until the job succeeded (CPU: the worker's)",
        f"{total:.1f}", f"{count / total:.1f}", f"{worker_cpu:.1f}", f"{count / worker_cpu:.1f}",
    ]]
    for batch_size in args.encode_batch_sizes:
        wall = sum(r["bare"][batch_size][0] for r in rounds)
        cpu = sum(r["bare"][batch_size][1] for r in rounds)
        marker = " (the default, as the worker runs)" if batch_size == ENCODE_DEFAULT_BATCH else ""
        rows.append([
            f"bare encode_documents, slices of {slice_size}, batch_size={batch_size}{marker}",
            f"{wall:.1f}", f"{count / wall:.1f}", f"{cpu:.1f}", f"{count / cpu:.1f}",
        ])

    torch_cpu = sum(r["backends"]["torch"][1] for r in rounds) if "torch" in args.backends else None
    for backend in args.backends:
        wall = sum(r["backends"][backend][0] for r in rounds)
        cpu = sum(r["backends"][backend][1] for r in rounds)
        versus = f", {torch_cpu / cpu:.2f}x torch per CPU s" if torch_cpu else ""
        rows.append([
            f"bare encode_documents on backend {backend}, batch_size={ENCODE_DEFAULT_BATCH}{versus}",
            f"{wall:.1f}", f"{count / wall:.1f}", f"{cpu:.1f}", f"{count / cpu:.1f}",
        ])

    tokens = [t for r in rounds for t in r["tokens"]]
    breakdown = [
        ["documents / chunks / mean tokens per chunk", f"{len(documents)} / {count} / {np.mean(tokens):.0f}"],
        ["ingest calls (rounds) / documents per call", f"{len(rounds)} / {per_round}"],
        ["documents_ingest calls (chunking + inserts, in this process), total", f"{sum(r['ingest_seconds'] for r in rounds):.2f} s"],
        ["ingest start -> job RUNNING (dispatch task started), mean per round",
         f"{np.mean([r['first_task_start_seconds'] for r in rounds]):.2f} s"],
        [f"{len(batch_task_seconds)} batch tasks, summed run time (worker log)", f"{sum(batch_task_seconds):.1f} s"],
        ["ingest start -> job SUCCEEDED, total", f"{total:.1f} s"],
    ]
    # The pipeline against the bare encoder on the same backend, as the worker runs it.
    same_backend = None
    if args.pipeline_backend in args.backends:
        same_backend = [r["backends"][args.pipeline_backend] for r in rounds]
    elif args.pipeline_backend == "torch" and ENCODE_DEFAULT_BATCH in args.encode_batch_sizes:
        same_backend = [r["bare"][ENCODE_DEFAULT_BATCH] for r in rounds]
    if same_backend:
        walls = [wall for wall, _ in same_backend]
        cpus = [cpu for _, cpu in same_backend]
        ratios = [r["total_seconds"] / wall for r, wall in zip(rounds, walls)]
        breakdown += [
            [f"pipeline / bare encoding on {args.pipeline_backend}, wall: total (per round: median, min-max)",
             f"{total / sum(walls):.2f}x ({np.median(ratios):.2f}x, {min(ratios):.2f}-{max(ratios):.2f}x)"],
            ["pipeline / bare encoding, CPU: worker CPU / bare-encoding CPU", f"{worker_cpu / sum(cpus):.2f}x"],
        ]
    return rows, breakdown, knowledge_base


# --- (b) turns ----------------------------------------------------------------------------


def turn_batches(*, knowledge_base, args, rng: np.random.Generator, prefix: str, stamped: bool) -> list[str]:
    """JSON bodies for the batch API: SciFact claims as queries, stored chunks as passages;
    `stamped` turns carry the time the external app logged them (`created_at`)."""
    from knowledge.models import Chunk

    claims = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").read_text().splitlines()]
    chunks = list(
        Chunk.objects.filter(knowledge_base=knowledge_base).values_list("text", "document__external_id", "document__title")
    )
    logged_at = datetime(2026, 11, 1, tzinfo=timezone.utc)
    bodies = []
    for first in range(0, args.turns, args.turns_per_batch):
        turns = []
        for number in range(first, min(first + args.turns_per_batch, args.turns)):
            picks = rng.choice(len(chunks), size=args.passages_per_turn, replace=False)
            passages = [
                {"text": chunks[i][0], "source_id": chunks[i][1], "title": chunks[i][2], "score": round(0.9 - 0.05 * rank, 3)}
                for rank, i in enumerate(picks)
            ]
            turn = {
                "external_id": f"{prefix}-{number}",
                "query": claims[number % len(claims)],
                "answer": passages[0]["text"][:300],
                "passages": passages,
                "feedback": [None, 1, -1][number % 3],
                "retriever_version": "external-retriever-v1",
                "generator_version": "external-llm-v1",
                "latency_ms": float(rng.uniform(200, 2000)),
                "metadata": {"app": "bench", "session": number // 10},
            }
            if stamped:
                turn["created_at"] = (logged_at + timedelta(seconds=number)).isoformat()
            turns.append(turn)
        bodies.append(json.dumps({"turns": turns}))
    return bodies


def post_batch(client, *, slug: str, body: str, expect_created: bool) -> float:
    started = time.perf_counter()
    response = client.post(f"/api/v1/kbs/{slug}/turns", body, content_type="application/json")
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"POST turns answered {response.status_code}: {response.content[:500]!r}")
    answer = response.json()
    if (answer["created"] > 0) != expect_created or (answer["existing"] > 0) == expect_created:
        raise RuntimeError(f"unexpected answer (created {answer['created']}, existing {answer['existing']})")
    return seconds


def turns_benchmark(args, knowledge_base) -> list:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.test import Client

    from curation.services.accounts import membership_add
    from knowledge.models import RetrievedPassage, Turn
    from knowledge.services.tokens import api_token_create

    # A token is worth no more than its user's current rights: the shipper's user is a curator
    # of the knowledge base (as bench/load.py's app user).
    user = get_user_model().objects.create_user(username="bench-ingest")
    user.groups.add(Group.objects.get(name="curator"))
    membership_add(knowledge_base=knowledge_base, username=user.username)
    _, plain = api_token_create(user=user, name="bench", knowledge_bases=[knowledge_base])
    client = Client(HTTP_AUTHORIZATION=f"Bearer {plain}")
    rng = np.random.default_rng(args.seed)
    stamped = turn_batches(knowledge_base=knowledge_base, args=args, rng=rng, prefix="stamped", stamped=True)
    unstamped = turn_batches(knowledge_base=knowledge_base, args=args, rng=rng, prefix="unstamped", stamped=False)
    payload_mb = sum(len(b) for b in stamped) / 2**20
    print(f"turns: {args.turns} per pass in {len(stamped)} batches, {payload_mb:.1f} MB of JSON", flush=True)

    timings: dict[str, list[float]] = {"with": [], "without": [], "again": []}
    # New batches with and without created_at alternate, so a change in CPU competition from
    # other programs falls on both alike.
    for with_time, without_time in zip(stamped, unstamped):
        timings["with"].append(post_batch(client, slug=knowledge_base.slug, body=with_time, expect_created=True))
        timings["without"].append(post_batch(client, slug=knowledge_base.slug, body=without_time, expect_created=True))
    for body in stamped:
        timings["again"].append(post_batch(client, slug=knowledge_base.slug, body=body, expect_created=False))
    labels = {
        "with": "new turns, with created_at",
        "without": "new turns, without created_at",
        "again": "the with-created_at batches again (all existing)",
    }
    rows = []
    for key, seconds in timings.items():
        total = sum(seconds)
        rows.append([
            labels[key], len(seconds), f"{total:.1f}", f"{args.turns / total:.0f}",
            f"{args.turns * args.passages_per_turn / total:.0f}",
            f"{harness.percentile_ms(seconds, 50):.0f} / {harness.percentile_ms(seconds, 95):.0f}",
        ])
    stored = Turn.objects.filter(knowledge_base=knowledge_base).count()
    passages = RetrievedPassage.objects.filter(turn__knowledge_base=knowledge_base).count()
    if (stored, passages) != (2 * args.turns, 2 * args.turns * args.passages_per_turn):
        raise RuntimeError(f"{stored} turns and {passages} passages stored")
    return rows


def main() -> None:
    args = parse_args()
    # WhiteNoise warns on each client request that collectstatic has not run; irrelevant here.
    warnings.filterwarnings("ignore", message="No directory at")
    database = harness.django_setup(database_name=args.database)
    from django.urls import get_resolver

    print(harness.table("Environment", ["", ""], harness.environment()), flush=True)
    worker = harness.Worker()
    slugs = ["bench-ingest-warmup", "bench-ingest"]
    try:
        # The API's URLconf imports every view; a broken one should stop the run now, not after (a).
        get_resolver().url_patterns
        worker.start()
        contention = harness.Contention(database_name=database.name, own_pids={worker.process.pid}).start()
        rate_rows, breakdown_rows, knowledge_base = documents_benchmark(args, worker)
        breakdown_rows.append(["other programs' running threads during (a), mean", contention.stop()])
        worker.stop()  # part (b) needs no worker; stopped so it competes for no CPU
        print(harness.table(
            f"(a) Embedding {args.documents} SciFact abstracts: chunks per second",
            ["", "wall s", "chunks/s", "CPU s", "chunks per CPU s"], rate_rows,
        ))
        print(harness.table("(a) Where the pipeline's time goes", ["", ""], breakdown_rows), flush=True)

        contention = harness.Contention(database_name=database.name).start()
        turn_rows = turns_benchmark(args, knowledge_base)
        print(harness.table(
            f"(b) POST /api/v1/kbs/{{kb}}/turns: {args.turns} turns per pass, {args.turns_per_batch} per batch, "
            f"{args.passages_per_turn} passages each",
            ["pass", "batches", "seconds", "turns/s", "passages/s", "per batch ms p50 / p95"], turn_rows,
        ))
        print(f"\nother programs' running threads during (b), mean: {contention.stop()}")
        print(f"1-minute load average at the end: {harness.load_average()} ({len(os.sched_getaffinity(0))} CPUs)")
    finally:
        worker.stop()
        if args.keep:
            print(f"\nKept database {database.name!r}; worker log: {worker.log_path}")
        else:
            worker.discard_log()
            if database.created:
                database.drop()
            else:
                from django.contrib.auth import get_user_model

                from knowledge.models import KnowledgeBase

                KnowledgeBase.objects.filter(slug__in=slugs).delete()
                get_user_model().objects.filter(username="bench-ingest").delete()


if __name__ == "__main__":
    main()
