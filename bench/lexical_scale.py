"""What lexical retrieval (BM25 in PostgreSQL, knowledge.selectors.passages_retrieve_lexical) costs
as a knowledge base grows: query latency, storage, and ingest time of the stored tsvector and its
GIN index, on SciFact abstracts repeated until the knowledge base holds --chunks chunks.

Repeating the corpus keeps the term statistics of real text (every document frequency and the
chunk count grow by the same factor, so the IDFs and the rankings stay those of one copy) while
the number of chunks a query touches grows with the size, which is what BM25's cost follows.
Chunks are written straight into the table (one abstract = one chunk, token count = its words),
so nothing is embedded: only the lexical side is measured.

    python bench/lexical_scale.py                       # 5,183 and 100,000 chunks
    python bench/lexical_scale.py --sizes 5183,20000    # quicker
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from bench.harness import SCIFACT, clock, load_scifact, say  # noqa: E402

SLUG = "lexical-scale"
K = 20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--sizes", default="5183,100000", help="chunk counts to measure at, ascending (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=200, help="SciFact train queries timed at each size (default: %(default)s)")
    parser.add_argument("--database", default="ragloop_bench_lexical")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    args.sizes = sorted(int(size) for size in args.sizes.split(","))
    return args


def main() -> None:
    args = parse_args()
    database = harness.django_setup(database_name=args.database)
    from django.db import connection

    from knowledge.models import Chunk, Document
    from knowledge.selectors import passages_retrieve_lexical
    from knowledge.services.knowledge_bases import knowledge_base_create

    print(harness.table("Environment", ["", ""], harness.environment()))
    rows = []
    try:
        data = load_scifact(args.data)
        abstracts = [d for d in data.documents if d.text.strip()]
        query_texts = [data.queries[q]["text"] for q in sorted(data.qrels, key=int)[: args.queries]]
        knowledge_base = knowledge_base_create(slug=SLUG)
        written = 0
        for size in args.sizes:
            started, before = time.perf_counter(), written
            while written < size:
                batch = min(5000, size - written)
                copy = written // len(abstracts)
                sources = [abstracts[(written + i) % len(abstracts)] for i in range(batch)]
                documents = Document.objects.bulk_create(
                    Document(knowledge_base=knowledge_base, external_id=f"{s.external_id}#{copy}-{written + i}", title=s.title,
                             text=s.text, content_hash="-")
                    for i, s in enumerate(sources)
                )  # fmt: skip
                Chunk.objects.bulk_create(
                    Chunk(document=d, knowledge_base=knowledge_base, order=0, text=s.text, token_count=len(s.text.split()))
                    for d, s in zip(documents, sources)
                )
                written += batch
            insert_seconds = time.perf_counter() - started
            with connection.cursor() as cursor:
                vacuum_started = time.perf_counter()
                cursor.execute("VACUUM ANALYZE curation_chunk")
                vacuum_seconds = time.perf_counter() - vacuum_started
                cursor.execute(
                    "SELECT pg_total_relation_size('curation_chunk'), pg_relation_size('chunk_text_search'), "
                    "(SELECT sum(pg_column_size(lexical_vector)) FROM curation_chunk), "
                    "(SELECT sum(pg_column_size(text)) FROM curation_chunk)"
                )
                table_bytes, gin_bytes, tsvector_bytes, text_bytes = cursor.fetchone()
            say(f"{written} chunks: written in {clock(insert_seconds)}, VACUUM ANALYZE {vacuum_seconds:.1f} s; timing "
                f"{len(query_texts)} queries")
            passages_retrieve_lexical(knowledge_base=knowledge_base, query=query_texts[0], k=K)  # warm the cache
            latencies, matched = [], []
            for text in query_texts:
                asked = time.perf_counter()
                passages_retrieve_lexical(knowledge_base=knowledge_base, query=text, k=K)
                latencies.append((time.perf_counter() - asked) * 1000)
            with connection.cursor() as cursor:
                for text in query_texts[:50]:
                    cursor.execute(
                        "SELECT count(*) FROM curation_chunk WHERE knowledge_base_id = %s AND lexical_vector @@ "
                        "replace(plainto_tsquery('english', %s)::text, ' & ', ' | ')::tsquery",
                        [knowledge_base.pk, text],
                    )
                    matched.append(cursor.fetchone()[0])
                cursor.execute(
                    "EXPLAIN (ANALYZE, BUFFERS) SELECT count(*) FROM curation_chunk WHERE knowledge_base_id = %s AND "
                    "lexical_vector @@ replace(plainto_tsquery('english', %s)::text, ' & ', ' | ')::tsquery",
                    [knowledge_base.pk, query_texts[0]],
                )
                plan = "\n".join(row[0] for row in cursor.fetchall())
            say(f"  plan of the match for one query:\n{plan}")
            rows.append([
                f"{written:,}", f"{np.median(latencies):.0f} ms", f"{np.percentile(latencies, 95):.0f} ms",
                f"{np.mean(matched) / written:.1%} ({np.mean(matched):,.0f})", f"{table_bytes / 2**20:,.0f} MiB",
                f"{tsvector_bytes / 2**20:,.0f} MiB (text {text_bytes / 2**20:,.0f} MiB)", f"{gin_bytes / 2**20:,.0f} MiB",
                f"{insert_seconds / (written - before) * 100_000:.0f} s",
            ])  # fmt: skip
        print(harness.table(
            f"BM25 in PostgreSQL, top {K} of {len(query_texts)} SciFact claims; 1-minute load {harness.load_average()}",
            ["chunks", "median query", "p95 query", "chunks matching a query (mean, of 50)", "table + indexes",
             "stored tsvectors", "GIN index", "writing 100k chunks (tsvector + GIN + rows)"],
            rows,
        ))  # fmt: skip
    finally:
        if args.keep:
            print(f"Kept database {database.name!r}.")
        elif database.created:
            database.drop()


if __name__ == "__main__":
    main()
