"""Latency of the ask path through the HTTP API: `POST /retrieve` and `POST /ask` against a gunicorn
process, at 10k and 100k chunks of real MiniLM vectors, with and without the query-vector cache.

The vectors: `--real` SciFact abstracts (the start of each, as one chunk) are embedded with the
shipped MiniLM; a knowledge base of N chunks repeats them, each copy normalised(vector + Gaussian
noise of length `--noise`), so neighbourhoods look like real embeddings rather than isotropic
clusters. The queries are SciFact claims, encoded by the server as a client's would be. The HNSW
index is built with the production service.

Each request is sent one after another over one keep-alive connection. Two passes per endpoint:
the first sends claims the server has not seen (every query is encoded: a cache miss), the
second sends the same claims again (the query-vector cache answers). The server's own split of
the time (query embedding, first-stage search, generation, storing the turn) is read from the
`Server-Timing` header the API sends, and the cache's hit rate from its `cache` counts.

    python bench/ask.py                              # 10k and 100k chunks, 100 requests per pass
    python bench/ask.py --sizes 10000 --requests 50 --keep
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from bench.retrieval import index_build, knowledge_base_load, unit_rows  # noqa: E402

CACHE = harness.REPO_ROOT / ".data" / "bench-cache"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="chunk counts, comma-separated (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=100, help="timed requests per endpoint and pass (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed requests first (default: %(default)s)")
    parser.add_argument("--real", type=int, default=2000, help="SciFact abstracts embedded for real (default: %(default)s)")
    parser.add_argument("--noise", type=float, default=0.3, help="length of the noise added to a repeated vector (default: %(default)s)")
    parser.add_argument("-k", type=int, default=10, help="passages per request (default: %(default)s)")
    parser.add_argument("--backends", default="torch,onnx-int8",
                        help="query-embedding backends, each with a fresh server and cache (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="gunicorn threads (one worker) (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database", default="ragloop_bench_ask")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")
    return parser.parse_args()


def real_vectors(count: int) -> np.ndarray:
    """MiniLM vectors of the first `count` SciFact abstracts (title and text), cached on disk."""
    from knowledge.services.knowledge_bases import BASE_MODEL_REFERENCE, retriever_model_path
    from rag.embedding import load_embedder

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"scifact-minilm-{count}.npy"
    if path.exists():
        return np.load(path)
    documents = harness.load_scifact(harness.SCIFACT).documents[:count]
    harness.say(f"embedding {len(documents)} SciFact abstracts (cached in {path} afterwards)")
    embedder = load_embedder(retriever_model_path(BASE_MODEL_REFERENCE))
    vectors = embedder.encode_documents([f"{d.title}\n{d.text}" for d in documents])
    np.save(path, vectors)
    return vectors


def repeated_with_noise(real: np.ndarray, *, size: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """`size` unit vectors: the real ones in turn, each copy moved by Gaussian noise of length `noise`."""
    copies = real[np.arange(size) % len(real)]
    jitter = rng.standard_normal(copies.shape, dtype=np.float32)
    jitter *= noise / np.linalg.norm(jitter, axis=1, keepdims=True)
    return unit_rows(copies + jitter)


class Client:
    """One keep-alive HTTP connection, as an app's client library holds one."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def post(self, path: str, body: dict) -> tuple[float, dict, dict[str, float], dict[str, int]]:
        """(seconds, parsed body, Server-Timing durations in ms by stage, the server's cache counts)."""
        started = time.perf_counter()
        self.connection.request("POST", path, body=json.dumps(body), headers=self.headers)
        response = self.connection.getresponse()
        raw = response.read()
        seconds = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}: {raw[:300]!r}")
        durations, cache = server_timing(response.getheader("Server-Timing", ""))
        return seconds, json.loads(raw), durations, cache


def server_timing(header: str) -> tuple[dict[str, float], dict[str, int]]:
    """`embed;dur=3.1, first_stage;dur=1.2, cache;desc="hits=4 misses=9 entries=9"` ->
    ({"embed": 3.1, "first_stage": 1.2}, {"hits": 4, "misses": 9, "entries": 9})."""
    durations, cache = {}, {}
    for entry in filter(None, (part.strip() for part in header.split(", "))):
        name, _, parameter = entry.partition(";")
        if name == "cache":
            cache = {k: int(v) for k, v in (pair.split("=") for pair in parameter.removeprefix('desc="').rstrip('"').split())}
        elif parameter.startswith("dur="):
            durations[name] = float(parameter.removeprefix("dur="))
    return durations, cache


