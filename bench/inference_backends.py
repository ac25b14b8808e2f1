"""Every embedding backend on the same texts in one process: chunks per CPU second, cosine to
torch, and (with --quality) dev nDCG@10 on SciFact.

Speed: the backends take turns on the same slices of chunk texts (round-robin, slice by slice),
so CPU competition from other programs, which comes and goes, falls on all of them alike. CPU
seconds are this process's (time.process_time, all threads): other programs do not count.

Quality (--quality): the corpus (--abstracts, 0 = all 5,183) is chunked as `documents_ingest`
chunks it (the knowledge base defaults: 200 tokens, 40 overlap), every chunk is embedded by every
backend, and the dev queries (bench/retriever_quality.py's 80/20 split of the train-qrels queries,
seed 0; the BEIR test queries are never read) are encoded by the same backend and scored by exact
cosine search over the chunks: each document at its best chunk's rank, nDCG@10 at the document
level, with a paired bootstrap interval of each backend's difference to torch. Exact search, so
the figures isolate the backend (no HNSW approximation); they are not the same numbers as
retriever_quality's, which search through pgvector's HNSW index.

    python -m bench.inference_backends --abstracts 64 --rounds 1         # speed only, quick
    python -m bench.inference_backends --abstracts 0 --quality           # whole corpus, speed + nDCG
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from rag.embedding import EMBEDDING_BACKENDS, Embedder, base_retriever_path  # noqa: E402

CORPUS = Path("/work/shared/datasets/scifact/corpus.jsonl")
SLICE = 64  # texts per turn of a backend (the worker's encode batch)
CHUNKS_PER_QUERY = 20  # as bench/retriever_quality.py: enough chunks to fill 10 documents


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--abstracts", type=int, default=64, help="SciFact abstracts, 0 = the whole corpus (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the texts (speed only; default: %(default)s)")
    parser.add_argument("--backends", default=",".join(EMBEDDING_BACKENDS))
    parser.add_argument("--export-root", default="")
    parser.add_argument("--quality", action="store_true", help="chunk the corpus and score dev nDCG@10 per backend")
    parser.add_argument("--dev-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def abstract_texts(count: int) -> list[str]:
    texts = []
    with CORPUS.open() as handle:
        for line in handle:
            row = json.loads(line)
            texts.append(f"{row['title']}\n{row['text']}")
            if count and len(texts) >= count:
                break
    return texts


def corpus_chunks(count: int, embedder: Embedder) -> tuple[list[str], list[str]]:
    """(chunk texts, their document ids): the corpus chunked as documents_ingest does by default."""
    from rag.chunking import chunk_budget, chunk_text

    data = harness.load_scifact(harness.SCIFACT)
    documents = data.documents[:count] if count else data.documents
    max_tokens = chunk_budget(embedder.max_tokens, requested=200)
    overlap = min(40, max(0, max_tokens // 2 - 1))
    counter = embedder.token_counter()
    texts, owners = [], []
    for document in documents:
        for chunk in chunk_text(document.text, counter=counter, max_tokens=max_tokens, overlap_tokens=overlap):
            texts.append(chunk.text)
            owners.append(document.external_id)
    return texts, owners


def encode_alternating(embedders: dict[str, Embedder], texts: list[str], *, rounds: int) -> tuple[dict, dict]:
    """Each backend's vectors of `texts` and its CPU seconds, the backends taking turns per slice."""
    vectors = {backend: [] for backend in embedders}
    cpu = dict.fromkeys(embedders, 0.0)
    for round_number in range(rounds):
        for start in range(0, len(texts), SLICE):
            for backend, embedder in embedders.items():
                began = time.process_time()
                out = embedder.encode_documents(texts[start : start + SLICE])
                cpu[backend] += time.process_time() - began
                if round_number == 0:
                    vectors[backend].append(out)
            if start // SLICE % 20 == 0:
                harness.say(f"round {round_number}: {start + SLICE} of {len(texts)} texts")
    return {b: np.concatenate(v) for b, v in vectors.items()}, cpu


