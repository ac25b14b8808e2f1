"""Synthetic questions: a job row moved by its task, asking a local fake OpenAI-compatible
endpoint (tests.conftest.FakeJudgeServer, never a real one) for questions per chunk, keeping
those the live retriever answers with their chunk as synthetic turns, and the judging page."""

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError

from curation.models import Membership, SyntheticQuestionJob
from curation.services import synthetic_questions
from curation.services.synthetic_questions import synthetic_question_job_execute, synthetic_question_job_start
from curation.tasks import synthetic_question_job_execute_task
from knowledge.errors import InvalidInput
from knowledge.models import Turn
from tests.conftest import FakeJudgeServer


@pytest.fixture
def endpoint(monkeypatch, judge_server_url, settings):
    """The fake endpoint as OPENAI_BASE_URL; the model named by the setting."""
    settings.RAGLOOP_SYNTHETIC_QUESTIONS_MODEL = "writer-1"

    def use(path: str = "questions") -> None:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{judge_server_url}/{path}/v1")

    use()
    return use


@pytest.fixture
def enqueued(monkeypatch):
    sent = []
    monkeypatch.setattr(synthetic_questions, "_enqueue", sent.append)
    return sent


def chunk_of(knowledge_base, document):
    return knowledge_base.chunks.get(document__external_id=document)


def test_a_job_keeps_the_questions_whose_chunk_the_retriever_finds_and_stores_them_as_synthetic_turns(
    embedded_knowledge_base, endpoint, enqueued, django_capture_on_commit_callbacks
):
    kb = embedded_knowledge_base
    with django_capture_on_commit_callbacks(execute=True):
        job = synthetic_question_job_start(knowledge_base=kb, chunks=10, per_chunk=2, top_k=1)
    assert enqueued == [job.pk] and (job.status, job.model) == ("queued", "writer-1")

    synthetic_question_job_execute_task(job.pk)  # what the worker runs

    job.refresh_from_db()
    # 4 chunks, 2 questions each. Each chunk's own question finds it first; the Mars question,
    # asked for every chunk, has one chunk first: kept for that chunk only.
    assert (job.status, job.chunks_total, job.chunks_done, job.chunks_failed) == ("succeeded", 4, 4, 0)
    assert (job.generated, job.kept, job.dropped, job.error) == (8, 5, 3, "")
    assert job.retriever_version == "base" and job.progress == 1.0
    assert len(FakeJudgeServer.requests) == 4
    assert {r["body"]["model"] for r in FakeJudgeServer.requests} == {"writer-1"}

    turns = list(Turn.objects.filter(source=Turn.Source.SYNTHETIC).order_by("pk"))
    assert len(turns) == 5 and all(turn.needs_labels and turn.answer == "" for turn in turns)
    statins = next(turn for turn in turns if "statins inhibit" in turn.query)
    assert statins.query == "Is it true that statins inhibit HMG-CoA reductase, the rate-limiting enzyme of cholesterol synthesis?"
    source = chunk_of(kb, "d-statins")
    assert statins.metadata["synthetic"] == {
        "job": job.pk, "model": "writer-1", "top_k": 1, "source_chunk_id": source.pk, "source_rank": 1,
    }  # fmt: skip
    assert statins.external_id == f"synthetic-{job.pk}-{source.pk}-0"
    assert [(p.rank, p.chunk_id) for p in statins.passages.all()] == [(1, source.pk)]
    assert sum(turn.query == FakeJudgeServer.MARS_QUESTION for turn in turns) == 1

    # A redelivered message finds the job finished; run from the start again, it stores no turn twice.
    assert synthetic_question_job_execute(job_id=job.pk).kept == 5
    SyntheticQuestionJob.objects.filter(pk=job.pk).update(status="queued", chunks_done=0, generated=0, kept=0, dropped=0)
    again = synthetic_question_job_execute(job_id=job.pk)
    assert (again.status, again.kept) == ("succeeded", 5) and Turn.objects.count() == 5


def test_a_larger_k_keeps_more_and_the_source_rank_is_recorded(embedded_knowledge_base, endpoint):
    job = synthetic_question_job_start(knowledge_base=embedded_knowledge_base, chunks=4, per_chunk=2, top_k=4, enqueue=False)
    job = synthetic_question_job_execute(job_id=job.pk)
    assert (job.generated, job.kept, job.dropped) == (8, 8, 0)
    ranks = sorted(t.metadata["synthetic"]["source_rank"] for t in Turn.objects.filter(query=FakeJudgeServer.MARS_QUESTION))
    assert ranks == [1, 2, 3, 4]
    assert all(t.passages.count() == 4 for t in Turn.objects.all())


