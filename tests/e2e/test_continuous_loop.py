"""The continuous loop with real processes: a worker on every queue and beat ticking every two
seconds. A policy with a label-count trigger; labels arrive in three batches and each batch
past the threshold starts one cycle by itself. The first (good labels) is promoted and serving
switches; the second (labels that are random noise) is refused by the gate and serving stays;
the worker is killed while the third trains, and a new worker finishes that cycle without a
second candidate. Webhooks arrive signed at a local receiver that verifies them.

Two beat processes ticking every second with two workers still start one cycle.
"""

import base64
import hashlib
import hmac
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import Group

from curation.models import Membership
from curation.services.labels import LabelInput, label_submit
from knowledge.models import Chunk
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.turns import turn_ask
from rag.datasets import split_for, split_key
from rag.documents import SourceDocument
from tests.conftest import CeleryBeat, CeleryWorker, embed_everything_now, wait_until
from tests.e2e.loop_data import DOCUMENTS, codename_queries
from training.models import EvaluationSet, LoopCycle, ModelVersion, TrainingRun, WebhookEndpoint
from training.services.loop import retraining_policy_set
from training.services.snapshots import dataset_snapshot_create

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HELDOUT_SHARE = 0.25
SECRET = "whsec_" + base64.b64encode(b"loop-test-secret-key-24b").decode()


def _split(query: str) -> str:
    return split_for(split_key(query), heldout_share=HELDOUT_SHARE)


EXAM = [(q, d) for q, d in codename_queries() if _split(q) == "heldout"]
TRAIN = [(q, d) for q, d in codename_queries() if _split(q) == "train"]


class WebhookReceiver(BaseHTTPRequestHandler):
    """Verifies each delivery as a Standard Webhooks receiver would, and keeps the good ones."""

    received: list[dict] = []
    refused: list[str] = []

    def do_POST(self):  # noqa: N802 (the http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message_id, timestamp = self.headers["webhook-id"], self.headers["webhook-timestamp"]
        key = base64.b64decode(SECRET.removeprefix("whsec_"))
        expected = base64.b64encode(hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest())
        signatures = [part.split(",", 1)[1].encode() for part in self.headers["webhook-signature"].split()]
        if any(hmac.compare_digest(expected, signature) for signature in signatures):
            type(self).received.append({"id": message_id, **json.loads(body)})
            self.send_response(204)
        else:
            type(self).refused.append(message_id)
            self.send_response(401)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    WebhookReceiver.received, WebhookReceiver.refused = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), WebhookReceiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks"
    server.shutdown()


@pytest.fixture
def loop_environment(environment):
    return {**environment, "RAGLOOP_LOOP_TICK_SECONDS": "2", "RAGLOOP_WEBHOOK_BACKOFF_SECONDS": "1"}


@pytest.fixture
def worker(loop_environment):
    worker = CeleryWorker(queues="default,embedding,training", env=loop_environment, name="loop-worker")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def beat(loop_environment):
    beat = CeleryBeat(env=loop_environment, name="loop-beat")
    beat.start()
    yield beat
    beat.stop()


@pytest.fixture
def codename_kb(db, django_user_model):
    from knowledge.services.documents import documents_ingest

    knowledge_base = knowledge_base_create(slug="loop-kb", name="Loop KB")
    documents_ingest(
        knowledge_base=knowledge_base,
        documents=[SourceDocument(external_id=d["_id"], title=d["title"], text=d["text"], metadata={}) for d in DOCUMENTS],
    )
    embed_everything_now(knowledge_base)
    return knowledge_base


@pytest.fixture
def curator(codename_kb, django_user_model):
    user = django_user_model.objects.create_user("carol", password="pw-carol-123")
    user.groups.add(Group.objects.get_or_create(name="curator")[0])
    Membership.objects.create(knowledge_base=codename_kb, user=user)
    return user


