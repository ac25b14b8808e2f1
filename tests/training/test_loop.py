"""The continuous loop in one process: policies (validation), triggers (label counts, schedules),
cycles moved stage by stage with a fake trainer and fake rankings, the gate's three outcomes,
a retrained run after a dead worker, and one running cycle per policy."""

import math
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from knowledge.errors import Conflict, InvalidInput
from tests.training.conftest import QUESTIONS, fake_rankings, label_questions, make_snapshot, passage
from training.models import EvaluationSet, LoopCycle, ModelVersion, PromotionEvent, RetrainingPolicy, TrainingRun
from training.services import evaluation_jobs, loop
from training.services.loop import cycles
from training.services.runs import engine
from training.services.runs.shared import Trained

pytestmark = pytest.mark.django_db(transaction=True)

EXAM = [(f"exam question {n}", f"d-exam-{n % 4}") for n in range(24)]


@pytest.fixture
def artifacts(settings, tmp_path):
    settings.RAGLOOP_ARTIFACTS_DIR = tmp_path / "artifacts"
    return settings.RAGLOOP_ARTIFACTS_DIR


@pytest.fixture
def queued(monkeypatch):
    """Record what would be sent to the workers; the test runs each step itself."""
    import training.services.runs.lifecycle as lifecycle

    sent = {"runs": [], "jobs": [], "cycles": []}
    monkeypatch.setattr(lifecycle, "_enqueue_execute", sent["runs"].append)
    monkeypatch.setattr(evaluation_jobs, "_enqueue", sent["jobs"].append)
    monkeypatch.setattr(cycles, "_enqueue_advance", sent["cycles"].append)
    return sent


@pytest.fixture
def fake_trainer(monkeypatch):
    """A query-only "training" that writes one file and keeps the base encoder."""
    trained = []

    def train(*, run, folder, reporter):
        folder.mkdir(parents=True)
        (folder / "weights.txt").write_text(f"run {run.pk}")
        trained.append(run.pk)
        space = run.knowledge_base.embedding_spaces.get(retriever_version="base")
        return Trained(folder, {"embedding_space": space, "query_model_reference": space.model_reference})

    monkeypatch.setitem(engine.TRAINERS, "contrastive_query_only", train)
    return trained


@pytest.fixture
def exam(embedded_knowledge_base):
    """A pinned evaluation set of 24 held-out queries none of the training labels asks."""
    snapshot = make_snapshot(
        embedded_knowledge_base,
        [{"example_id": f"exam-{n}", "query": q, "relevant": [passage("x", document_id=d)]} for n, (q, d) in enumerate(EXAM)],
    )
    return EvaluationSet.objects.create(knowledge_base=embedded_knowledge_base, snapshot=snapshot)


def rankings(monkeypatch, *, better: set[str]):
    """Each named retriever ranks every exam query's document first; the others rank it second."""
    right = {q: [d] for q, d in EXAM}
    wrong = {q: ["other", d] for q, d in EXAM}
    names = ["base", "retriever-v1", "retriever-v2", "retriever-v3"]
    fake_rankings(monkeypatch, {name: right if name in better else wrong for name in names})


def policy_for(knowledge_base, **changes):
    values = {
        "name": "nightly", "mode": "contrastive_query_only", "parameters": {"heldout_share": 0.0},
        "min_new_labels": 4, "gate_min_queries": 20, "gate_margin": 0.05, "auto_promote": True,
    }  # fmt: skip
    return loop.retraining_policy_set(knowledge_base=knowledge_base, component="retriever", changes={**values, **changes})


def run_cycle(cycle_id, queued):
    """Play the workers: execute queued runs and evaluation jobs and advance until it stops moving."""
    for _ in range(20):
        while queued["runs"]:
            engine.training_run_execute(run_id=queued["runs"].pop(0))
        while queued["jobs"]:
            evaluation_jobs.evaluation_job_execute(job_id=queued["jobs"].pop(0))
        queued["cycles"].clear()
        cycle = loop.loop_cycle_advance(cycle_id=cycle_id)
        if cycle.is_finished:
            return cycle
    return cycle


