"""The platform under load: 50 curators judging, a RAG app ingesting 20 requests per second of 10
turns each, and 10 ask clients, for 5 minutes against `make run`'s gunicorn (2 workers x 4
threads) with a real Celery worker, on a knowledge base of 100k turns; driven by locust
(bench/locustfile.py) on loopback.

Prints locust's p50 / p95 per request type and the errors (there must be none), the load
generator's own CPU time (it shares the 2 cores with the server), and the PostgreSQL
connections the benchmark database held, sampled every second, against the server's
`max_connections`.

    python bench/load.py                                     # 100k turns, 5 minutes
    python bench/load.py --turns 2000 --duration 20 --curators 5 --askers 2 --ingest-rate 4   # a quick check
    python bench/load.py --backend openvino-int8             # the knowledge base embeds on an int8 export
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
REQUEST_TYPES = ["login page", "login", "next", "judge page", "submit", "ingest", "ask"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=100_000, help="turns in the knowledge base first (default: %(default)s)")
    parser.add_argument("--duration", type=int, default=300, help="seconds of load (default: %(default)s)")
    parser.add_argument("--curators", type=int, default=50)
    parser.add_argument("--askers", type=int, default=10)
    parser.add_argument("--ingest-rate", type=float, default=20.0, help="ingest requests per second in all (default: %(default)s)")
    parser.add_argument("--backend", default="torch",
                        help="the knowledge base's embedding backend (torch, onnx, onnx-int8, openvino, openvino-int8); "
                             "the web and the worker embed queries and chunks on it (default: %(default)s)")
    parser.add_argument("--database", default="ragloop_bench_load")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")
    return parser.parse_args()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def knowledge_base_prepared(*, turns: int, curators: int, backend: str) -> tuple:
    """The demo abstracts embedded, `turns` turns in the queue, curators with passwords, two tokens."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from bench.curation import DEMO, load_turns
    from curation.services.accounts import membership_add
    from knowledge.services.documents import documents_ingest
    from knowledge.services.knowledge_bases import knowledge_base_create
    from knowledge.services.tokens import api_token_create
    from rag.documents import parse_path

    knowledge_base = knowledge_base_create(slug="load-bench", name="Load benchmark", embedding_backend=backend)
    documents_ingest(knowledge_base=knowledge_base, documents=parse_path(DEMO / "corpus.jsonl"))
    harness.embed_space(knowledge_base.embedding_spaces.get(), label="demo corpus")
    users = get_user_model()
    other = users.objects.create_user("load-earlier-curator")
    loaded = load_turns(knowledge_base=knowledge_base, count=turns, passages_per_turn=5, labelled_share=0.2, other_curator=other, seed=0)
    harness.say(f"{turns} turns loaded in {loaded['total_seconds']:.1f} s")
    curator_group = Group.objects.get(name="curator")
    accounts = []
    for number in range(curators):
        password = secrets.token_urlsafe(12)
        user = users.objects.create_user(f"load-curator-{number}", password=password)
        user.groups.add(curator_group)
        membership_add(knowledge_base=knowledge_base, username=user.username)
        accounts.append([user.username, password])
    # A token is worth no more than its user's current rights: the app's user is a curator here.
    app = users.objects.create_user("load-app")
    app.groups.add(curator_group)
    membership_add(knowledge_base=knowledge_base, username=app.username)
    _, ingest_token = api_token_create(user=app, name="ingest", knowledge_bases=[knowledge_base], scopes=["ingest"])
    _, ask_token = api_token_create(user=app, name="ask", knowledge_bases=[knowledge_base], scopes=["ask"])
    return knowledge_base, accounts, ingest_token, ask_token


class ConnectionSampler:
    """Counts the benchmark database's connections (pg_stat_activity) every second, from its own
    connection (counted too, and subtracted)."""

    def __init__(self, *, database_url: str, database_name: str) -> None:
        self.database_url, self.database_name = database_url, database_name
        self.samples: list[int] = []
        self.max_connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as connection:
            self.max_connections = int(connection.execute("SHOW max_connections").fetchone()[0])
            while not self._stop.wait(1.0):
                count = connection.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [self.database_name])
                self.samples.append(int(count.fetchone()[0]) - 1)

    def start(self) -> "ConnectionSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its waited-for children so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _process_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, user + system CPU seconds) of every live process."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / tick)
    return table


