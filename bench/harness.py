"""What the benchmarks share: a database and Redis index of their own, a real Celery worker
process, the environment report, and latency statistics printed as small tables.

Import this module and call `django_setup` before importing anything from the Django apps:
it points DATABASE_URL and REDIS_URL at the benchmark's own database and Redis index first.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_REDIS_DB = 2  # the app uses 0, the test suite 1
SETTINGS_MODULE = "bench.settings"
# The model-loading progress bars of transformers would garble the printed tables.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def _embedded_urls():
    from config import devservices

    return devservices.service_urls() or devservices.start()


@dataclass
class BenchDatabase:
    """The database a benchmark runs on; `created` means this run made it and may drop it."""

    url: str
    name: str
    admin_url: str | None
    created: bool

    def drop(self) -> None:
        if not self.created:
            return
        from django.db import connections

        connections.close_all()
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def django_setup(*, database_name: str) -> BenchDatabase:
    """Create and migrate the benchmark's database, then configure Django against it.

    With DATABASE_URL set, that database is used as it is (and never dropped); otherwise a
    fresh `database_name` is created on the embedded server, replacing one a `--keep` run left.
    """
    given = os.environ.get("DATABASE_URL")
    if given:
        database = BenchDatabase(url=given, name=urlsplit(given).path.lstrip("/"), admin_url=None, created=False)
    else:
        embedded = _embedded_urls().database_url
        admin_url = _with_path(embedded, "/postgres")
        import psycopg

        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database_name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{database_name}"')
        database = BenchDatabase(
            url=_with_path(embedded, f"/{database_name}"), name=database_name, admin_url=admin_url, created=True
        )
    redis_base = os.environ.get("REDIS_URL") or _embedded_urls().redis_url
    os.environ["DATABASE_URL"] = database.url
    os.environ["REDIS_URL"] = _with_path(redis_base, f"/{BENCH_REDIS_DB}")
    # Forced, not defaulted: the dev settings turn DEBUG on, which logs every query in memory.
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", interactive=False, verbosity=0)
    return database


# --- a real Celery worker -----------------------------------------------------------------


class Worker:
    """A `celery worker` process (solo pool, both queues) on the benchmark database and Redis index,
    started as tests/conftest.py starts one."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkdtemp(prefix="ragloop-bench-")) / "worker.log"

    def start(self) -> None:
        import redis

        redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()  # no stale messages from an earlier run
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE, "RAGLOOP_LOG_LEVEL": "INFO"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default,embedding",
             "--pool", "solo", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
            cwd=REPO_ROOT,
            env=env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def cpu_seconds(self) -> float:
        """CPU time the worker process has used so far (user + system, all its threads)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def discard_log(self) -> None:
        shutil.rmtree(self.log_path.parent, ignore_errors=True)

    def task_totals(self) -> dict[str, tuple[int, float]]:
        """Task name -> (runs that succeeded, their summed run time in seconds), from the log."""
        totals: dict[str, tuple[int, float]] = {}
        for name, seconds in re.findall(r"Task ([\w.]+)\[[^\]]+\] succeeded in ([0-9.]+)s", self.log()):
            count, total = totals.get(name, (0, 0.0))
            totals[name] = (count + 1, total + float(seconds))
        return totals

    def task_seconds(self, task_name: str) -> list[float]:
        """Run times the worker logged for a task ("Task <name>[id] succeeded in 1.23s")."""
        pattern = re.compile(rf"Task {re.escape(task_name)}\[[^\]]+\] succeeded in ([0-9.]+)s")
        return [float(seconds) for seconds in pattern.findall(self.log())]


def wait_until(condition, *, timeout: float, interval: float = 0.05, message: str, worker: Worker | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if worker is not None and not worker.alive():
            raise RuntimeError(f"the worker exited while waiting for {message}:\n{worker.log()[-3000:]}")
        time.sleep(interval)
    tail = f"\n{worker.log()[-3000:]}" if worker is not None else ""
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {message}{tail}")


# --- progress lines -----------------------------------------------------------------------

STARTED = time.perf_counter()


def say(message: str) -> None:
    print(f"[{clock(time.perf_counter() - STARTED)}] {message}", flush=True)


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


# --- SciFact ------------------------------------------------------------------------------

SCIFACT = REPO_ROOT.parent / "shared" / "datasets" / "scifact"


@dataclass
class SciFact:
    documents: list  # rag.documents.SourceDocument, corpus order
    queries: dict[str, dict]  # query id -> queries.jsonl row
    qrels: dict[str, dict[str, int]]  # train qrels only: query id -> {document id: score}


def load_scifact(folder: Path) -> SciFact:
    """The corpus (parsed as an upload would be), the queries and qrels/train.tsv; never the test qrels."""
    from rag.documents import parse_path

    documents = parse_path(folder / "corpus.jsonl")
    queries = {}
    for line in (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            queries[str(row["_id"])] = row
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate((folder / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()):
        columns = line.split("\t")
        if number == 0 and columns[-1].strip() == "score":
            continue
        query_id, document_id, score = (c.strip() for c in columns)
        qrels.setdefault(query_id, {})[document_id] = int(score)
    return SciFact(documents=documents, queries=queries, qrels=qrels)


def pick_documents(data: SciFact, *, max_docs: int, seed: int) -> list:
    """Every cited document, then a seeded sample of the rest up to max_docs; in corpus order."""
    cited = {document for judged in data.qrels.values() for document in judged}
    if max_docs <= 0 or max_docs >= len(data.documents):
        return list(data.documents)
    others = [d.external_id for d in data.documents if d.external_id not in cited]
    extra = set(random.Random(seed).sample(others, max(0, min(len(others), max_docs - len(cited)))))
    return [d for d in data.documents if d.external_id in cited or d.external_id in extra]


def write_beir_files(
    data: SciFact, query_ids: list[str], folder: Path, *, name: str = "train", qrels: dict[str, dict[str, int]] | None = None
) -> tuple[Path, Path]:
    """BEIR queries and qrels files of these queries, for `import_labels --beir-queries --beir-qrels`;
    the judgments are SciFact's unless `qrels` gives others."""
    qrels = data.qrels if qrels is None else qrels
    queries_path, qrels_path = folder / f"{name}-queries.jsonl", folder / f"{name}-qrels.tsv"
    with queries_path.open("w", encoding="utf-8") as out:
        for query_id in query_ids:
            row = data.queries[query_id]
            out.write(json.dumps({"_id": query_id, "text": row["text"], "metadata": {}}) + "\n")
    with qrels_path.open("w", encoding="utf-8") as out:
        out.write("query-id\tcorpus-id\tscore\n")
        for query_id in query_ids:
            for document_id, score in qrels[query_id].items():
                out.write(f"{query_id}\t{document_id}\t{score}\n")
    return queries_path, qrels_path


