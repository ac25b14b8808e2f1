"""Cold start: the corpus_pairs retriever mode (no snapshot, no labels; refused by policies) and
snapshots that leave synthetic questions' labels out unless asked."""

import pytest
from django.core.management import call_command

from curation.services.labels import LabelInput, label_submit
from knowledge.errors import InvalidInput
from knowledge.models import Turn
from knowledge.selectors import passages_retrieve, retriever_for
from knowledge.services.turns import turn_ask, turn_synthetic_store
from training.models import DatasetSnapshot, EvaluationJob, ModelVersion, SnapshotExample, TrainingRun
from training.services import loop
from training.services.evaluation_jobs import evaluation_job_execute
from training.services.runs import Outcome, training_run_execute, training_run_start
from training.services.snapshots import dataset_snapshot_create
from training.services.versions import model_version_promote

from .conftest import label_questions

FAST = {"epochs": 1, "batch_size": 2, "device": "cpu", "min_query_words": 4, "min_positive_words": 6}


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.RAGLOOP_ARTIFACTS_DIR = tmp_path / "artifacts"
    return settings.RAGLOOP_ARTIFACTS_DIR


@pytest.fixture
def queued(monkeypatch):
    """Record the tasks that would be sent (other test runs share the broker)."""
    import training.services.evaluation_jobs as evaluation_jobs
    import training.services.runs.lifecycle as lifecycle

    sent = {"runs": [], "jobs": []}
    monkeypatch.setattr(lifecycle, "_enqueue_execute", sent["runs"].append)
    monkeypatch.setattr(evaluation_jobs, "_enqueue", sent["jobs"].append)
    return sent


# --- corpus_pairs -------------------------------------------------------------------------


def test_a_corpus_pairs_run_starts_before_any_label_and_takes_no_snapshot(
    embedded_knowledge_base, queued, django_capture_on_commit_callbacks
):
    assert not Turn.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        run = training_run_start(
            knowledge_base=embedded_knowledge_base, component="retriever", mode="corpus_pairs", parameters=FAST
        )

    assert run.snapshot is None and DatasetSnapshot.objects.count() == 0
    assert run.parameters == {
        **FAST, "seed": 0, "warmup_ratio": 0.1, "learning_rate": 2e-5, "query_only": True, "max_chunks": 5000,
        "max_query_words": 48, "checkpoint_every": 50,
    }  # fmt: skip
    assert "on the chunks of the live space; no labels" in run.log
    assert queued["runs"] == [run.pk]


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"heldout_share": 0.2}, "Unknown parameter.*heldout_share"),
        ({"mined_negatives": 2}, "Unknown parameter.*mined_negatives"),
        ({"max_chunks": 0}, "'max_chunks' must be an integer >= 1"),
        ({"min_query_words": 20, "max_query_words": 10}, r"max_query_words \(10\) must be at least min_query_words \(20\)"),
    ],
)
def test_bad_corpus_pairs_parameters_are_refused(embedded_knowledge_base, queued, parameters, message):
    with pytest.raises(InvalidInput, match=message):
        training_run_start(knowledge_base=embedded_knowledge_base, component="retriever", mode="corpus_pairs", parameters=parameters)
    assert not TrainingRun.objects.exists() and queued["runs"] == []


def test_corpus_pairs_refuses_a_snapshot_and_a_knowledge_base_without_chunks(
    knowledge_base, embedded_knowledge_base, curator, queued
):
    label_questions(embedded_knowledge_base, curator)
    snapshot = dataset_snapshot_create(knowledge_base=embedded_knowledge_base)
    with pytest.raises(InvalidInput, match="not on labels: it takes no snapshot"):
        training_run_start(knowledge_base=embedded_knowledge_base, component="retriever", mode="corpus_pairs", snapshot=snapshot)
    embedded_knowledge_base.chunks.all().delete()
    with pytest.raises(InvalidInput, match="has no embedded chunks in its live space"):
        training_run_start(knowledge_base=embedded_knowledge_base, component="retriever", mode="corpus_pairs")
    assert not TrainingRun.objects.exists()


def test_a_retraining_policy_refuses_corpus_pairs_with_a_reason(embedded_knowledge_base):
    with pytest.raises(InvalidInput, match="'corpus_pairs' trains once from the corpus.*cannot use it"):
        loop.retraining_policy_set(
            knowledge_base=embedded_knowledge_base, component="retriever", changes={"name": "p", "mode": "corpus_pairs"}
        )
    assert not embedded_knowledge_base.retraining_policies.exists()


