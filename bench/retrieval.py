"""Top-k retrieval latency and HNSW recall at scale, measured around the real
`knowledge.selectors.passages_retrieve`, on synthetic 384-d chunk vectors in a database of its own.

For each size: load a knowledge base with N synthetic chunks, time queries on the exact path
(no index), build the space's HNSW index with the production service, time the same queries
on the HNSW path and compare their top-k with the exact results (recall@k).

    python bench/retrieval.py                       # 10k and 100k chunks, 200 queries
    python bench/retrieval.py --sizes 20000 --queries 100 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402

QUERIES_PATH = Path("/work/shared/datasets/scifact/queries.jsonl")
DIMENSIONS = 384
CHUNK_TEXT = "repeat('Synthetic passage text for the retrieval benchmark. ', 18)"  # ~1 kB, like a real chunk


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="chunk counts, comma-separated (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=200, help="vector queries per path, for latency and recall (default: %(default)s)")
    parser.add_argument("--text-queries", type=int, default=50,
                        help="SciFact claims sent through the whole selector, model included (default: %(default)s)")
    parser.add_argument("-k", type=int, default=10, help="passages per query (default: %(default)s)")
    parser.add_argument("--data", choices=["clustered", "uniform"], default="clustered",
                        help="clustered: normalised(centroid + noise), queries drawn alike; uniform: random unit vectors")
    parser.add_argument("--chunks-per-cluster", type=int, default=500, help="clustered data: mean cluster size (default: %(default)s)")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="clustered data: length of the noise added to a unit centroid (default: %(default)s)")
    parser.add_argument("--chunks-per-document", type=int, default=4, help="(default: %(default)s)")
    parser.add_argument("--ef-search", default="40,100,200",
                        help="hnsw.ef_search values for the raw-SQL sweep; 'none' to skip (default: %(default)s)")
    parser.add_argument("--maintenance-work-mem", default="",
                        help="maintenance_work_mem of the index build, e.g. 2560MB "
                             "(default: RAGLOOP_HNSW_BUILD_MEMORY, as production builds it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database", default="ragloop_bench_retrieval",
                        help="database created on the embedded server (ignored when DATABASE_URL is set)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database (or knowledge bases) afterwards")
    return parser.parse_args()


# --- synthetic data -----------------------------------------------------------------------


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


@dataclass
class Corpus:
    vectors: np.ndarray
    queries: np.ndarray
    description: str


def synthetic_corpus(*, size: int, queries: int, args: argparse.Namespace, rng: np.random.Generator) -> Corpus:
    if args.data == "uniform":
        return Corpus(
            vectors=unit_rows(rng.standard_normal((size, DIMENSIONS), dtype=np.float32)),
            queries=unit_rows(rng.standard_normal((queries, DIMENSIONS), dtype=np.float32)),
            description="uniform random unit vectors (data and queries)",
        )
    clusters = max(1, size // args.chunks_per_cluster)
    centroids = unit_rows(rng.standard_normal((clusters, DIMENSIONS), dtype=np.float32))
    scale = args.noise / np.sqrt(DIMENSIONS)  # so the noise vector has length ~ args.noise

    def draw(count: int) -> np.ndarray:
        members = centroids[rng.integers(0, clusters, count)]
        return unit_rows(members + scale * rng.standard_normal((count, DIMENSIONS), dtype=np.float32))

    return Corpus(
        vectors=draw(size),
        queries=draw(queries),
        description=f"clustered: {clusters} clusters, normalised(centroid + noise of length {args.noise}); "
        "queries drawn from the same clusters",
    )


def _copy_binary_embeddings(cursor, *, chunk_ids: np.ndarray, space_id: int, vectors: np.ndarray) -> None:
    """COPY (chunk_id, space_id, embedding) in PostgreSQL's binary format, built with numpy."""
    dims = vectors.shape[1]
    row = np.dtype([
        ("fields", ">i2"), ("chunk_len", ">i4"), ("chunk_id", ">i8"), ("space_len", ">i4"), ("space_id", ">i8"),
        ("vector_len", ">i4"), ("dims", ">i2"), ("unused", ">i2"), ("values", ">f4", (dims,)),
    ])
    statement = "COPY curation_chunkembedding (chunk_id, space_id, embedding) FROM STDIN WITH (FORMAT BINARY)"
    with cursor.copy(statement) as copy:
        copy.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
        for start in range(0, len(chunk_ids), 10_000):
            stop = start + 10_000
            rows = np.zeros(len(chunk_ids[start:stop]), dtype=row)
            rows["fields"], rows["chunk_len"], rows["space_len"] = 3, 8, 8
            rows["chunk_id"], rows["space_id"] = chunk_ids[start:stop], space_id
            rows["vector_len"], rows["dims"] = 4 + 4 * dims, dims
            rows["values"] = vectors[start:stop]
            copy.write(rows.tobytes())
        copy.write(struct.pack(">h", -1))


