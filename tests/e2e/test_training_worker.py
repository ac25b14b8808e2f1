"""Training with a real Celery worker process on the `training` queue: `manage.py train --wait`
follows a run the worker trains; a worker killed mid-run before any checkpoint leaves the run
running until the sweeper fails it, after which a new run succeeds; a worker killed after a
checkpoint leaves a run the sweeper queues again, and the restarted worker goes on from the
checkpoint to a servable candidate."""

import json
import subprocess
import sys

import pytest
from django.contrib.auth.models import Group

from curation.models import Membership
from tests.conftest import REPO_ROOT, wait_until
from tests.training.conftest import label_questions
from training.models import ModelVersion, TrainingRun

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TINY_RUN = ["--param", "epochs=1", "--param", "batch_size=2", "--param", "heldout_share=0", "--param", "device=cpu"]


@pytest.fixture
def labelled_kb(embedded_knowledge_base, django_user_model):
    curator = django_user_model.objects.create_user("alice", password="pw-alice-123")
    curator.groups.add(Group.objects.get_or_create(name="curator")[0])
    Membership.objects.create(knowledge_base=embedded_knowledge_base, user=curator)
    label_questions(embedded_knowledge_base, curator)
    return embedded_knowledge_base


def manage(environment, *arguments, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *arguments], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=timeout
    )


def test_cli_train_wait_follows_a_run_the_worker_trains_into_a_servable_candidate(labelled_kb, training_worker, environment, artifacts):
    from knowledge.selectors import passages_retrieve, retriever_for
    from rag.training.artifacts import verify_manifest

    result = manage(
        environment, "train", "test-kb", "--component", "retriever", "--mode", "contrastive_query_only",
        *TINY_RUN, "--wait", "--timeout", "240", "--json",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr + training_worker.log()
    summary = json.loads(result.stdout)
    assert (summary["status"], summary["model_version"], summary["progress"]) == ("succeeded", "retriever-v1", 1.0)
    assert "100.0% succeeded" in result.stderr and "registered candidate retriever-v1" in result.stderr
    version = ModelVersion.objects.get(name="retriever-v1")
    assert version.training_run_id == summary["id"] and version.status == "candidate"
    verify_manifest(artifacts / version.artifact_path)
    choice = retriever_for(knowledge_base=labelled_kb, retriever_version="retriever-v1")
    top = passages_retrieve(space=choice.space, query="Which enzyme do statins inhibit?", k=1,
                            query_model_reference=choice.query_model_reference)  # fmt: skip
    assert top[0].document_external_id == "d-statins"


def test_a_killed_worker_leaves_its_run_running_until_the_sweeper_fails_it_then_a_new_run_succeeds(
    labelled_kb, training_worker, settings
):
    from knowledge.errors import Conflict
    from training.services.runs import training_run_start, training_runs_fail_stalled

    # Started through the service this time (the task goes to this test's broker): long enough
    # to be killed mid-training, 2 steps an epoch for up to 1000 epochs.
    parameters = {"epochs": 1000, "batch_size": 2, "heldout_share": 0.0, "device": "cpu", "checkpoint_every": 0}
    run_id = training_run_start(
        knowledge_base=labelled_kb, component="retriever", mode="contrastive_query_only", parameters=parameters
    ).pk

    def training_steps_reported():
        run = TrainingRun.objects.get(pk=run_id)
        return run.status == "running" and run.progress > 0.06 and "step" in run.log

    wait_until(training_steps_reported, timeout=180, message=f"the worker to start training\n{training_worker.log()}")
    training_worker.stop(kill=True)

    run = TrainingRun.objects.get(pk=run_id)
    assert run.status == "running"  # nobody is left to say otherwise
    with pytest.raises(Conflict, match=f"Training run #{run_id}"):
        training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive_query_only", parameters=parameters)

    settings.RAGLOOP_TRAINING_STALL_SECONDS = 3  # as in the worker's environment
    wait_until(lambda: training_runs_fail_stalled() == [run_id], timeout=30, interval=0.5, message="the sweeper to fail the run")
    run.refresh_from_db()
    assert run.status == "failed" and run.error.startswith("The worker stopped (no heartbeat since ")

    # The killed worker's database session ended, so its advisory lock is gone: a new run trains.
    training_worker.start()
    second = training_run_start(
        knowledge_base=labelled_kb, component="retriever", mode="contrastive_query_only", parameters={**parameters, "epochs": 1}
    )
    wait_until(lambda: TrainingRun.objects.get(pk=second.pk).is_finished, timeout=240,
               message=f"the restarted worker to train\n{training_worker.log()}")  # fmt: skip
    second.refresh_from_db()
    assert second.status == "succeeded", second.log + training_worker.log()
    assert not ModelVersion.objects.filter(training_run_id=run_id).exists()
    assert ModelVersion.objects.get(training_run=second).name == "retriever-v1"


def test_a_worker_killed_after_a_checkpoint_leaves_a_run_that_goes_on_from_it_when_a_worker_returns(
    labelled_kb, training_worker, settings, artifacts
):
    from rag.training.artifacts import verify_manifest
    from training.services.runs import run_output_folder, training_run_start, training_runs_fail_stalled
    from training.services.runs.shared import run_checkpoint_step

    # 2 steps an epoch, 40 epochs: long enough to be killed after its checkpoint at step 10.
    parameters = {"epochs": 40, "batch_size": 2, "heldout_share": 0.0, "device": "cpu", "checkpoint_every": 10}
    run = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive_query_only", parameters=parameters)
    wait_until(lambda: (run_checkpoint_step(run) or 0) >= 10, timeout=240,
               message=f"the worker to save a checkpoint\n{training_worker.log()}")  # fmt: skip
    training_worker.stop(kill=True)
    checkpoint_step = run_checkpoint_step(run)
    run.refresh_from_db()
    assert run.status == "running" and checkpoint_step < 80

    settings.RAGLOOP_TRAINING_STALL_SECONDS = 3
    wait_until(lambda: training_runs_fail_stalled() == [] and TrainingRun.objects.get(pk=run.pk).status == "queued",
               timeout=30, interval=0.5, message="the sweeper to queue the run again")  # fmt: skip
    run.refresh_from_db()
    assert run.resumes == 1 and f"Queued again to go on from its checkpoint at step {checkpoint_step} (1 of 3)." in run.log

    training_worker.start()
    wait_until(lambda: TrainingRun.objects.get(pk=run.pk).is_finished, timeout=300,
               message=f"the restarted worker to finish the run\n{training_worker.log()}")  # fmt: skip
    run.refresh_from_db()
    assert run.status == "succeeded", run.log + training_worker.log()
    assert f"resumed from the checkpoint at step {checkpoint_step} of 80" in run.log
    version = ModelVersion.objects.get(training_run=run)
    assert version.parameters["trainer"]["resumed_from_step"] == checkpoint_step
    assert [point["step"] for point in version.training_curve] == list(range(1, 81))
    folder = run_output_folder(run)
    assert not (folder / "checkpoint").exists()  # not part of the model
    verify_manifest(artifacts / version.artifact_path)