# --- policies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": "lora_raft"}, "not a retriever training mode"),
        ({"parameters": {"epochs": 0}}, "Parameter 'epochs' must be an integer >= 1"),
        ({"parameters": {"api_key": "sk-1"}}, "api_key is not a run parameter"),
        ({"schedule": "0 3 * *"}, "must have five fields"),
        ({"schedule": "61 3 * * *"}, "minute field '61'"),
        ({"timezone": "Mars/Olympus"}, "not a known time zone"),
        ({"gate_metric": "bleu"}, "not a retriever metric"),
        ({"gate_guards": {"recall@10": -0.1}}, "tolerance of guard recall@10 must be between 0 and 1"),
        ({"gate_guards": {"f1": 0.1}}, "Guard metric 'f1' is not a retriever metric"),
        ({"min_new_labels": -3}, "min_new_labels must be between 1"),
        ({"gate_min_queries": 2.5}, "gate_min_queries must be a whole number"),
        ({"auto_promote": "yes"}, "true or false"),
        ({"colour": "red"}, "Unknown policy field"),
        ({"name": " "}, "needs a name"),
        ({"mode": "corpus_pairs"}, "'corpus_pairs' trains once from the corpus, before any label exists"),
        ({"include_synthetic": "yes"}, "include_synthetic must be true or false"),
    ],
)
def test_a_bad_policy_is_refused_with_a_message_and_nothing_is_written(embedded_knowledge_base, changes, message):
    with pytest.raises(InvalidInput, match=message):
        policy_for(embedded_knowledge_base, **changes)
    assert not RetrainingPolicy.objects.exists()


def test_setting_a_policy_again_changes_only_the_given_fields(embedded_knowledge_base):
    policy = policy_for(embedded_knowledge_base, schedule="0 3 * * *", timezone="Europe/Berlin", gate_guards={"recall@10": 0.02})
    again = loop.retraining_policy_set(
        knowledge_base=embedded_knowledge_base, component="retriever", changes={"gate_margin": 0.01, "enabled": False}
    )
    assert again.pk == policy.pk and RetrainingPolicy.objects.count() == 1
    assert (again.gate_margin, again.enabled, again.schedule, again.timezone) == (0.01, False, "0 3 * * *", "Europe/Berlin")
    assert again.gate_guards == {"recall@10": 0.02} and again.gate_metric == "ndcg@10"
    assert loop.policy_next_run_at(again) is None  # off


# --- triggers ----------------------------------------------------------------------------


def test_the_label_trigger_starts_one_cycle_at_the_threshold_and_counts_from_its_snapshot(
    embedded_knowledge_base, curator, queued, fake_trainer, exam, monkeypatch, artifacts
):
    policy_for(embedded_knowledge_base, min_new_labels=5)
    label_questions(embedded_knowledge_base, curator)  # 4 turns with final labels
    assert loop.new_final_labels(knowledge_base=embedded_knowledge_base, component="retriever").new_final_labels == 4
    assert loop.loop_policies_check() == []

    policy_for(embedded_knowledge_base, min_new_labels=4)
    [cycle] = loop.loop_policies_check()
    assert (cycle.trigger, cycle.labels_at_start, cycle.stage) == ("labels", 4, "snapshot")
    assert queued["cycles"] == [cycle.pk]
    assert loop.loop_policies_check() == []  # one running cycle per policy

    rankings(monkeypatch, better={"retriever-v1"})
    assert run_cycle(cycle.pk, queued).status == "promoted"
    # The cycle's snapshot holds those labels: nothing new since.
    assert loop.new_final_labels(knowledge_base=embedded_knowledge_base, component="retriever").new_final_labels == 0
    assert loop.loop_policies_check() == []


def test_new_labels_make_their_knowledge_base_check_its_policies_after_commit(
    embedded_knowledge_base, curator, django_capture_on_commit_callbacks, monkeypatch
):
    import training.tasks

    checked = []
    monkeypatch.setattr(training.tasks.loop_policies_check_task, "delay", checked.append)
    with django_capture_on_commit_callbacks(execute=True):
        label_questions(embedded_knowledge_base, curator)
    assert checked == [embedded_knowledge_base.pk] * len(QUESTIONS)


def test_a_due_schedule_starts_a_cycle_once_and_then_waits_for_its_next_time(embedded_knowledge_base, curator, queued):
    label_questions(embedded_knowledge_base, curator)
    policy = policy_for(embedded_knowledge_base, min_new_labels=None, schedule="0 3 * * *")
    assert loop.loop_policies_check() == []  # set now: 03:00 is still ahead
    RetrainingPolicy.objects.filter(pk=policy.pk).update(schedule_fired_at=timezone.now() - timedelta(days=1, minutes=1))

    [cycle] = loop.loop_policies_check()
    assert cycle.trigger == "schedule" and "due at" in cycle.log
    LoopCycle.objects.filter(pk=cycle.pk).update(status="failed")
    assert loop.loop_policies_check() == []  # fired; the next 03:00 is tomorrow
    policy.refresh_from_db()
    assert loop.policy_next_run_at(policy) > timezone.now()