# --- in-process workers -------------------------------------------------------------------


def broker_in_memory() -> None:
    """Send the services' Celery messages (embedding dispatch, training, evaluation, policy checks)
    to an in-memory broker: the benchmark does the work in its own process, and another
    benchmark's worker reading the shared Redis index must not pick them up."""
    from config.celery import app as celery_app

    celery_app.conf.broker_url = "memory://localhost/"


def embed_space(space, *, label: str) -> tuple[int, float]:
    """Embed the space's missing chunks in this process, batch by batch, as the embedding workers
    would (tests/conftest.py embed_everything_now); returns (chunks, seconds)."""
    from django.conf import settings

    from knowledge.models import EmbeddingJob
    from knowledge.services.embeddings import chunk_batch_embed, embedding_job_start

    job = embedding_job_start(space=space) or EmbeddingJob.objects.filter(space=space).order_by("-pk").first()
    missing = list(space.knowledge_base.chunks.exclude(embeddings__space=space).order_by("pk").values_list("pk", flat=True))
    if not missing:
        return 0, 0.0
    size = settings.RAGLOOP_EMBED_BATCH_SIZE
    started = time.perf_counter()
    done = 0
    for start in range(0, len(missing), size):
        batch = missing[start : start + size]
        chunk_batch_embed(job_id=job.pk, chunk_ids=batch)
        done += len(batch)
        elapsed = time.perf_counter() - started
        rate = done / elapsed
        say(f"  {label}: {done}/{len(missing)} chunks embedded, {rate:.1f} chunks/s, "
            f"about {clock((len(missing) - done) / rate)} left")
    job.refresh_from_db()
    if job.status != EmbeddingJob.Status.SUCCEEDED:
        raise RuntimeError(f"embedding job {job.pk} of {label} is {job.status} after embedding every chunk: {job.error}")
    return len(missing), time.perf_counter() - started


