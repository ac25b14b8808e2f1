"""Chunks per CPU second and cosine to torch of every embedding backend, alternating the
backends on the same SciFact abstracts in one process (CPU seconds: time.process_time, all
threads, so other processes on a busy box do not count).

    python -m bench.inference_backends --abstracts 64 --rounds 1
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from rag.embedding import EMBEDDING_BACKENDS, Embedder, base_retriever_path

CORPUS = Path("/work/shared/datasets/scifact/corpus.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--abstracts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--backends", default=",".join(EMBEDDING_BACKENDS))
    parser.add_argument("--export-root", default="")
    args = parser.parse_args()
    texts = []
    with CORPUS.open() as handle:
        for line in handle:
            row = json.loads(line)
            texts.append(f"{row['title']}\n{row['text']}")
            if len(texts) >= args.abstracts:
                break
    root = Path(args.export_root or tempfile.mkdtemp(prefix="bench-exports-"))
    backends = args.backends.split(",")
    embedders = {}
    for backend in backends:
        started = time.process_time()
        embedders[backend] = Embedder(base_retriever_path(), backend=backend, export_root=root, device="cpu", threads=2)
        print(f"{backend}: loaded (export built: {embedders[backend].exported}) in {time.process_time() - started:.1f} CPU s")
    reference = embedders["torch"].encode_documents(texts) if "torch" in embedders else None
    for round_number in range(args.rounds):
        for backend in backends:
            started = time.process_time()
            vectors = embedders[backend].encode_documents(texts)
            cpu = time.process_time() - started
            cosine = np.sum(vectors * reference, axis=1) if reference is not None else np.array([np.nan])
            print(
                f"round {round_number} {backend:14s} {len(texts) / cpu:6.1f} chunks/CPU s  "
                f"cosine to torch min {cosine.min():.5f} mean {cosine.mean():.5f}"
            )


if __name__ == "__main__":
    main()