def label(knowledge_base, curator, pairs) -> None:
    """Ask each query and judge the passage of the given document relevant (attached when the
    retriever missed it) and every other retrieved passage not relevant."""
    chunks = {c.document.external_id: c.pk for c in Chunk.objects.filter(knowledge_base=knowledge_base).select_related("document")}
    for query, document in pairs:
        turn = turn_ask(knowledge_base=knowledge_base, query=query, k=3)
        passages = {p.pk: "relevant" if p.source_id == document else "not_relevant" for p in turn.passages.all()}
        attached = {} if "relevant" in passages.values() else {chunks[document]: "relevant"}
        label_submit(turn=turn, curator=curator, data=LabelInput(passages=passages, attached=attached))


def noise(pairs, seed=0):
    """The same queries judged by someone clicking at random: a wrong document every time."""
    rng = random.Random(seed)
    ids = [d["_id"] for d in DOCUMENTS]
    return [(query, rng.choice([d for d in ids if d != document])) for query, document in pairs]


def pin_exam(knowledge_base, curator):
    label(knowledge_base, curator, EXAM)
    snapshot = dataset_snapshot_create(knowledge_base=knowledge_base, heldout_share=HELDOUT_SHARE)
    assert snapshot.heldout_count == len(EXAM) and snapshot.train_count == 0
    return EvaluationSet.objects.create(knowledge_base=knowledge_base, snapshot=snapshot)


def finished_cycles(count):
    def check():
        cycles = list(LoopCycle.objects.order_by("pk"))
        return cycles if len(cycles) >= count and cycles[count - 1].is_finished else None

    return check