class RunWatcher:
    """Prints a training run's progress and its newest log line from the run row, as the UI reads it."""

    def __init__(self, run_id: int, *, label: str, every: float = 20.0) -> None:
        self.run_id, self.label, self.every = run_id, label, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        from django.db import connection

        from training.models import TrainingRun

        started = time.perf_counter()
        try:
            while not self._stop.wait(self.every):
                run = TrainingRun.objects.filter(pk=self.run_id).only("progress", "log", "status").first()
                if run is None:
                    continue
                lines = [line for line in run.log.splitlines() if line.strip()]
                newest = lines[-1][20:] if lines else ""
                elapsed = time.perf_counter() - started
                eta = f", about {clock(elapsed / run.progress * (1 - run.progress))} left" if run.progress > 0.06 else ""
                say(f"  {self.label}: {run.progress:.0%}{eta} - {newest}")
        finally:
            connection.close()

    def __enter__(self) -> "RunWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --- environment and figures --------------------------------------------------------------


def cpu_description() -> str:
    """The CPU and its int8 instruction sets (the int8 backends' speed depends on them)."""
    from rag.embedding_backends import cpu_description as described

    return described()


def environment() -> list[tuple[str, str]]:
    import django
    import sentence_transformers
    import torch
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        server_version = cursor.fetchone()[0]
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        pgvector_version = cursor.fetchone()[0]
        cursor.execute("SHOW maintenance_work_mem")
        maintenance_work_mem = cursor.fetchone()[0]
        cursor.execute("SHOW shared_buffers")
        shared_buffers = cursor.fetchone()[0]
        cursor.execute("SHOW max_parallel_maintenance_workers")
        parallel_maintenance = cursor.fetchone()[0]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        ("CPUs (os.cpu_count / usable)", f"{os.cpu_count()} / {len(os.sched_getaffinity(0))}"),
        ("CPU", cpu_description()),
        ("load average at start (1, 5, 15 min)", load),
        ("torch threads", str(torch.get_num_threads())),
        ("GPU", "yes" if torch.cuda.is_available() else "none"),
        ("Python", platform.python_version()),
        ("Django", django.get_version()),
        ("torch / sentence-transformers", f"{torch.__version__} / {sentence_transformers.__version__}"),
        ("PostgreSQL / pgvector", f"{server_version} / {pgvector_version}"),
        ("shared_buffers / maintenance_work_mem", f"{shared_buffers} / {maintenance_work_mem}"),
        ("max_parallel_maintenance_workers", parallel_maintenance),
        ("database", connection.settings_dict["NAME"]),
    ]


class Contention:
    """Samples, twice a second, how many threads of other programs are running or runnable.

    On a 2-core machine shared with other work (a test suite, a CI clone), a mean of 1 means
    about one core was taken from the benchmark. Ours: this process, the worker we started,
    and the Postgres backends (and their parallel workers) of the benchmark database.
    """

    def __init__(self, *, database_name: str, own_pids: set[int] | None = None) -> None:
        self.database_name = database_name
        self.own_pids = own_pids if own_pids is not None else set()
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _ours(self, pid: int, cmdline: str, backends: set[int]) -> bool:
        if pid in self.own_pids or pid == os.getpid():
            return True
        if cmdline.startswith("postgres: ") and f" {self.database_name} " in cmdline:
            backends.add(pid)
            return True
        match = re.match(r"postgres: parallel worker for PID (\d+)", cmdline)
        return bool(match and int(match.group(1)) in backends)

    def _sample(self) -> int:
        backends: set[int] = set()
        running = 0
        for entry in sorted(Path("/proc").iterdir(), key=lambda p: (not p.name.isdigit(), len(p.name), p.name)):
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                if self._ours(int(entry.name), cmdline, backends):
                    continue
                for task in (entry / "task").iterdir():
                    state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    running += state == "R"
            except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
                continue
        return running

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append(self._sample())

    def start(self) -> "Contention":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> str:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.samples:
            return "n/a"
        busy = sum(1 for s in self.samples if s) / len(self.samples)
        return f"{np.mean(self.samples):.2f} (some running in {busy:.0%} of samples)"


def load_average() -> str:
    """The 1-minute load average: above the core count, something else competed for the CPUs."""
    return f"{os.getloadavg()[0]:.2f}"


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


def table(title: str, header: list[str], rows: list[list]) -> str:
    """A Markdown table (pasteable into docs/benchmarks.md) under a title line."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [f"\n{title}\n"]
    for index, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