def start_server(port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": harness.SETTINGS_MODULE}
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", "1", "--threads", str(threads), "--timeout", "120"],
        cwd=harness.REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _answers(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/login/")
        connection.getresponse().read()
        return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def figures(label: str, size: int, backend: str, seconds: list[float], timings: list[dict[str, float]], caches: list[dict[str, int]]) -> list:
    stages = ("embed", "first_stage", "generate", "store")
    split = []
    for stage in stages:
        values = [t[stage] / 1000 for t in timings if stage in t]
        split.append(f"{harness.percentile_ms(values, 50):.1f}" if values else "-")
    # The server's counts are cumulative: the pass's own lookups are the difference over it.
    hits = caches[-1]["hits"] - caches[0]["hits"] if len(caches) > 1 else 0
    lookups = (caches[-1]["hits"] + caches[-1]["misses"]) - (caches[0]["hits"] + caches[0]["misses"]) if len(caches) > 1 else 0
    return [
        size, backend, label, len(seconds),
        f"{harness.percentile_ms(seconds, 50):.1f}", f"{harness.percentile_ms(seconds, 95):.1f}", f"{min(seconds) * 1000:.1f}",
        *split, f"{hits / lookups:.2f}" if lookups else "-",
    ]  # fmt: skip


def serve_and_time(args, *, size, backend, port, token, claims, database, knowledge_base, contention_rows) -> list:
    """A fresh gunicorn (empty query cache) on the space's current backend: both endpoints, both passes."""
    from knowledge.models import Turn

    needed = args.warmup + args.requests
    rows = []
    server = start_server(port, args.threads)
    try:
        harness.wait_until(lambda: _answers(port), timeout=120, message="the web server")
        workers = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        contention = harness.Contention(database_name=database.name, own_pids={server.pid, *map(int, workers)}).start()
        client = Client(port, token)
        base = f"/api/v1/kbs/{knowledge_base.slug}"
        # Each endpoint gets its own claims, so its first pass misses the cache.
        for offset, (endpoint, label) in enumerate([("retrieve", "/retrieve"), ("ask", "/ask")]):
            own = claims[offset * needed : (offset + 1) * needed]
            for claim in own[: args.warmup]:
                client.post(f"{base}/{endpoint}", {"query": claim, "k": args.k})
            timed = own[args.warmup :]
            for pass_label in ("new claims (cache miss)", "same claims again (cache hit)"):
                seconds, timings, caches, turn_ids = [], [], [], []
                for claim in timed:
                    elapsed, body, durations, cache = client.post(f"{base}/{endpoint}", {"query": claim, "k": args.k})
                    seconds.append(elapsed)
                    timings.append(durations)
                    caches.append(cache)
                    if endpoint == "ask":
                        turn_ids.append(body["turn_id"])
                rows.append(figures(f"{label}, {pass_label}", size, backend, seconds, timings, caches))
                if turn_ids:
                    stored = Turn.objects.filter(pk__in=turn_ids).count()
                    if stored != len(turn_ids):
                        raise RuntimeError(f"{len(turn_ids)} asks answered but {stored} turns stored")
                harness.say(f"[{size} chunks, {backend}] {label}, {pass_label}: p95 {harness.percentile_ms(seconds, 95):.1f} ms")
        contention_rows.append([size, backend, contention.stop()])
    finally:
        server.terminate()
        server.wait(timeout=30)

    return rows


def main() -> None:
    args = parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    database = harness.django_setup(database_name=args.database)
    harness.broker_in_memory()

    from django.contrib.auth import get_user_model

    from knowledge.models import EmbeddingSpace
    from knowledge.services.knowledge_bases import space_embedder
    from knowledge.services.tokens import api_token_create

    print(harness.table("Environment", ["", ""], harness.environment()))
    print(f"load average at start: {harness.load_average()}")
    real = real_vectors(args.real)
    claims = [row["text"] for row in harness.load_scifact(harness.SCIFACT).queries.values()]
    needed = args.warmup + args.requests
    if len(claims) < 2 * needed:
        raise SystemExit(f"{len(claims)} SciFact claims are too few for {needed} requests per endpoint")
    # A token is worth no more than its user's rights: an admin of the benchmark's knowledge bases.
    user = get_user_model().objects.create_superuser("bench-ask")
    rows, contention_rows = [], []
    port = _free_port()
    try:
        for size in sizes:
            rng = np.random.default_rng(args.seed + size)
            vectors = repeated_with_noise(real, size=size, noise=args.noise, rng=rng)
            harness.say(f"[{size} chunks] loading")
            knowledge_base, space, _ = knowledge_base_load(slug=f"bench-ask-{size}", vectors=vectors, chunks_per_document=4)
            build_seconds, _ = index_build(space, maintenance_work_mem="")
            space = EmbeddingSpace.objects.get(pk=space.pk)
            harness.say(f"[{size} chunks] HNSW built in {build_seconds:.1f} s (index: {space.hnsw_index_built})")
            _, token = api_token_create(user=user, name=f"bench-{size}", knowledge_bases=[knowledge_base])
            for backend in args.backends.split(","):
                # Set directly, not through embedding_space_backend_set: its drift check compares a
                # backend's vectors of the chunks' texts with the stored ones, and these stored
                # vectors are real ones moved by noise. The export is built here, before the
                # server starts, so no request waits for it.
                EmbeddingSpace.objects.filter(pk=space.pk).update(inference_backend=backend)
                space = EmbeddingSpace.objects.get(pk=space.pk)
                space_embedder(space)
                rows.extend(serve_and_time(args, size=size, backend=backend, port=port, token=token, claims=claims,
                                           database=database, knowledge_base=knowledge_base, contention_rows=contention_rows))  # fmt: skip

        print()
        print(harness.table(
            f"Latency per request over HTTP, ms (k={args.k}, one request at a time, gunicorn 1 worker x {args.threads} threads; "
            f"{len(real)} real MiniLM vectors repeated with noise {args.noise}); server split p50 from Server-Timing",
            ["chunks", "backend", "request", "n", "p50", "p95", "min", "embed p50", "first stage p50", "generate p50", "store p50", "cache hit rate"],
            rows,
        ))  # fmt: skip
        print(harness.table("CPU competition: other programs' running threads, mean", ["chunks", "backend", "threads"], contention_rows))
        print(f"load average at end: {harness.load_average()}")
    finally:
        if not args.keep:
            database.drop()


if __name__ == "__main__":
    main()