def test_no_cycle_starts_while_another_session_holds_the_components_lock(embedded_knowledge_base, curator, queued):
    label_questions(embedded_knowledge_base, curator)
    policy = policy_for(embedded_knowledge_base)
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s, 1)", [embedded_knowledge_base.pk])  # a run is training
        with pytest.raises(Conflict, match="is training"):
            loop.loop_cycle_run_now(policy=policy)
        assert loop.loop_policies_check() == [] and not LoopCycle.objects.exists()
    finally:
        other.close()
    assert loop.loop_cycle_run_now(policy=policy).trigger == "manual"
    with pytest.raises(Conflict, match="still running"):
        loop.loop_cycle_run_now(policy=policy)


def test_a_policy_takes_synthetic_questions_into_its_snapshots_only_when_its_flag_is_on(
    embedded_knowledge_base, curator, queued
):
    from tests.training.test_cold_start import confirm, synthetic_turn

    label_questions(embedded_knowledge_base, curator)
    confirm(synthetic_turn(embedded_knowledge_base, "What enzyme is blocked by statins?", "d-statins"), curator, "d-statins")
    policy = policy_for(embedded_knowledge_base, min_new_labels=None)
    assert policy.include_synthetic is False
    cycle = loop.loop_cycle_advance(cycle_id=loop.loop_cycle_run_now(policy=policy).pk)
    assert (cycle.snapshot.include_synthetic, cycle.snapshot.synthetic_count) == (False, 0)
    LoopCycle.objects.update(status="failed")
    TrainingRun.objects.update(status="cancelled")

    policy = policy_for(embedded_knowledge_base, min_new_labels=None, include_synthetic=True)
    cycle = loop.loop_cycle_advance(cycle_id=loop.loop_cycle_run_now(policy=policy).pk)
    assert (cycle.snapshot.include_synthetic, cycle.snapshot.synthetic_count) == (True, 1)


# --- cycles and the gate ------------------------------------------------------------------


def test_a_better_candidate_is_promoted_by_the_policy_and_serving_switches(
    embedded_knowledge_base, curator, queued, fake_trainer, exam, monkeypatch, artifacts
):
    label_questions(embedded_knowledge_base, curator)
    rankings(monkeypatch, better={"retriever-v1"})
    cycle = run_cycle(loop.loop_cycle_run_now(policy=policy_for(embedded_knowledge_base)).pk, queued)

    assert (cycle.status, cycle.stage, cycle.candidate.name) == ("promoted", "done", "retriever-v1")
    assert cycle.gate_outcome["passed"] is True and cycle.gate_outcome["queries"] == 24
    assert cycle.gate_outcome["delta"] == pytest.approx(1 - 1 / math.log2(3), abs=1e-9)
    assert set(cycle.stage_seconds) == {"snapshot", "train", "evaluate", "gate"}  # query-only: no embedding
    event = PromotionEvent.objects.get()
    assert (event.action, event.actor, event.actor_name, event.to_version.name) == ("auto_promote", None, "policy nightly", "retriever-v1")
    embedded_knowledge_base.refresh_from_db()
    assert embedded_knowledge_base.live_retriever_version == "retriever-v1"
    assert fake_trainer == [cycle.training_run_id]


def test_a_passing_candidate_waits_for_review_when_auto_promote_is_off(
    embedded_knowledge_base, curator, queued, fake_trainer, exam, monkeypatch, artifacts
):
    label_questions(embedded_knowledge_base, curator)
    rankings(monkeypatch, better={"retriever-v1"})
    cycle = run_cycle(loop.loop_cycle_run_now(policy=policy_for(embedded_knowledge_base, auto_promote=False)).pk, queued)
    assert cycle.status == "awaiting_review" and cycle.candidate.status == "candidate"
    assert not PromotionEvent.objects.exists()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, "changed by +0.0000, less than the margin +0.0500"),  # no better than live: noise
        ({"gate_min_queries": 30}, "only 24 held-out queries, the gate needs at least 30"),
    ],
)
def test_the_gate_refuses_and_rejects_the_candidate_with_the_reason(
    embedded_knowledge_base, curator, queued, fake_trainer, exam, monkeypatch, artifacts, changes, reason
):
    label_questions(embedded_knowledge_base, curator)
    rankings(monkeypatch, better={"retriever-v1"} if changes else set())
    cycle = run_cycle(loop.loop_cycle_run_now(policy=policy_for(embedded_knowledge_base, **changes)).pk, queued)
    assert cycle.status == "refused" and reason in "; ".join(cycle.gate_outcome["reasons"])
    assert ModelVersion.objects.get(name="retriever-v1").status == "rejected"
    embedded_knowledge_base.refresh_from_db()
    assert embedded_knowledge_base.live_retriever_version == "" and not PromotionEvent.objects.exists()


