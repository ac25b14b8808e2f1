"""Evaluation as a job row: the task hands the job to the evaluation service, a reason to refuse
is the job's error, a finished job is never run again, and a job whose worker died is resumed."""

import pytest

from knowledge.errors import InvalidInput
from tests.training.conftest import generator_version, label_questions
from training.models import EvaluationJob
from training.services import evaluation as evaluation_module
from training.services import evaluation_jobs
from training.services.evaluation_jobs import evaluation_job_execute, evaluation_job_start, evaluation_jobs_resume_stalled
from training.services.snapshots import dataset_snapshot_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch):
    jobs = []
    monkeypatch.setattr(evaluation_jobs, "_enqueue", jobs.append)
    return jobs


@pytest.fixture
def candidate(embedded_knowledge_base, curator):
    label_questions(embedded_knowledge_base, curator)
    snapshot = dataset_snapshot_create(knowledge_base=embedded_knowledge_base, heldout_share=0.5)
    return generator_version(embedded_knowledge_base, "generator-v1", snapshot=snapshot)


def test_a_job_is_queued_after_commit_and_runs_the_evaluation_once(candidate, sent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = evaluation_job_start(version=candidate)
    assert sent == [job.pk] and job.status == "queued"

    done = evaluation_job_execute(job_id=job.pk)
    assert done.status == "succeeded" and done.error == "" and done.started_at <= done.finished_at
    assert done.evaluation.candidate_id == candidate.pk and done.evaluation.baseline_name == "extractive"

    again = evaluation_job_execute(job_id=job.pk)  # a redelivered message
    assert again.evaluation_id == done.evaluation_id and candidate.evaluations.count() == 1
    assert evaluation_job_execute(job_id=987654321) is None


def test_a_refusal_is_the_jobs_error_not_a_crash(candidate, sent, monkeypatch):
    def nothing_held_out(*, version, snapshot=None):
        raise InvalidInput("Snapshot 7 has no held-out examples to evaluate on.")

    monkeypatch.setattr(evaluation_module, "model_version_evaluate", nothing_held_out)
    job = evaluation_job_start(version=candidate)
    done = evaluation_job_execute(job_id=job.pk)
    assert (done.status, done.error, done.evaluation) == ("failed", "Snapshot 7 has no held-out examples to evaluate on.", None)


def test_an_unexpected_error_is_recorded_with_its_type(candidate, sent, monkeypatch):
    def broken(*, version, snapshot=None):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(evaluation_module, "model_version_evaluate", broken)
    done = evaluation_job_execute(job_id=evaluation_job_start(version=candidate).pk)
    assert (done.status, done.error) == ("failed", "RuntimeError: CUDA out of memory")


def test_a_running_job_whose_worker_died_is_resumed_but_not_one_still_held(candidate, sent):
    from django.db import connections

    dead = evaluation_job_start(version=candidate)
    held = evaluation_job_start(version=candidate)
    EvaluationJob.objects.filter(pk__in=[dead.pk, held.pk]).update(status="running")
    sent.clear()
    # Another session holds `held`'s lock, as a live worker evaluating it would.
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s, 3)", [held.pk])
        assert evaluation_jobs_resume_stalled() == [dead.pk]
        assert evaluation_job_execute(job_id=held.pk) is None  # busy elsewhere: nothing done
        assert EvaluationJob.objects.get(pk=held.pk).status == "running"
    finally:
        other.close()
    assert sent == [dead.pk]
    assert evaluation_job_execute(job_id=dead.pk).status == "succeeded"