def cpu_by_component(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each component: the process tree under each root pid (gunicorn's
    master and its workers, the Celery worker, locust), and every `postgres` process (the
    embedded server and its backends, whoever they serve). A process that exited meanwhile is
    not counted, so take the difference of two calls over a window in which none exits."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    totals = {}
    for component, root in roots.items():
        stack, seconds = [root], 0.0
        while stack:
            pid = stack.pop()
            if pid in table:
                seconds += table[pid][2]
                stack.extend(children.get(pid, []))
        totals[component] = seconds
    totals["postgres"] = sum(cpu for _, name, cpu in table.values() if name == "postgres")
    return totals


def locust_figures(stats_csv: Path) -> dict[str, dict]:
    """locust's per-request-type statistics: count, failures, p50, p95 (ms)."""
    figures = {}
    with stats_csv.open() as handle:
        for row in csv.DictReader(handle):
            if row["Name"] == "Aggregated":
                continue
            figures[row["Name"]] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "p50_ms": float(row["50%"] or 0),
                "p95_ms": float(row["95%"] or 0),
                "rps": float(row["Requests/s"] or 0),
            }
    return figures


def main() -> None:
    args = parse_args()
    database = harness.django_setup(database_name=args.database)
    # The load's own requests must not be throttled by the per-token limits, if any are set.
    os.environ.setdefault("RAGLOOP_RATE_LIMIT_PER_MINUTE", "1000000")
    os.environ.setdefault("RAGLOOP_INGEST_RATE_LIMIT_PER_MINUTE", "1000000")
    print(harness.table("Environment", ["", ""], harness.environment()))
    print(f"load average at start: {harness.load_average()}; knowledge base backend: {args.backend}")

    from django.db import connections

    from knowledge.management.commands.run_local import WEB_KEEP_ALIVE_SECONDS, WEB_THREADS, WEB_WORKERS, web_command

    knowledge_base, accounts, ingest_token, ask_token = knowledge_base_prepared(turns=args.turns, curators=args.curators, backend=args.backend)
    questions = [json.loads(line)["text"] for line in (harness.REPO_ROOT / "demo" / "scifact" / "queries.jsonl").read_text().splitlines()[:200]]
    connections.close_all()

    port = _free_port()
    worker = harness.Worker()
    worker.start()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": harness.SETTINGS_MODULE}
    output = Path(tempfile.mkdtemp(prefix="ragloop-load-"))
    # gunicorn's own log (worker timeouts and restarts), to tell a server fault from a client one.
    server = subprocess.Popen(web_command(sys.executable, f"127.0.0.1:{port}"), cwd=harness.REPO_ROOT, env=env,
                              stdout=(output / "web.log").open("w"), stderr=subprocess.STDOUT)  # fmt: skip
    try:
        harness.wait_until(lambda: _answers(port), timeout=120, message="the web server")
        warm_up(port=port, slug=knowledge_base.slug, token=ask_token, questions=questions)
        sampler = ConnectionSampler(database_url=database.url, database_name=database.name).start()
        users = args.curators + args.askers + 4
        locust_env = {
            **os.environ,
            "RAGLOOP_LOAD_SLUG": knowledge_base.slug,
            "RAGLOOP_LOAD_CURATORS": json.dumps(accounts),
            "RAGLOOP_LOAD_INGEST_TOKEN": ingest_token,
            "RAGLOOP_LOAD_ASK_TOKEN": ask_token,
            "RAGLOOP_LOAD_QUESTIONS": json.dumps(questions),
            "RAGLOOP_LOAD_INGEST_RATE": str(args.ingest_rate),
            "RAGLOOP_LOAD_CURATOR_COUNT": str(args.curators),
            "RAGLOOP_LOAD_ASKER_COUNT": str(args.askers),
            "RAGLOOP_LOAD_INGESTER_COUNT": "4",
            "RAGLOOP_LOAD_RUN": secrets.token_hex(4),
        }
        started = time.perf_counter()
        load = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", f"http://127.0.0.1:{port}",
             "--users", str(users), "--spawn-rate", str(max(1, users // 10)), "--run-time", f"{args.duration}s",
             "--stop-timeout", "10", "--csv", str(output / "load"), "--only-summary", "--loglevel", "WARNING"],
            cwd=harness.REPO_ROOT, env=locust_env, stdout=(output / "locust.log").open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        pid = load.pid
        roots = {"web (gunicorn)": server.pid, "Celery worker": worker.process.pid, "load generator (locust)": pid}
        cpu_before = cpu_by_component(roots)
        cpu_during = cpu_before
        cpu = 0.0
        while load.poll() is None:
            try:
                cpu = process_cpu_seconds(pid)
            except FileNotFoundError:
                break
            cpu_during = cpu_by_component(roots)  # the last reading before locust exits
            time.sleep(1)
        wall = time.perf_counter() - started
        components = {name: cpu_during[name] - cpu_before[name] for name in cpu_before}
        worker_tasks = worker.task_totals()
        sampler.stop()
        figures = locust_figures(output / "load_stats.csv")
        failures = (output / "load_failures.csv").read_text() if (output / "load_failures.csv").exists() else ""
    finally:
        server.terminate()
        server.wait(timeout=30)
        worker.stop()

    rows = [[name, f["requests"], f["failures"], f"{f['rps']:.1f}", f"{f['p50_ms']:.0f}", f"{f['p95_ms']:.0f}"]
            for name in REQUEST_TYPES if (f := figures.get(name))]  # fmt: skip
    print()
    print(harness.table(
        f"{args.curators} curators, {args.askers} ask clients, ingest at {args.ingest_rate:g} requests/s x 10 turns, "
        f"{args.duration} s, {args.turns} turns at the start; gunicorn {WEB_WORKERS} workers x {WEB_THREADS} threads + 1 worker",
        ["request", "requests", "errors", "per second", "p50 ms", "p95 ms"], rows,
    ))  # fmt: skip
    errors = sum(f["failures"] for f in figures.values())
    print(f"\nerrors: {errors}")
    if failures.strip():
        print(failures.strip()[:2000])
    web_log = (output / "web.log").read_text(errors="replace")
    print(f"gunicorn: {web_log.count('WORKER TIMEOUT')} worker timeouts, {web_log.count('Booting worker')} workers booted "
          f"({WEB_WORKERS} at the start); keep-alive {WEB_KEEP_ALIVE_SECONDS} s; its log: {output / 'web.log'}")
    print(f"load generator CPU: {cpu:.1f} s over {wall:.0f} s wall ({cpu / wall:.0%} of one core)")
    task_rows = [[name, count, f"{seconds:.0f}"] for name, (count, seconds) in sorted(worker_tasks.items(), key=lambda t: -t[1][1])]
    print(harness.table("The Celery worker's tasks (from the start, warm-up included)", ["task", "runs", "seconds"], task_rows))
    capacity = wall * len(os.sched_getaffinity(0))
    component_rows = [[name, f"{seconds:.0f}", f"{seconds / capacity:.0%}"] for name, seconds in components.items()]
    component_rows.append(["all of them", f"{sum(components.values()):.0f}", f"{sum(components.values()) / capacity:.0%}"])
    print(harness.table(
        f"Where the CPU went during the load ({len(os.sched_getaffinity(0))} CPUs x {wall:.0f} s = {capacity:.0f} CPU s)",
        ["component", "CPU s", "share of the CPUs"], component_rows,
    ))  # fmt: skip
    peak = max(sampler.samples, default=0)
    print(f"PostgreSQL connections of the benchmark database: peak {peak}, mean {sum(sampler.samples) / max(1, len(sampler.samples)):.1f} "
          f"(server max_connections {sampler.max_connections}; web bound {WEB_WORKERS * WEB_THREADS} + worker + this sampler)")
    print(f"load average at end: {harness.load_average()}")
    if args.json:
        args.json.write_text(json.dumps({"figures": figures, "errors": errors, "generator_cpu_seconds": cpu, "wall_seconds": wall,
                                         "connections_peak": peak, "max_connections": sampler.max_connections,
                                         "cpu_seconds_by_component": components}, indent=2))
    if not args.keep:
        database.drop()
    if errors:
        sys.exit(1)


def warm_up(*, port: int, slug: str, token: str, questions: list[str]) -> None:
    """Asks from several threads at once until every gunicorn worker has loaded the encoder
    (seconds each), so the first minute of load does not time model loading."""
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    def ask(question: str) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        body = json.dumps({"query": question, "k": 5})
        connection.request("POST", f"/api/v1/kbs/{slug}/ask", body=body,
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})  # fmt: skip
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"warm-up ask answered {response.status}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(ask, questions[:16]))


def _answers(port: int) -> bool:
    import http.client

    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/login/")
        connection.getresponse().read()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