def test_a_run_whose_worker_died_is_trained_again_and_makes_one_candidate(
    embedded_knowledge_base, curator, queued, fake_trainer, exam, monkeypatch, artifacts
):
    from training.services.runs.lifecycle import fail_stalled

    label_questions(embedded_knowledge_base, curator)
    rankings(monkeypatch, better={"retriever-v1"})
    cycle = loop.loop_cycle_run_now(policy=policy_for(embedded_knowledge_base))
    loop.loop_cycle_advance(cycle_id=cycle.pk)
    first = TrainingRun.objects.get()
    first.status = "running"
    fail_stalled(first)  # what the sweeper does when the worker was killed mid-run
    queued["runs"].clear()

    cycle = run_cycle(cycle.pk, queued)
    assert cycle.status == "promoted" and cycle.training_attempts == 2
    assert TrainingRun.objects.count() == 2 and ModelVersion.objects.count() == 1
    assert cycle.training_run.snapshot_id == first.snapshot_id  # the same labels
    assert "training again on the same snapshot" in cycle.log


def test_a_training_failure_fails_the_cycle_with_the_runs_error(
    embedded_knowledge_base, curator, queued, exam, monkeypatch, artifacts
):
    def broken(*, run, folder, reporter):
        raise RuntimeError("out of memory")

    monkeypatch.setitem(engine.TRAINERS, "contrastive_query_only", broken)
    label_questions(embedded_knowledge_base, curator)
    cycle = run_cycle(loop.loop_cycle_run_now(policy=policy_for(embedded_knowledge_base)).pk, queued)
    assert cycle.status == "failed" and cycle.stage == "done"
    assert "RuntimeError: out of memory" in cycle.error and cycle.training_attempts == 1


def test_advancing_a_finished_or_waiting_cycle_changes_nothing(
    embedded_knowledge_base, curator, queued, fake_trainer, exam, monkeypatch, artifacts
):
    label_questions(embedded_knowledge_base, curator)
    rankings(monkeypatch, better={"retriever-v1"})
    cycle = loop.loop_cycle_run_now(policy=policy_for(embedded_knowledge_base))
    loop.loop_cycle_advance(cycle_id=cycle.pk)
    waiting = loop.loop_cycle_advance(cycle_id=cycle.pk)  # the run has not run yet
    assert waiting.stage == "train" and TrainingRun.objects.count() == 1
    done = run_cycle(cycle.pk, queued)
    log = done.log
    assert loop.loop_cycle_advance(cycle_id=cycle.pk).log == log
    assert ModelVersion.objects.count() == 1 and PromotionEvent.objects.count() == 1


def test_a_cycle_waiting_for_its_candidates_space_moves_on_when_the_space_is_ready(
    embedded_knowledge_base, curator, queued, exam
):
    from knowledge.models import EmbeddingSpace
    from knowledge.signals import embedding_space_ready
    from tests.training.conftest import retriever_version

    label_questions(embedded_knowledge_base, curator)
    space = EmbeddingSpace.objects.create(
        knowledge_base=embedded_knowledge_base, retriever_version="retriever-v1", model_reference="base:all-MiniLM-L6-v2",
        dimensions=384, status=EmbeddingSpace.Status.READY,
    )  # fmt: skip
    candidate = retriever_version(embedded_knowledge_base, "retriever-v1", space=space)
    cycle = loop.loop_cycle_run_now(policy=policy_for(embedded_knowledge_base))
    LoopCycle.objects.filter(pk=cycle.pk).update(stage="embed", candidate=candidate)
    queued["cycles"].clear()

    embedding_space_ready.send(sender=None, space=space)
    assert queued["cycles"] == [cycle.pk] and len(queued["jobs"]) == 1  # the evaluation, and the nudge
    moved = loop.loop_cycle_advance(cycle_id=cycle.pk)
    assert moved.stage == "evaluate" and "space retriever-v1 embedded" in moved.log
    assert loop.loop_cycle_advance(cycle_id=cycle.pk).evaluation_job_id == queued["jobs"][0]  # the job the engine queued