def test_without_an_endpoint_the_job_is_refused_with_a_clear_error(embedded_knowledge_base, monkeypatch, enqueued):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(InvalidInput, match="No OpenAI-compatible endpoint is configured for 'test-kb': set OPENAI_BASE_URL"):
        synthetic_question_job_start(knowledge_base=embedded_knowledge_base, chunks=4)
    with pytest.raises(CommandError, match="No OpenAI-compatible endpoint"):
        call_command("synthesize_questions", "--kb", "test-kb", "--chunks", "4")
    assert not SyntheticQuestionJob.objects.exists() and enqueued == []


def test_an_endpoint_without_a_model_name_is_refused(embedded_knowledge_base, judge_server_url, monkeypatch, settings):
    monkeypatch.setenv("OPENAI_BASE_URL", f"{judge_server_url}/questions/v1")
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    settings.RAGLOOP_SYNTHETIC_QUESTIONS_MODEL = settings.RAGLOOP_LLM_JUDGE_MODEL = ""
    with pytest.raises(InvalidInput, match="need a model name"):
        synthetic_question_job_start(knowledge_base=embedded_knowledge_base, chunks=4)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"chunks": 0}, "chunks must be a whole number from 1"),
        ({"chunks": 4, "per_chunk": 11}, "per_chunk must be a whole number from 1 to 10"),
        ({"chunks": 4, "top_k": 0}, "top_k must be"),
        ({"chunks": 4, "seed": -1}, "seed must be"),
    ],
)
def test_bad_numbers_are_refused_and_nothing_is_written(embedded_knowledge_base, endpoint, enqueued, arguments, message):
    with pytest.raises(InvalidInput, match=message):
        synthetic_question_job_start(knowledge_base=embedded_knowledge_base, **arguments)
    assert not SyntheticQuestionJob.objects.exists()


@pytest.mark.parametrize(("path", "error"), [("down", "returned 500"), ("malformed", "no JSON object")])
def test_a_job_fails_with_the_reason_when_no_chunk_gets_questions(embedded_knowledge_base, endpoint, path, error):
    endpoint(path)
    job = synthetic_question_job_start(knowledge_base=embedded_knowledge_base, chunks=4, enqueue=False)
    job = synthetic_question_job_execute(job_id=job.pk)
    assert (job.status, job.chunks_done, job.chunks_failed, job.kept) == ("failed", 4, 4, 0)
    assert job.error.startswith("The endpoint answered no chunk with questions") and error in job.error
    assert job.finished_at is not None and not Turn.objects.exists()


def test_the_command_runs_a_job_and_reports_its_counts(embedded_knowledge_base, endpoint, capsys):
    call_command("synthesize_questions", "--kb", "test-kb", "--chunks", "3", "--per-chunk", "1", "--top-k", "1", "--now")
    out = capsys.readouterr().out
    job = SyntheticQuestionJob.objects.get()
    assert (job.chunks_total, job.generated, job.kept) == (3, 3, 3)
    assert f"job #{job.pk} succeeded: 3 questions written for 3 chunks (0 failed), 3 kept as synthetic turns, 0 dropped" in out


def test_the_judging_page_marks_a_synthetic_turn_and_its_source_passage(
    embedded_knowledge_base, endpoint, client, django_user_model
):
    job = synthetic_question_job_start(knowledge_base=embedded_knowledge_base, chunks=4, per_chunk=1, top_k=4, enqueue=False)
    synthetic_question_job_execute(job_id=job.pk)
    turn = Turn.objects.filter(query__contains="statins inhibit").get()
    curator = django_user_model.objects.create_user("carol", password="pw-carol-123")
    curator.groups.add(Group.objects.get_or_create(name="curator")[0])
    Membership.objects.create(knowledge_base=embedded_knowledge_base, user=curator)
    client.force_login(curator)

    page = client.get(f"/kbs/test-kb/turns/{turn.pk}/judge/").content.decode()
    assert 'id="wb-synthetic"' in page and "synthetic question — confirm or fix" in page
    assert "writer-1 wrote it for the passage marked <em>source</em>" in page and "at rank 1" in page
    assert page.count('class="wb-badge wb-synthetic wb-source"') == 1
    queue = client.get("/kbs/test-kb/queue/").content.decode()
    assert queue.count(">synthetic</span>") == 4
