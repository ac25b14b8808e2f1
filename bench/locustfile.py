"""The load test's simulated people (locust), run by bench/load.py against a gunicorn server:

- Curator (50 by default): signs in, then again and again takes the next turn of the queue,
  opens its judging page and submits a label for it, thinking 3-9 s between steps;
- Ingester (4, sharing the rate): a RAG app logging its traffic, `POST /turns` with batches of
  10 turns at a fixed rate (20 requests per second in all by default);
- Asker (10): a RAG app's users asking questions, `POST /ask`, thinking 1-3 s.

bench/load.py passes the server and the accounts in environment variables (RAGLOOP_LOAD_*), and
sets how many of each class run (locust's `--users` is the sum; `fixed_count` fixes each class).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import threading

from locust import HttpUser, between, constant_throughput, task

SLUG = os.environ.get("RAGLOOP_LOAD_SLUG", "load-bench")
CURATORS = json.loads(os.environ.get("RAGLOOP_LOAD_CURATORS", "[]"))  # [[username, password], ...]
INGEST_TOKEN = os.environ.get("RAGLOOP_LOAD_INGEST_TOKEN", "")
ASK_TOKEN = os.environ.get("RAGLOOP_LOAD_ASK_TOKEN", "")
QUESTIONS = json.loads(os.environ.get("RAGLOOP_LOAD_QUESTIONS", '["What causes scurvy?"]'))
INGEST_RATE = float(os.environ.get("RAGLOOP_LOAD_INGEST_RATE", "20"))
RUN_ID = os.environ.get("RAGLOOP_LOAD_RUN", "run")

PASSAGE_ID = re.compile(r'data-passage-id="(\d+)"')
BASE_VERSION = re.compile(r'"base_version":\s*(\d+)')
_accounts = itertools.count()
_batches = itertools.count()
_lock = threading.Lock()


class Curator(HttpUser):
    fixed_count = int(os.environ.get("RAGLOOP_LOAD_CURATOR_COUNT", "50"))
    wait_time = between(3, 9)

    def on_start(self) -> None:
        with _lock:
            username, password = CURATORS[next(_accounts) % len(CURATORS)]
        self.client.get("/login/", name="login page")
        token = self.client.cookies.get("csrftoken", "")
        self.client.post(
            "/login/",
            data={"username": username, "password": password, "csrfmiddlewaretoken": token},
            headers={"Referer": self.host + "/login/"},
            name="login",
        )

    @task
    def judge_next_turn(self) -> None:
        with self.client.get(f"/kbs/{SLUG}/judge/", name="next", allow_redirects=False, catch_response=True) as response:
            if response.status_code != 302:
                response.failure(f"next answered {response.status_code}, not a redirect to a turn")
                return
            judge_url = response.headers["Location"]
        self.wait()
        page = self.client.get(judge_url, name="judge page")
        passages = PASSAGE_ID.findall(page.text)
        version = BASE_VERSION.search(page.text)
        self.wait()
        payload = {
            "passages": {passage: ("relevant" if rank == 0 else "not_relevant") for rank, passage in enumerate(passages)},
            "answer_rating": "partly",
            "gold_answer": "The first passage answers it.",
        }
        self.client.post(
            judge_url.replace("/judge/", "/label/"),
            data=json.dumps({"payload": payload, "base_version": int(version.group(1)) if version else 0}),
            headers={"Content-Type": "application/json", "X-CSRFToken": self.client.cookies.get("csrftoken", ""),
                     "Referer": self.host + judge_url},
            name="submit",
        )  # fmt: skip


class Ingester(HttpUser):
    # A locust user sends one request at a time, so the rate is shared by a few of them: one
    # alone could not keep 20 per second once a response takes more than 50 ms.
    fixed_count = int(os.environ.get("RAGLOOP_LOAD_INGESTER_COUNT", "4"))
    wait_time = constant_throughput(INGEST_RATE / max(1, fixed_count))

    @task
    def log_turns(self) -> None:
        batch = next(_batches)
        turns = [
            {
                "external_id": f"load-{RUN_ID}-{batch}-{i}",
                "query": random.choice(QUESTIONS),
                "answer": "An answer from the app's own generator.",
                "passages": [{"text": "A passage the app retrieved.", "score": 0.5, "source_id": f"doc-{i}"}],
                "latency_ms": 120,
            }
            for i in range(10)
        ]
        self.client.post(
            f"/api/v1/kbs/{SLUG}/turns", json={"turns": turns}, headers={"Authorization": f"Bearer {INGEST_TOKEN}"}, name="ingest"
        )


class Asker(HttpUser):
    fixed_count = int(os.environ.get("RAGLOOP_LOAD_ASKER_COUNT", "10"))
    wait_time = between(1, 3)

    @task
    def ask(self) -> None:
        self.client.post(
            f"/api/v1/kbs/{SLUG}/ask",
            json={"query": random.choice(QUESTIONS), "k": 5},
            headers={"Authorization": f"Bearer {ASK_TOKEN}"},
            name="ask",
        )