def test_labels_retrain_evaluate_gate_and_promote_by_themselves(codename_kb, curator, worker, beat, receiver, settings):
    from knowledge.selectors import passages_retrieve, retriever_for

    pin_exam(codename_kb, curator)
    WebhookEndpoint.objects.create(knowledge_base=codename_kb, url=receiver, secret=SECRET)
    policy = retraining_policy_set(
        knowledge_base=codename_kb,
        component="retriever",
        changes={
            "name": "codenames", "mode": "contrastive",
            "parameters": {"heldout_share": HELDOUT_SHARE, "epochs": 3, "batch_size": 16, "device": "cpu"},
            "min_new_labels": 40, "gate_margin": 0.02, "gate_min_queries": 30, "auto_promote": True,
        },
    )  # fmt: skip
    good_first, noisy, good_last = TRAIN[0::3], noise(TRAIN[1::3]), TRAIN[2::3]
    assert min(len(good_first), len(noisy), len(good_last)) >= 40 and len(EXAM) >= 30

    # Batch 1: below the threshold nothing starts; the label that crosses it starts cycle 1.
    label(codename_kb, curator, good_first[:30])
    assert not LoopCycle.objects.exists()
    label(codename_kb, curator, good_first[30:])
    [first] = wait_until(finished_cycles(1), timeout=300, message=f"cycle 1 to finish\n{worker.log()}")
    assert first.trigger == "labels" and first.labels_at_start >= 40, first.log
    assert first.status == "promoted", first.log + first.error + worker.log()
    assert set(first.stage_seconds) == {"snapshot", "train", "embed", "evaluate", "gate"}
    gate = first.gate_outcome
    assert gate["passed"] and gate["queries"] == len(EXAM) and gate["low"] > 0 and gate["delta"] >= 0.02, gate
    codename_kb.refresh_from_db()
    assert codename_kb.live_retriever_version == first.candidate.name == "retriever-v1"
    # Serving switched: an exam phrasing the base retriever got wrong is now answered.
    choice = retriever_for(knowledge_base=codename_kb)
    hits = sum(
        passages_retrieve(space=choice.space, query=q, k=1, query_model_reference=choice.query_model_reference)[0].document_external_id == d
        for q, d in EXAM
    )
    assert hits / len(EXAM) > 0.6

    # Batch 2: noise. The gate refuses the candidate and serving does not change.
    label(codename_kb, curator, noisy)
    second = wait_until(finished_cycles(2), timeout=300, message=f"cycle 2 to finish\n{worker.log()}")[1]
    assert second.status == "refused", second.log + worker.log()
    assert not second.gate_outcome["passed"] and second.gate_outcome["reasons"], second.gate_outcome
    assert ModelVersion.objects.get(pk=second.candidate_id).status == "rejected"
    codename_kb.refresh_from_db()
    assert codename_kb.live_retriever_version == "retriever-v1"

    # Batch 3, trained long enough to kill the worker mid-run; a new worker finishes the cycle.
    # No checkpoints: the run fails and the cycle trains again (a run that took a checkpoint goes
    # on from it instead: tests/e2e/test_training_worker.py).
    retraining_policy_set(
        knowledge_base=codename_kb, component="retriever",
        changes={"parameters": {"heldout_share": HELDOUT_SHARE, "epochs": 6, "batch_size": 16, "device": "cpu",
                                "checkpoint_every": 0}},
    )  # fmt: skip
    label(codename_kb, curator, good_last)

    def third_training():
        run = TrainingRun.objects.filter(status="running").order_by("-pk").first()
        return run if run is not None and run.progress > 0.1 and LoopCycle.objects.count() == 3 else None

    killed_run = wait_until(third_training, timeout=300, message=f"cycle 3 to train\n{worker.log()}")
    worker.stop(kill=True)
    worker.start()
    third = wait_until(finished_cycles(3), timeout=600, message=f"cycle 3 to finish\n{worker.log()}")[2]
    assert third.status in {"promoted", "refused"}, third.log + third.error + worker.log()
    assert third.training_attempts == 2 and third.training_run_id != killed_run.pk, third.log
    assert TrainingRun.objects.get(pk=killed_run.pk).error.startswith("The worker stopped")
    assert ModelVersion.objects.count() == 3  # one candidate per cycle
    assert LoopCycle.objects.count() == 3 and {c.trigger for c in LoopCycle.objects.all()} == {"labels"}

    # Every event arrived signed (the receiver refused none), each message once.
    expected = {"version.promoted", "gate.refused", "cycle.finished"}
    wait_until(lambda: expected <= {m["type"] for m in WebhookReceiver.received}, timeout=60,
               message=f"the webhooks\n{WebhookReceiver.received}")  # fmt: skip
    assert WebhookReceiver.refused == []
    def cycle_finished_messages():
        return [m for m in WebhookReceiver.received if m["type"] == "cycle.finished"]

    wait_until(lambda: len(cycle_finished_messages()) == 3, timeout=60, message="three cycle.finished webhooks")
    assert [m["data"]["status"] for m in cycle_finished_messages()] == ["promoted", "refused", third.status]
    refusal = next(m for m in WebhookReceiver.received if m["type"] == "gate.refused")
    assert refusal["data"]["candidate"] == "retriever-v2" and refusal["data"]["knowledge_base"] == "loop-kb"
    assert len({m["id"] for m in WebhookReceiver.received}) == len(WebhookReceiver.received)
    assert policy.pk == first.policy_id

def test_two_beats_start_one_cycle(codename_kb, curator, loop_environment):
    label(codename_kb, curator, TRAIN[:12])  # before the policy: their checks wait in the queue with the ticks
    retraining_policy_set(
        knowledge_base=codename_kb, component="retriever",
        changes={"name": "twice", "mode": "contrastive_query_only", "min_new_labels": 10,
                 "parameters": {"heldout_share": 0.0, "epochs": 1, "device": "cpu"}},
    )  # fmt: skip
    environment = {**loop_environment, "RAGLOOP_LOOP_TICK_SECONDS": "1"}
    processes = [CeleryBeat(env=environment, name=f"beat-{n}") for n in (1, 2)]
    processes += [CeleryWorker(queues="default", env=environment, name=f"tick-worker-{n}") for n in (1, 2)]
    for process in processes:
        process.start()
    try:
        wait_until(lambda: LoopCycle.objects.exists(), timeout=60, message="a tick to start a cycle")
        # Both beats keep sending ticks for a while; no second cycle starts.
        wait_until(lambda: all(p.log().count("loop-tick") >= 5 for p in processes[:2]), timeout=60,
                   message="both beats to tick")  # fmt: skip
        assert LoopCycle.objects.count() == 1
    finally:
        for process in processes:
            process.stop()
