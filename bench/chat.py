"""Latency of the OpenAI-compatible `POST /v1/chat/completions` next to the REST `POST /ask`,
streamed and not, on the demo knowledge base (300 SciFact abstracts) with the extractive
generator, measured from a client over HTTP against a gunicorn process.

Each request is sent one after another (no concurrency: this is the latency of one request,
not throughput). Modes:
- ask: `/api/v1/kbs/<kb>/ask`, a question on its own;
- ask, follow-up: `/ask` with `conversation_id`, the second turn of a conversation (history
  read from the database, the follow-up rewritten before retrieval);
- chat: `/v1/chat/completions` with one user message;
- chat, follow-up: the client resends the first exchange and asks a follow-up (the
  conversation is found by the hash of the history, the follow-up is rewritten);
- chat, stream: `stream: true`; time to the first byte of the stream and to `[DONE]`.

    python bench/chat.py                   # 60 requests per mode
    python bench/chat.py --requests 200 --keep
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402

DEMO = harness.REPO_ROOT / "demo" / "scifact"
FOLLOW_UP = "What did the study find about it?"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60, help="timed requests per mode (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per mode first (default: %(default)s)")
    parser.add_argument("-k", type=int, default=5, help="passages per answer (default: %(default)s)")
    parser.add_argument("--database", default="ragloop_bench_chat")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")
    return parser.parse_args()


class Client:
    """One keep-alive HTTP connection to the server, as an app's client library holds one."""

    def __init__(self, port: int, token: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def post(self, path: str, body: dict) -> tuple[float, float, dict | str]:
        """(seconds to the first byte of the body, seconds to its end, parsed body or raw text)."""
        started = time.perf_counter()
        self.connection.request("POST", path, body=json.dumps(body), headers=self.headers)
        response = self.connection.getresponse()
        first = response.read(1)
        first_byte = time.perf_counter() - started
        raw = first + response.read()
        total = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}: {raw[:300]!r}")
        text = raw.decode()
        return first_byte, total, (json.loads(text) if not body.get("stream") else text)


def start_server(port: int) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": harness.SETTINGS_MODULE}
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", "1", "--threads", "2", "--timeout", "120"],
        cwd=harness.REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip


def main() -> None:
    args = parse_args()
    database = harness.django_setup(database_name=args.database)
    harness.broker_in_memory()

    from django.contrib.auth import get_user_model

    from knowledge.models import Turn
    from knowledge.services.documents import documents_ingest
    from knowledge.services.knowledge_bases import knowledge_base_create
    from knowledge.services.tokens import api_token_create
    from rag.documents import parse_path

    for name, value in harness.environment():
        print(f"{name}: {value}")
    kb = knowledge_base_create(slug="chat-bench", name="Chat bench")
    documents_ingest(knowledge_base=kb, documents=parse_path(DEMO / "corpus.jsonl"))
    harness.embed_space(kb.embedding_spaces.get(), label="demo corpus")
    user = get_user_model().objects.create_user("bench")
    _, token = api_token_create(user=user, name="bench", knowledge_bases=[kb])
    questions = [json.loads(line)["text"] for line in (DEMO / "queries.jsonl").read_text().splitlines() if line.strip()]

    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start_server(port)
    try:
        harness.wait_until(lambda: _answers(port), timeout=60, message="the web server")
        # Ours too: the gunicorn master and the worker process it forked.
        workers = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        contention = harness.Contention(database_name=database.name, own_pids={server.pid, *map(int, workers)}).start()
        client = Client(port, token)
        ask_path, chat_path = f"/api/v1/kbs/{kb.slug}/ask", "/v1/chat/completions"

        def ask(question: str):
            return client.post(ask_path, {"query": question, "k": args.k})

        def ask_follow_up(question: str):
            first = client.post(ask_path, {"query": question, "k": args.k, "start_conversation": True})[2]
            return client.post(ask_path, {"query": FOLLOW_UP, "k": args.k, "conversation_id": first["conversation_id"]})

        def chat(question: str, stream: bool = False):
            return client.post(chat_path, {"model": kb.slug, "k": args.k, "stream": stream, "messages": [{"role": "user", "content": question}]})

        def chat_follow_up(question: str):
            answer = chat(question)[2]["choices"][0]["message"]["content"]
            history = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            return client.post(chat_path, {"model": kb.slug, "k": args.k, "messages": [*history, {"role": "user", "content": FOLLOW_UP}]})

        modes = [
            ("ask", ask),
            ("ask, follow-up in a conversation", ask_follow_up),
            ("chat/completions", chat),
            ("chat/completions, follow-up (history resent)", chat_follow_up),
            ("chat/completions, stream", lambda q: chat(q, stream=True)),
        ]
        rows = []
        for label, send in modes:
            for question in questions[: args.warmup]:
                send(question)
            first_bytes, totals, turn_ids = [], [], []
            for index in range(args.requests):
                first_byte, total, body = send(questions[(args.warmup + index) % len(questions)])
                first_bytes.append(first_byte)
                totals.append(total)
                turn_ids.append(_turn_id(body))
            # What the server spent composing the answer (retrieve, rewrite, generate), as stored on the turn.
            composed = [ms / 1000 for ms in Turn.objects.filter(pk__in=turn_ids).values_list("latency_ms", flat=True)]
            harness.say(f"  {label}: p50 {harness.percentile_ms(totals, 50):.1f} ms")
            rows.append([
                label, args.requests,
                f"{harness.percentile_ms(totals, 50):.1f}", f"{harness.percentile_ms(totals, 95):.1f}",
                f"{harness.percentile_ms(first_bytes, 50):.1f}", f"{harness.percentile_ms(first_bytes, 95):.1f}",
                f"{harness.percentile_ms(composed, 50):.1f}",
            ])  # fmt: skip
        print(harness.table(
            f"Latency per request, ms ({kb.chunks.count()} chunks, extractive generator, k={args.k}, one request at a time; "
            "follow-up rows time the follow-up only)",
            ["mode", "requests", "p50", "p95", "first byte p50", "first byte p95", "composing p50 (server)"], rows,
        ))  # fmt: skip
        print(f"\ncontention (other programs' running threads, mean): {contention.stop()}")
        print(f"load average at end: {harness.load_average()}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        if not args.keep:
            database.drop()


def _turn_id(body) -> int:
    if isinstance(body, dict):
        return body["turn_id"]
    first_event = body.split("\n\n", 1)[0]
    return json.loads(first_event[len("data: ") :])["turn_id"]


def _answers(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/login/")
        connection.getresponse().read()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
