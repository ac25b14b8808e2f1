"""A training run whose worker died after a checkpoint: the sweeper queues it again (bounded),
a redelivered task goes on in its own process, the next execution may use the run's non-empty
folder, and a checkpoint nobody will resume from (bound spent, run cancelled) is deleted. The
trainers' own resume (same weights as a run never interrupted) is tests/rag/test_training_checkpoints.py;
a real killed worker is tests/e2e/test_training_worker.py."""

from pathlib import Path

import pytest

from knowledge.errors import InvalidInput
from tests.training.test_runs import artifacts, labelled_kb, no_tasks_sent  # noqa: F401 (fixtures)
from training.models import TrainingRun
from training.services.runs import (
    Outcome,
    engine,
    run_output_folder,
    training_run_cancel,
    training_run_execute,
    training_run_start,
    training_runs_fail_stalled,
)
from training.services.runs.shared import CHECKPOINT_FOLDER, run_checkpoint_step

pytestmark = pytest.mark.django_db


def _died_after_a_checkpoint(run: TrainingRun, *, step: int = 10) -> Path:
    """What a worker killed after its checkpoint at `step` leaves: a running row with a stale
    heartbeat, and the checkpoint in the run's folder."""
    from rag.training.checkpoints import CHECKPOINT_SUMMARY

    folder = run_output_folder(run) / CHECKPOINT_FOLDER
    (folder / f"checkpoint-{step}").mkdir(parents=True)
    (folder / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"weights")
    (folder / CHECKPOINT_SUMMARY).write_text(f'{{"step": {step}, "total_steps": 80, "path": "checkpoint-{step}"}}')
    TrainingRun.objects.filter(pk=run.pk).update(status="running", heartbeat_at="2000-01-01T00:00:00Z")
    return folder


def test_runs_take_a_checkpoint_every_50_steps_by_default_and_0_turns_it_off(labelled_kb, no_tasks_sent):
    for component, mode in [("retriever", "contrastive"), ("retriever", "contrastive_query_only"), ("reranker", "cross_encoder")]:
        assert training_run_start(knowledge_base=labelled_kb, component=component, mode=mode).parameters["checkpoint_every"] == 50
        TrainingRun.objects.all().delete()
    off = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive", parameters={"checkpoint_every": 0})
    assert off.parameters["checkpoint_every"] == 0
    TrainingRun.objects.all().delete()
    with pytest.raises(InvalidInput, match="checkpoint_every"):
        training_run_start(knowledge_base=labelled_kb, component="retriever", mode="lsr", parameters={"checkpoint_every": -1})
    with pytest.raises(InvalidInput, match="checkpoint_every"):  # a remote job takes none
        training_run_start(
            knowledge_base=labelled_kb, component="generator", mode="openai", parameters={"model": "m", "checkpoint_every": 5}
        )


def test_the_sweeper_queues_a_run_with_a_checkpoint_again_until_the_bound_is_spent_then_fails_it(
    labelled_kb, no_tasks_sent, settings, django_capture_on_commit_callbacks
):
    settings.RAGLOOP_TRAINING_RESUME_LIMIT = 2
    run = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive_query_only")
    checkpoint = _died_after_a_checkpoint(run)
    no_tasks_sent.clear()

    for attempt in (1, 2):
        with django_capture_on_commit_callbacks(execute=True):
            assert training_runs_fail_stalled() == []
        run.refresh_from_db()
        assert (run.status, run.resumes) == ("queued", attempt)
        assert f"Queued again to go on from its checkpoint at step 10 ({attempt} of 2)." in run.log
        assert no_tasks_sent[-1] == ("training_run_execute_task", (run.pk,))
        TrainingRun.objects.filter(pk=run.pk).update(status="running")  # it started, and died again

    with django_capture_on_commit_callbacks(execute=True):
        assert training_runs_fail_stalled() == [run.pk]
    run.refresh_from_db()
    assert run.status == "failed" and run.error.startswith("The worker stopped (no heartbeat since 2000-01-01")
    assert not checkpoint.exists()  # nobody will go on from it now


def test_a_redelivered_task_goes_on_from_the_checkpoint_in_its_own_process(labelled_kb, no_tasks_sent, monkeypatch):
    run = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive_query_only")
    checkpoint = _died_after_a_checkpoint(run, step=20)
    seen = {}

    def trainer(*, run, folder, reporter):
        seen["checkpoint_step"] = run_checkpoint_step(run)
        raise InvalidInput("the trainer was reached")

    monkeypatch.setitem(engine.TRAINERS, "contrastive_query_only", trainer)

    assert training_run_execute(run_id=run.pk) == Outcome.FAILED
    run.refresh_from_db()
    # The folder was not refused as another run's leftovers: this run's trainer got its checkpoint.
    assert seen == {"checkpoint_step": 20}
    assert run.resumes == 1 and "Going on from its checkpoint at step 20 (1 of 3)." in run.log
    assert run.error == "the trainer was reached"
    assert not checkpoint.exists()  # a failed run removes what it wrote


def test_without_a_checkpoint_a_stalled_run_is_failed_as_before(labelled_kb, no_tasks_sent):
    run = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive_query_only")
    TrainingRun.objects.filter(pk=run.pk).update(status="running", heartbeat_at="2000-01-01T00:00:00Z")

    assert training_runs_fail_stalled() == [run.pk]
    run.refresh_from_db()
    assert (run.status, run.resumes) == ("failed", 0)


def test_cancelling_a_run_queued_to_resume_deletes_its_checkpoint(
    labelled_kb, no_tasks_sent, django_capture_on_commit_callbacks
):
    run = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive_query_only")
    checkpoint = _died_after_a_checkpoint(run)
    training_runs_fail_stalled()

    with django_capture_on_commit_callbacks(execute=True):
        run = training_run_cancel(run=TrainingRun.objects.get(pk=run.pk))

    assert run.status == "cancelled" and "cancelled while queued to resume" in run.log
    assert not checkpoint.exists()
    assert training_run_execute(run_id=run.pk) == Outcome.NOTHING_TO_DO