def knowledge_base_load(*, slug: str, vectors: np.ndarray, chunks_per_document: int):
    """A knowledge base whose live space holds one embedded chunk per row of `vectors`."""
    from django.db import connection, transaction

    from knowledge.services.knowledge_bases import knowledge_base_create

    knowledge_base = knowledge_base_create(slug=slug, name=f"Retrieval benchmark ({len(vectors)} chunks)")
    space = knowledge_base.live_space
    documents = -(-len(vectors) // chunks_per_document)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO curation_document
                (knowledge_base_id, external_id, title, text, metadata, content_hash, created_at, updated_at)
            SELECT %s, 'synthetic-' || g, 'Synthetic document ' || g, '', '{}', md5(g::text), now(), now()
            FROM generate_series(1, %s) AS g
            """,
            [knowledge_base.pk, documents],
        )
        cursor.execute(
            f"""
            INSERT INTO curation_chunk (document_id, knowledge_base_id, "order", text, token_count)
            SELECT d.id, d.knowledge_base_id, o, {CHUNK_TEXT}, 200
            FROM curation_document d CROSS JOIN generate_series(0, %s) AS o
            WHERE d.knowledge_base_id = %s
            ORDER BY d.id, o
            LIMIT %s
            """,
            [chunks_per_document - 1, knowledge_base.pk, len(vectors)],
        )
        cursor.execute("SELECT id FROM curation_chunk WHERE knowledge_base_id = %s ORDER BY id", [knowledge_base.pk])
        chunk_ids = np.array([row[0] for row in cursor.fetchall()], dtype=np.int64)
        _copy_binary_embeddings(cursor.cursor, chunk_ids=chunk_ids, space_id=space.pk, vectors=vectors)
    with connection.cursor() as cursor:
        # What autovacuum would do soon after a bulk load; without statistics the planner guesses.
        cursor.execute("ANALYZE curation_document, curation_chunk, curation_chunkembedding")
    return knowledge_base, space, chunk_ids


# --- measuring ----------------------------------------------------------------------------


class GivenQueryVector:
    """Stands in for the embedder inside the selector, so a run times everything but the model."""

    vector: np.ndarray | None = None

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.vector[None, :]


class RetrievalStatement:
    """Times the selector's nearest-passages statement as it runs (a Django execute wrapper) and
    keeps the last one, so its plan can be shown."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.sql: str = ""
        self.params = None

    def __call__(self, execute, sql, params, many, context):
        if "AS nearest" not in sql:
            return execute(sql, params, many, context)
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds.append(time.perf_counter() - started)
            self.sql, self.params = sql, params


@dataclass
class PathFigures:
    path: str
    selector_seconds: list[float] = field(default_factory=list)
    statement_seconds: list[float] = field(default_factory=list)
    results: list[list[int]] = field(default_factory=list)
    text_seconds: list[float] = field(default_factory=list)
    embed_seconds: list[float] = field(default_factory=list)
    plan: str = ""


def selector_with_vectors(*, space, queries: np.ndarray, k: int, figures: PathFigures, warmup: int = 5) -> None:
    """Time passages_retrieve with the query vector given (no model), and its SQL statement alone."""
    from django.db import connection

    from knowledge import selectors

    given = GivenQueryVector()
    statement = RetrievalStatement()
    real_loader = selectors.load_embedder
    selectors.load_embedder = lambda path: given
    try:
        for vector in queries[:warmup]:
            given.vector = vector
            selectors.passages_retrieve(space=space, query="given vector", k=k)
        with connection.execute_wrapper(statement):
            for vector in queries:
                given.vector = vector
                started = time.perf_counter()
                passages = selectors.passages_retrieve(space=space, query="given vector", k=k)
                figures.selector_seconds.append(time.perf_counter() - started)
                figures.results.append([p.chunk_id for p in passages])
    finally:
        selectors.load_embedder = real_loader
    figures.statement_seconds = statement.seconds
    from django.conf import settings

    serving_ef_search = min(1000, max(settings.RAGLOOP_HNSW_EF_SEARCH, 2 * k))
    figures.plan = statement_plan(statement, ef_search=serving_ef_search if space.hnsw_index_built else None)


def statement_plan(statement: RetrievalStatement, *, ef_search: int | None) -> str:
    """How Postgres reads the embeddings table for the selector's statement, e.g. 'Index Scan using ...'."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        if ef_search:
            cursor.execute("SET LOCAL hnsw.ef_search = %s", [ef_search])
        cursor.execute("EXPLAIN " + statement.sql, statement.params)
        lines = [row[0].strip().removeprefix("->").strip() for row in cursor.fetchall()]
    scans = [line.split("  (")[0] for line in lines if "Scan" in line and "curation_chunkembedding" in line]
    return "; ".join(scans) or lines[0]


def selector_with_texts(*, space, texts: list[str], k: int, figures: PathFigures) -> None:
    """Time the whole selector on real claims (model included), and the query embedding alone."""
    from knowledge.selectors import passages_retrieve
    from knowledge.services.knowledge_bases import retriever_model_path
    from rag.embedding import load_embedder

    embedder = load_embedder(retriever_model_path(space.model_reference))
    for text in texts[:5]:
        passages_retrieve(space=space, query=text, k=k)
    for text in texts:
        started = time.perf_counter()
        embedder.encode_queries([text])
        figures.embed_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        passages_retrieve(space=space, query=text, k=k)
        figures.text_seconds.append(time.perf_counter() - started)


def hnsw_subquery(space) -> str:
    """The selector's nearest-neighbour subquery on the HNSW path (kept in step with knowledge/selectors.py)."""
    dims = int(space.dimensions)
    return (
        f"SELECT e.chunk_id FROM curation_chunkembedding e WHERE e.space_id = {int(space.pk)} "
        f"ORDER BY e.embedding::vector({dims}) <=> %s::vector({dims}) LIMIT %s"
    )


def raw_sql_sweep(*, space, queries: np.ndarray, k: int, ef_search: int) -> tuple[list[float], list[list[int]]]:
    """The HNSW subquery alone (no joins, no Python objects) at a given ef_search."""
    from django.db import connection, transaction

    from knowledge.services.embeddings import as_vector_literal

    literals = [as_vector_literal(v) for v in queries]
    sql = hnsw_subquery(space)
    seconds, results = [], []
    with connection.cursor() as cursor:
        for index, literal in enumerate([*literals[:5], *literals]):
            with transaction.atomic():
                cursor.execute("SET LOCAL hnsw.ef_search = %s", [ef_search])
                started = time.perf_counter()
                cursor.execute(sql, [literal, k])
                ids = [row[0] for row in cursor.fetchall()]
                elapsed = time.perf_counter() - started
            if index >= 5:
                seconds.append(elapsed)
                results.append(ids)
    return seconds, results


def recall_at_k(found: list[list[int]], truth: list[list[int]], k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def numpy_top_k(*, vectors: np.ndarray, chunk_ids: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    similarities = queries @ vectors.T
    top = np.argsort(-similarities, axis=1)[:, :k]
    return [chunk_ids[row].tolist() for row in top]


def index_build(space, *, maintenance_work_mem: str) -> tuple[float, list[str]]:
    """Build the space's HNSW index with the production service; returns seconds and server notices.

    The service sets the build session's maintenance_work_mem to RAGLOOP_HNSW_BUILD_MEMORY;
    `maintenance_work_mem` replaces that setting for this build."""
    from django.conf import settings
    from django.db import connection

    from knowledge.services.embeddings import embedding_space_index_build

    connection.ensure_connection()
    notices: list[str] = []
    handler = lambda diagnostic: notices.append(diagnostic.message_primary)  # noqa: E731
    connection.connection.add_notice_handler(handler)
    shipped = settings.RAGLOOP_HNSW_BUILD_MEMORY
    try:
        if maintenance_work_mem:
            settings.RAGLOOP_HNSW_BUILD_MEMORY = maintenance_work_mem
        started = time.perf_counter()
        built = embedding_space_index_build(space_id=space.pk)
        seconds = time.perf_counter() - started
    finally:
        settings.RAGLOOP_HNSW_BUILD_MEMORY = shipped
        connection.connection.remove_notice_handler(handler)
    if not built:
        raise RuntimeError("the index service reported the index as already built")
    return seconds, notices


def index_megabytes(space) -> float:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(%s::regclass)", [space.hnsw_index_name])
        return cursor.fetchone()[0] / 2**20


# --- the run ------------------------------------------------------------------------------


def ms(seconds: list[float]) -> str:
    """p50 / p95, and the fastest run: on a machine shared with other work, the fastest run is
    the closest to the latency without competition for the CPUs."""
    return (f"{harness.percentile_ms(seconds, 50):.1f} / {harness.percentile_ms(seconds, 95):.1f} "
            f"(min {min(seconds) * 1000:.1f})")


def main() -> None:
    args = parse_args()
    # Every query is timed with its encoding: the process's query-vector cache would answer the
    # warm-up claims again from memory (bench/ask.py measures the cache).
    os.environ["RAGLOOP_QUERY_CACHE_SIZE"] = "0"
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    ef_values = [] if args.ef_search == "none" else [int(v) for v in args.ef_search.split(",")]
    database = harness.django_setup(database_name=args.database)
    from django.conf import settings

    from knowledge.models import EmbeddingSpace, KnowledgeBase

    texts = [json.loads(line)["text"] for line in QUERIES_PATH.read_text().splitlines()[: args.text_queries]]
    print(harness.table("Environment", ["", ""], harness.environment()))
    print(f"\nk = {args.k}; {args.queries} vector queries and {len(texts)} SciFact claims per path; "
          f"selector ef_search for k={args.k}: {min(1000, max(settings.RAGLOOP_HNSW_EF_SEARCH, 2 * args.k))}; "
          f"production switches to HNSW above RAGLOOP_EXACT_SEARCH_MAX_CHUNKS = {settings.RAGLOOP_EXACT_SEARCH_MAX_CHUNKS}")

    setup_rows, latency_rows, sweep_rows, contention_rows, slugs = [], [], [], [], []
    try:
        for size in sizes:
            rng = np.random.default_rng(args.seed + size)
            corpus = synthetic_corpus(size=size, queries=args.queries, args=args, rng=rng)
            print(f"\n[{size} chunks] data: {corpus.description}", flush=True)
            contention = harness.Contention(database_name=database.name).start()
            slug = f"bench-retrieval-{size}"
            slugs.append(slug)
            started = time.perf_counter()
            knowledge_base, space, chunk_ids = knowledge_base_load(
                slug=slug, vectors=corpus.vectors, chunks_per_document=args.chunks_per_document
            )
            load_seconds = time.perf_counter() - started
            print(f"[{size} chunks] loaded in {load_seconds:.1f} s", flush=True)

            exact = PathFigures(path="exact (no index)")
            selector_with_vectors(space=space, queries=corpus.queries, k=args.k, figures=exact)
            selector_with_texts(space=space, texts=texts, k=args.k, figures=exact)
            truth = numpy_top_k(vectors=corpus.vectors, chunk_ids=chunk_ids, queries=corpus.queries, k=args.k)
            exact_vs_numpy = recall_at_k(exact.results, truth, args.k)
            print(f"[{size} chunks] exact path done; its recall@{args.k} against numpy: {exact_vs_numpy:.4f}", flush=True)

            build_seconds, notices = index_build(space, maintenance_work_mem=args.maintenance_work_mem)
            space = EmbeddingSpace.objects.get(pk=space.pk)
            print(f"[{size} chunks] HNSW index built in {build_seconds:.1f} s", flush=True)
            notices = [n for n in notices if "does not exist, skipping" not in n]  # the service's DROP IF EXISTS
            for notice in notices:
                print(f"[{size} chunks]   server notice during the build: {notice}")

            hnsw = PathFigures(path="HNSW")
            selector_with_vectors(space=space, queries=corpus.queries, k=args.k, figures=hnsw)
            selector_with_texts(space=space, texts=texts, k=args.k, figures=hnsw)
            short = sum(1 for ids in hnsw.results if len(ids) < args.k)

            setup_rows.append([
                size, f"{load_seconds:.1f}", f"{build_seconds:.1f}", f"{index_megabytes(space):.0f}",
                args.maintenance_work_mem or settings.RAGLOOP_HNSW_BUILD_MEMORY, len(notices),
            ])
            for figures in (exact, hnsw):
                recall = recall_at_k(figures.results, exact.results, args.k)
                latency_rows.append([
                    size, figures.path, ms(figures.text_seconds), ms(figures.embed_seconds),
                    ms(figures.selector_seconds), ms(figures.statement_seconds), f"{recall:.3f}", figures.plan,
                ])
            if short:
                print(f"[{size} chunks] {short} HNSW queries returned fewer than {args.k} passages")
            for ef_search in ef_values:
                seconds, results = raw_sql_sweep(space=space, queries=corpus.queries, k=args.k, ef_search=ef_search)
                sweep_rows.append([size, ef_search, ms(seconds), f"{recall_at_k(results, exact.results, args.k):.3f}"])
            contention_rows.append([size, contention.stop()])
            print(f"[{size} chunks] HNSW path done", flush=True)

        print(f"\n1-minute load average at the end: {harness.load_average()} ({len(os.sched_getaffinity(0))} CPUs)")
        print(harness.table(
            "CPU competition: other programs' running threads, mean of samples every 0.5 s",
            ["chunks", "other programs' running threads"], contention_rows,
        ))
        print(harness.table("Loading and index build", [
            "chunks", "bulk load s", "HNSW build s (service)", "index MB", "maintenance_work_mem", "build notices",
        ], setup_rows))
        print(harness.table(
            f"Top-{args.k} latency, ms p50 / p95 (min) (recall@{args.k} against the exact path, on the vector queries)",
            ["chunks", "path", "selector, end to end (embed + SQL)", "query embedding only",
             "selector, vector given", "its SQL statement only", f"recall@{args.k}", "embeddings read by"],
            latency_rows,
        ))
        if sweep_rows:
            print(harness.table(
                "HNSW subquery alone (raw SQL, no joins) by hnsw.ef_search, ms p50 / p95 (min)",
                ["chunks", "ef_search", "latency", f"recall@{args.k}"], sweep_rows,
            ))
    finally:
        if args.keep:
            print(f"\nKept database {database.name!r} (knowledge bases {', '.join(slugs)}).")
        elif database.created:
            database.drop()
        else:
            from django.db import connection

            for space in EmbeddingSpace.objects.filter(knowledge_base__slug__in=slugs):
                with connection.cursor() as cursor:  # deleting a space leaves its partial index behind
                    cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {space.hnsw_index_name}")
            KnowledgeBase.objects.filter(slug__in=slugs).delete()


if __name__ == "__main__":
    main()