def dev_scores(embedder: Embedder, chunk_vectors: np.ndarray, owners: list[str], data, dev_ids: list[str]) -> dict[str, float]:
    """Per dev query, nDCG@10 at the document level by exact cosine search over the chunks."""
    from rag.metrics import retrieval_report

    queries = embedder.encode_queries([data.queries[q]["text"] for q in dev_ids])
    similarities = queries @ chunk_vectors.T
    runs = {}
    for query_id, row in zip(dev_ids, similarities):
        top = np.argpartition(-row, CHUNKS_PER_QUERY)[:CHUNKS_PER_QUERY]
        top = top[np.argsort(-row[top])]
        runs[query_id] = [owners[i] for i in top]  # rag.metrics counts a document at its first rank
    report = retrieval_report(runs=runs, qrels={q: data.qrels[q] for q in dev_ids}, ks=(1, 5, 10), rank_cutoff=10)
    return {q: f["ndcg@10"] for q, f in report["per_query"].items()}


def paired_interval(candidate: dict, base: dict, *, seed: int, resamples: int = 10_000) -> tuple[float, float, float]:
    ids = sorted(base)
    deltas = np.array([candidate[q] - base[q] for q in ids])
    rng = np.random.default_rng(seed)
    means = deltas[rng.integers(0, len(deltas), size=(resamples, len(deltas)))].mean(axis=1)
    return float(deltas.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    args = parse_args()
    import os

    import torch

    # harness.environment() reads the database's settings; this script needs none.
    print(f"CPUs usable: {len(os.sched_getaffinity(0))}, torch {torch.__version__}, threads per backend: 2")
    print(f"CPU: {harness.cpu_description()}")
    print(f"load average at start: {harness.load_average()}")
    root = Path(args.export_root or tempfile.mkdtemp(prefix="bench-exports-"))
    backends = args.backends.split(",")
    if "torch" not in backends:
        backends.insert(0, "torch")  # the reference of every comparison
    embedders = {}
    for backend in backends:
        started = time.process_time()
        embedders[backend] = Embedder(base_retriever_path(), backend=backend, export_root=root, device="cpu", threads=2)
        embedders[backend].encode_documents(["warm-up text"] * 8)
        harness.say(f"{backend}: loaded (export built: {embedders[backend].exported}) in {time.process_time() - started:.1f} CPU s")

    if args.quality:
        texts, owners = corpus_chunks(args.abstracts, embedders["torch"])
        unit = f"{len(texts)} chunks of {len(set(owners))} SciFact abstracts"
    else:
        texts, owners = abstract_texts(args.abstracts), []
        unit = f"{len(texts)} SciFact abstracts"
    vectors, cpu = encode_alternating(embedders, texts, rounds=args.rounds)

    scores = {}
    if args.quality:
        from bench.retriever_quality import split_queries

        data = harness.load_scifact(harness.SCIFACT)
        _, dev_ids = split_queries(data.qrels, dev_share=args.dev_share, seed=args.seed)
        for backend, embedder in embedders.items():
            scores[backend] = dev_scores(embedder, vectors[backend], owners, data, dev_ids)

    reference = vectors["torch"]
    rows = []
    for backend in backends:
        cosine = np.sum(vectors[backend] * reference, axis=1)
        rate = len(texts) * args.rounds / cpu[backend]
        row = [backend, f"{cpu[backend]:.1f}", f"{rate:.1f}", f"{rate / (len(texts) * args.rounds / cpu['torch']):.2f}x",
               f"{cosine.min():.5f}", f"{cosine.mean():.5f}"]  # fmt: skip
        if scores:
            mean = np.mean(list(scores[backend].values()))
            if backend == "torch":
                row += [f"{mean:.4f}", "-"]
            else:
                delta, low, high = paired_interval(scores[backend], scores["torch"], seed=args.seed)
                row += [f"{mean:.4f}", f"{delta:+.4f} [{low:+.4f}, {high:+.4f}]"]
        rows.append(row)
    header = ["backend", "CPU s", "texts per CPU s", "vs torch", "cosine to torch min", "mean"]
    if scores:
        header += [f"dev nDCG@10 ({len(next(iter(scores.values())))} queries)", "vs torch, paired 95% CI"]
    print(harness.table(f"Embedding backends on {unit}, {args.rounds} round(s), alternating per slice of {SLICE}", header, rows))
    print(f"load average at end: {harness.load_average()}")


if __name__ == "__main__":
    main()