@pytest.mark.slow
def test_a_corpus_pairs_run_makes_a_version_without_labels_that_is_evaluated_and_promoted(
    embedded_knowledge_base, curator, queued, admin_user, django_capture_on_commit_callbacks
):
    import torch

    torch.set_num_threads(1)  # a shared test machine: see tests/training/test_runs.py
    kb = embedded_knowledge_base
    run = training_run_start(knowledge_base=kb, component="retriever", mode="corpus_pairs", parameters=FAST)
    with django_capture_on_commit_callbacks(execute=True):
        assert training_run_execute(run_id=run.pk) == Outcome.SUCCEEDED

    run.refresh_from_db()
    version = run.model_version
    assert "on 4 corpus pairs of 4 chunks (no labels)" in run.log
    assert (version.name, version.mode, version.snapshot, version.parent) == ("retriever-v1", "corpus_pairs", None, None)
    trainer = version.parameters["trainer"]
    assert (trainer["data"], trainer["chunks"], trainer["labels"], trainer["pairs"]) == ("corpus_pairs", 4, 0, 4)
    assert trainer["lineage"] == "corpus_pairs, 4 chunks, no labels"
    assert trainer["mined_negative_queries"] == 0 and trainer["query_only"] is True
    assert version.embedding_space == kb.live_space  # query-only: the stored vectors stay valid
    assert [point["step"] for point in version.training_curve] == [1, 2]

    # Labels arrive later; the candidate is evaluated on them like any other, and promoted.
    label_questions(kb, curator)
    dataset_snapshot_create(knowledge_base=kb, heldout_share=1.0)
    [job] = EvaluationJob.objects.filter(candidate=version)
    job = evaluation_job_execute(job_id=job.pk)
    assert job.status == "succeeded", job.error
    assert job.evaluation.baseline_name == "base" and "ndcg@10" in job.evaluation.candidate_metrics
    model_version_promote(version=version, actor=admin_user)
    kb.refresh_from_db()
    assert kb.live_retriever_version == "retriever-v1"
    assert turn_ask(knowledge_base=kb, query="Which enzyme do statins inhibit?", k=2).retriever_version == "retriever-v1"


# --- synthetic questions in snapshots --------------------------------------------------------


def synthetic_turn(knowledge_base, query, document):
    live = retriever_for(knowledge_base=knowledge_base)
    retrieved = passages_retrieve(space=live.space, query=query, k=4)
    source = next(p for p in retrieved if p.document_external_id == document)
    turn, created = turn_synthetic_store(
        knowledge_base=knowledge_base, external_id=f"synthetic-test-{document}", query=query, retrieved=retrieved,
        retriever_version=live.version, source_chunk_id=source.chunk_id, metadata={"synthetic": {"model": "fake"}},
    )  # fmt: skip
    assert created
    return turn


def confirm(turn, curator, document):
    judgments = {p.pk: "relevant" if p.source_id == document else "not_relevant" for p in turn.passages.all()}
    # A synthetic question has no answer to rate.
    label_submit(turn=turn, curator=curator, data=LabelInput(passages=judgments))


def test_snapshots_leave_labels_of_synthetic_turns_out_unless_asked_and_count_them(embedded_knowledge_base, curator):
    kb = embedded_knowledge_base
    label_questions(kb, curator)  # four questions people asked
    turn = synthetic_turn(kb, "What enzyme is blocked by statins?", "d-statins")
    confirm(turn, curator, "d-statins")

    people_only = dataset_snapshot_create(knowledge_base=kb, heldout_share=1.0)
    assert (people_only.example_count, people_only.synthetic_count, people_only.include_synthetic) == (4, 0, False)
    assert not people_only.examples.filter(turn=turn).exists()
    assert len(people_only.label_ids) == 4

    with_synthetic = dataset_snapshot_create(knowledge_base=kb, heldout_share=1.0, include_synthetic=True)
    assert (with_synthetic.example_count, with_synthetic.synthetic_count, with_synthetic.include_synthetic) == (5, 1, True)
    example = with_synthetic.examples.get(turn=turn)
    # Held-out figures measure people's questions: a synthetic example always trains.
    assert example.split == SnapshotExample.Split.TRAIN and with_synthetic.heldout_count == 4
    assert example.query == "What enzyme is blocked by statins?"
    assert [p["document_id"] for p in example.relevant] == ["d-statins"]


def test_a_knowledge_base_with_only_synthetic_labels_has_nothing_to_snapshot_by_default(embedded_knowledge_base, curator):
    confirm(synthetic_turn(embedded_knowledge_base, "What enzyme is blocked by statins?", "d-statins"), curator, "d-statins")
    with pytest.raises(InvalidInput, match="no curated turns"):
        dataset_snapshot_create(knowledge_base=embedded_knowledge_base)
    assert dataset_snapshot_create(knowledge_base=embedded_knowledge_base, include_synthetic=True).synthetic_count == 1


def test_training_and_the_snapshot_command_pass_include_synthetic_on(embedded_knowledge_base, curator, queued, capsys):
    kb = embedded_knowledge_base
    label_questions(kb, curator)
    confirm(synthetic_turn(kb, "What enzyme is blocked by statins?", "d-statins"), curator, "d-statins")

    run = training_run_start(knowledge_base=kb, component="retriever", mode="contrastive_query_only", include_synthetic=True)
    assert run.snapshot.synthetic_count == 1 and ", 1 synthetic)" in run.log
    TrainingRun.objects.all().delete()
    assert training_run_start(knowledge_base=kb, component="retriever", mode="contrastive_query_only").snapshot.synthetic_count == 0

    call_command("snapshot_create", kb.slug, "--include-synthetic")
    assert "1 examples are synthetic questions" in capsys.readouterr().out
    assert DatasetSnapshot.objects.order_by("-pk").first().synthetic_count == 1
    assert not ModelVersion.objects.exists()
