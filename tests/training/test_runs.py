"""Training runs: validation, one run per component (Conflict and the advisory lock), idempotent
execution, the stall sweeper, cancellation, and tiny real runs in every mode that produce
candidate versions serving can load."""

import threading
from datetime import timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from knowledge.errors import Conflict, InvalidInput
from knowledge.models import ChunkEmbedding, EmbeddingJob, EmbeddingSpace
from knowledge.selectors import passages_retrieve, retriever_for
from knowledge.services.turns import generator_for, turn_ask
from rag.training.artifacts import verify_manifest
from training.models import Component, DatasetSnapshot, ModelVersion, TrainingRun
from training.services import runs
from training.services.runs import (
    Outcome,
    engine,
    inputs,
    lifecycle,
    training_run_cancel,
    training_run_execute,
    training_run_start,
    training_runs_fail_stalled,
)
from training.services.versions import model_version_promote, model_version_register

from .conftest import CONVERSATION, CORRECTED_QUERY, QUESTIONS, SYSTEM_MESSAGE, conversation_turns, label_questions

FAST_RETRIEVER = {"epochs": 1, "batch_size": 2, "heldout_share": 0.0, "device": "cpu", "top_k": 4, "mined_negatives": 2}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Test machines share their few cores: one intra-op thread avoids OpenMP threads spinning
    against each other (on a loaded 2-core machine, encoding a query went from 0.8 s to 0.04 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path) -> Path:
    settings.RAGLOOP_ARTIFACTS_DIR = tmp_path / "artifacts"
    return settings.RAGLOOP_ARTIFACTS_DIR


@pytest.fixture
def labelled_kb(embedded_knowledge_base, curator):
    label_questions(embedded_knowledge_base, curator)
    return embedded_knowledge_base


@pytest.fixture
def no_tasks_sent(monkeypatch):
    """Record task messages instead of sending them (other test runs share the broker)."""
    import knowledge.tasks
    import training.tasks

    sent: list[tuple[str, tuple]] = []
    for module, name in [
        (training.tasks, "training_run_execute_task"),
        (training.tasks, "evaluation_job_execute_task"),
        (training.tasks, "loop_cycle_advance_task"),
        (knowledge.tasks, "embedding_job_dispatch_task"),
        (knowledge.tasks, "embedding_space_index_build_task"),
    ]:
        monkeypatch.setattr(getattr(module, name), "delay", lambda *args, _name=name: sent.append((_name, args)))
    return sent


@pytest.fixture
def other_session(db):
    """A second database session (a raw connection), e.g. another worker holding the lock."""
    wrapper = connections["default"]
    raw = wrapper.get_new_connection(wrapper.get_connection_params())
    raw.autocommit = True
    yield raw
    raw.close()


def _lock(session, knowledge_base, component) -> bool:
    with session.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s::integer, %s::integer)", [knowledge_base.pk, engine._LOCK_CODES[component]])
        return cursor.fetchone()[0]


def _counts():
    return TrainingRun.objects.count(), DatasetSnapshot.objects.count(), ModelVersion.objects.count()


# --- starting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "mode", "parameters", "message"),
    [
        ("ranker", "contrastive", {}, "Component 'ranker' is unknown"),
        ("retriever", "lora_radit", {}, "not a retriever training mode"),
        ("generator", "contrastive", {}, "not a generator training mode"),
        ("retriever", "contrastive", {"epoch": 2}, "Unknown parameter.*epoch"),
        ("retriever", "contrastive", {"lm_temperature": 0.1}, "Unknown parameter.*lm_temperature"),
        ("retriever", "contrastive", {"epochs": "3"}, "'epochs' must be an integer >= 1 and <= 1000, got '3'"),
        ("retriever", "contrastive", {"epochs": 0}, "'epochs' must be"),
        ("retriever", "contrastive", {"epochs": True}, "'epochs' must be"),
        ("retriever", "contrastive", {"learning_rate": 0}, "'learning_rate' must be a number > 0"),
        ("retriever", "contrastive", {"mini_batch_size": 0}, "'mini_batch_size' must be an integer >= 1"),
        ("retriever", "lsr", {"mini_batch_size": 4, "base_model": "/m"}, "Unknown parameter.*lsr.*mini_batch_size"),
        ("retriever", "contrastive", {"learning_rate": float("nan")}, "'learning_rate' must be"),
        ("retriever", "contrastive", {"heldout_share": 1.5}, "'heldout_share' must be"),
        ("retriever", "lsr", {}, "pass base_model"),
        ("retriever", "lsr", {"base_model": "/models/x", "lm_temperature": -1}, "'lm_temperature' must be a number > 0"),
        ("generator", "lora_radit", {}, "pass base_model"),
        ("generator", "lora_raft", {"base_model": ""}, "'base_model' must be a non-empty string"),
        ("generator", "lora_raft", {"base_model": "/m", "oracle_probability": 2}, "'oracle_probability' must be"),
        ("generator", "openai", {}, "needs model"),
        ("generator", "openai", {"model": "gpt", "api_key": "sk-1"}, "api_key is not a run parameter"),
        ("generator", "openai", {"model": "gpt", "base_url": "file:///etc"}, "must start with http"),
    ],
)
def test_bad_components_modes_and_parameters_are_refused_and_write_nothing(
    knowledge_base, no_tasks_sent, monkeypatch, component, mode, parameters, message
):
    # No labels: a check made after snapshotting would fail with "no curated turns" instead.
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    with pytest.raises(InvalidInput, match=message):
        training_run_start(knowledge_base=knowledge_base, component=component, mode=mode, parameters=parameters)
    assert _counts() == (0, 0, 0)
    assert no_tasks_sent == []


def test_a_knowledge_base_without_curated_labels_cannot_train(embedded_knowledge_base, no_tasks_sent):
    with pytest.raises(InvalidInput, match="no curated turns"):
        training_run_start(knowledge_base=embedded_knowledge_base, component="retriever", mode="contrastive")
    assert _counts() == (0, 0, 0)


def test_a_snapshot_whose_examples_are_all_held_out_cannot_train(labelled_kb, no_tasks_sent):
    with pytest.raises(InvalidInput, match="no training examples"):
        training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive", parameters={"heldout_share": 1.0})
    assert _counts() == (0, 0, 0)  # the snapshot taken for it was rolled back too


def test_start_freezes_a_snapshot_fills_in_defaults_and_queues_the_task_after_commit(
    labelled_kb, curator, no_tasks_sent, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        run = training_run_start(
            knowledge_base=labelled_kb, component="retriever", mode="contrastive_query_only",
            parameters={"epochs": 3, "heldout_share": 0.0}, created_by=curator,
        )  # fmt: skip
        assert no_tasks_sent == []  # not before the commit

    assert no_tasks_sent == [("training_run_execute_task", (run.pk,))]
    assert run.status == "queued" and run.snapshot.example_count == 4 and run.snapshot.train_count == 4
    assert run.parameters == {
        "epochs": 3, "heldout_share": 0.0, "seed": 0, "batch_size": 16, "learning_rate": 1e-4, "warmup_ratio": 0.1,
        "top_k": 10, "mined_negatives": 4, "failure_tag_repeats": 2, "corpus_negatives": 200_000, "checkpoint_every": 50,
        "gradient_accumulation_steps": 1,
    }  # fmt: skip
    assert run.created_by == curator and "queued retriever training" in run.log


def test_an_existing_snapshot_of_another_knowledge_base_is_refused(labelled_kb, no_tasks_sent):
    from knowledge.services.knowledge_bases import knowledge_base_create
    from training.services.snapshots import dataset_snapshot_create

    other = knowledge_base_create(slug="other-kb")
    snapshot = dataset_snapshot_create(knowledge_base=labelled_kb)
    with pytest.raises(InvalidInput, match="another knowledge base"):
        training_run_start(knowledge_base=other, component="retriever", mode="contrastive", snapshot=snapshot)
    with pytest.raises(InvalidInput, match="heldout_share applies only"):
        training_run_start(
            knowledge_base=labelled_kb, component="retriever", mode="contrastive", snapshot=snapshot,
            parameters={"heldout_share": 0.5},
        )  # fmt: skip
    run = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive", snapshot=snapshot)
    assert run.snapshot == snapshot and DatasetSnapshot.objects.count() == 1


def test_two_runs_of_the_same_component_cannot_be_queued_at_once(labelled_kb, no_tasks_sent):
    first = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive")
    with pytest.raises(Conflict, match=f"Training run #{first.pk}"):
        training_run_start(knowledge_base=labelled_kb, component="retriever", mode="lsr", parameters={"base_model": "/m"})
    # the other component is independent
    training_run_start(knowledge_base=labelled_kb, component="generator", mode="openai", parameters={"model": "gpt-4o-mini"})
    TrainingRun.objects.filter(pk=first.pk).update(status="running")
    with pytest.raises(Conflict, match="is running"):
        training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive")
    TrainingRun.objects.filter(pk=first.pk).update(status="succeeded")
    training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive")


# --- executing: idempotency, the lock, the sweeper ---------------------------------------


@pytest.fixture
def must_not_train(monkeypatch):
    def fail(**kwargs):
        raise AssertionError("the trainer must not run")

    for mode in engine.TRAINERS:
        monkeypatch.setitem(engine.TRAINERS, mode, fail)


def test_execute_while_another_session_holds_the_lock_leaves_the_run_queued(
    labelled_kb, no_tasks_sent, other_session, must_not_train
):
    run = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive")
    assert _lock(other_session, labelled_kb, "retriever")

    assert training_run_execute(run_id=run.pk) == Outcome.WAITING_FOR_LOCK
    assert training_run_execute(run_id=run.pk) == Outcome.WAITING_FOR_LOCK
    run.refresh_from_db()
    assert run.status == "queued" and run.started_at is None
    assert run.log.count(runs.WAITING_FOR_LOCK) == 1
    assert not ModelVersion.objects.exists()


def test_the_lock_is_held_while_training_and_released_after_a_failure(labelled_kb, no_tasks_sent, other_session, monkeypatch, artifacts):
    run = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive")
    seen = {}

    def broken_trainer(*, run, folder, reporter):
        seen["locked_elsewhere"] = not _lock(other_session, labelled_kb, "retriever")
        seen["generator_free"] = _lock(other_session, labelled_kb, "generator")
        folder.mkdir(parents=True)
        (folder / "partial.bin").write_bytes(b"x")
        raise RuntimeError("out of memory")

    monkeypatch.setitem(engine.TRAINERS, "contrastive", broken_trainer)
    assert training_run_execute(run_id=run.pk) == Outcome.FAILED

    assert seen == {"locked_elsewhere": True, "generator_free": True}
    run.refresh_from_db()
    assert run.status == "failed" and run.error == "RuntimeError: out of memory"
    assert "Traceback" in run.log and "out of memory" in run.log and run.finished_at
    assert not (artifacts / "test-kb" / "retriever" / str(run.pk)).exists()  # no half-written artifact kept
    assert _lock(other_session, labelled_kb, "retriever")  # released
    assert no_tasks_sent == [] and not ModelVersion.objects.exists()


def test_an_output_folder_left_over_from_another_database_is_never_overwritten(labelled_kb, no_tasks_sent, must_not_train, artifacts):
    run = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive")
    leftover = artifacts / "test-kb" / "retriever" / str(run.pk)
    leftover.mkdir(parents=True)
    (leftover / "MANIFEST.json").write_text("{}")

    assert training_run_execute(run_id=run.pk) == Outcome.FAILED
    run.refresh_from_db()
    assert "already exists and is not empty" in run.error
    assert (leftover / "MANIFEST.json").read_text() == "{}"


def test_a_redelivered_message_of_a_finished_or_running_run_does_nothing(labelled_kb, no_tasks_sent, must_not_train, other_session):
    run = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive")
    TrainingRun.objects.filter(pk=run.pk).update(status="succeeded", log="done\n", progress=1.0)
    assert training_run_execute(run_id=run.pk) == Outcome.NOTHING_TO_DO
    run.refresh_from_db()
    assert (run.status, run.log, run.progress) == ("succeeded", "done\n", 1.0)

    from django.utils import timezone

    TrainingRun.objects.filter(pk=run.pk).update(status="running", heartbeat_at=timezone.now(), log="")
    # Another worker is training it (it holds the lock): the duplicate does nothing.
    assert _lock(other_session, labelled_kb, "retriever")
    assert training_run_execute(run_id=run.pk) == Outcome.NOTHING_TO_DO
    # Even with the lock free, a fresh heartbeat means the run is not ours to touch.
    with other_session.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock_all()")
    assert training_run_execute(run_id=run.pk) == Outcome.NOTHING_TO_DO
    run.refresh_from_db()
    assert (run.status, run.log) == ("running", "")
    assert training_run_execute(run_id=123456789) == Outcome.NOTHING_TO_DO


def test_a_running_run_with_a_stale_heartbeat_and_a_free_lock_is_failed_on_redelivery(labelled_kb, no_tasks_sent, must_not_train):
    run = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive")
    TrainingRun.objects.filter(pk=run.pk).update(status="running", heartbeat_at="2000-01-01T00:00:00Z")
    assert training_run_execute(run_id=run.pk) == Outcome.FAILED
    run.refresh_from_db()
    assert run.status == "failed" and run.error.startswith("The worker stopped (no heartbeat since 2000-01-01")


def test_a_killed_run_is_marked_failed_by_the_sweeper_and_a_second_run_can_start(labelled_kb, no_tasks_sent, settings):
    from django.utils import timezone

    settings.RAGLOOP_TRAINING_STALL_SECONDS = 60
    killed = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive")
    alive = training_run_start(knowledge_base=labelled_kb, component="generator", mode="openai", parameters={"model": "m"})
    TrainingRun.objects.filter(pk=killed.pk).update(status="running", heartbeat_at=timezone.now() - timedelta(seconds=61))
    TrainingRun.objects.filter(pk=alive.pk).update(status="running", heartbeat_at=timezone.now() - timedelta(seconds=30))
    with pytest.raises(Conflict):
        training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive")

    assert training_runs_fail_stalled() == [killed.pk]
    assert training_runs_fail_stalled() == []

    killed.refresh_from_db()
    assert killed.status == "failed" and killed.error.startswith("The worker stopped (no heartbeat since ")
    assert TrainingRun.objects.get(pk=alive.pk).status == "running"
    second = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive")
    assert second.status == "queued"


def test_cancel_a_queued_run_at_once_a_running_one_at_its_next_step_and_refuse_a_finished_one(labelled_kb, no_tasks_sent, must_not_train):
    queued = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive")
    assert training_run_cancel(run=queued).status == "cancelled"
    assert training_run_execute(run_id=queued.pk) == Outcome.NOTHING_TO_DO  # its message arrives later
    with pytest.raises(Conflict, match="already cancelled"):
        training_run_cancel(run=queued)

    running = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive")
    TrainingRun.objects.filter(pk=running.pk).update(status="running")
    running = training_run_cancel(run=running)
    assert running.status == "running" and running.cancel_requested and "cancel requested" in running.log


@pytest.mark.slow
def test_cancelling_a_running_run_stops_it_at_the_next_step(labelled_kb, no_tasks_sent, monkeypatch, artifacts):
    import rag.training.retriever as retriever_training

    run = training_run_start(
        knowledge_base=labelled_kb, component="retriever", mode="contrastive_query_only",
        parameters={**FAST_RETRIEVER, "epochs": 50, "mined_negatives": 0},
    )  # fmt: skip
    real_trainer = retriever_training.train_contrastive
    steps = []

    def cancelled_once_started(**kwargs):
        training_run_cancel(run=run)  # the UI's cancel button, pressed while the run is running
        progress = kwargs["progress"]
        return real_trainer(**{**kwargs, "progress": lambda fraction, metrics: (steps.append(metrics), progress(fraction, metrics))})

    monkeypatch.setattr(retriever_training, "train_contrastive", cancelled_once_started)
    assert training_run_execute(run_id=run.pk) == Outcome.CANCELLED

    run.refresh_from_db()
    assert run.status == "cancelled" and run.finished_at and "stopped: training cancelled before step 1" in run.log
    assert steps == []
    assert not ModelVersion.objects.exists() and not (artifacts / "test-kb" / "retriever" / str(run.pk)).exists()


# --- real runs ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_query_only_contrastive_run_registers_a_candidate_with_lineage_that_serving_can_use(
    labelled_kb, no_tasks_sent, admin_user, artifacts, django_capture_on_commit_callbacks
):
    kb = labelled_kb
    live = model_version_register(
        knowledge_base=kb, component=Component.RETRIEVER, artifact_folder=None, name="retriever-v1",
        embedding_space=kb.live_space, query_model_reference="base:all-MiniLM-L6-v2",
    )  # fmt: skip
    model_version_promote(version=live, actor=admin_user)
    run = training_run_start(
        knowledge_base=kb, component="retriever", mode="contrastive_query_only",
        parameters={**FAST_RETRIEVER, "mini_batch_size": 1},  # the cached variant, one text at a time
    )  # fmt: skip

    with django_capture_on_commit_callbacks(execute=True):
        assert training_run_execute(run_id=run.pk) == Outcome.SUCCEEDED

    run.refresh_from_db()
    version = run.model_version
    assert (run.status, run.progress, run.error) == ("succeeded", 1.0, "")
    assert "mining negatives with the live retriever (retriever-v1)" in run.log
    assert f"registered candidate {version.name}" in run.log
    assert no_tasks_sent == [("evaluation_job_execute_task", (_evaluation_job(version).pk,))]
    # lineage
    assert (version.name, version.status, version.component, version.mode) == (
        "retriever-v2", "candidate", "retriever", "contrastive_query_only"
    )  # fmt: skip
    assert version.parent == live and version.snapshot == run.snapshot and version.training_run == run
    assert version.parameters["batch_size"] == 2 and version.parameters["trainer"]["query_only"] is True
    assert version.parameters["trainer"]["mined_negative_queries"] == 4
    assert version.parameters["mini_batch_size"] == version.parameters["trainer"]["mini_batch_size"] == 1
    # The frozen side was read from the live space, every chunk of it, and nothing was encoded
    # again: the labelled passages are chunks the space holds. Every stored vector was a negative.
    chunks = ChunkEmbedding.objects.filter(space=kb.live_space).count()
    assert version.parameters["corpus_negatives"] == 200_000
    assert (version.parameters["trainer"]["frozen_vectors_given"], version.parameters["trainer"]["frozen_texts_encoded"]) == (chunks, 0)
    assert version.parameters["trainer"]["corpus_negatives"] == chunks
    assert f"reading up to 200000 stored vectors of {kb.live_space.retriever_version}" in run.log
    assert version.code_revision == runs.code_revision()
    assert [point["step"] for point in version.training_curve] == [1, 2]
    # artifact and serving: the live space's document vectors, the new query encoder
    assert version.artifact_path == f"test-kb/retriever/{run.pk}" and len(version.artifact_checksum) == 64
    verify_manifest(artifacts / version.artifact_path)
    assert version.embedding_space == kb.live_space
    assert version.query_model_reference == f"test-kb/retriever/{run.pk}/query_encoder"
    choice = retriever_for(knowledge_base=kb, retriever_version=version.name)
    assert choice.query_model_reference == version.query_model_reference
    top = passages_retrieve(space=choice.space, query="Which enzyme do statins inhibit?", k=2,
                            query_model_reference=choice.query_model_reference)  # fmt: skip
    assert top[0].document_external_id == "d-statins"
    model_version_promote(version=version, actor=admin_user)
    assert turn_ask(knowledge_base=kb, query="Why are people alert after coffee?", k=2).retriever_version == "retriever-v2"


@pytest.mark.slow
def test_a_full_mode_run_embeds_the_corpus_into_its_own_space_before_it_is_evaluated(
    labelled_kb, no_tasks_sent, admin_user, django_capture_on_commit_callbacks
):
    from knowledge.services.embeddings import chunk_batch_embed

    kb = labelled_kb
    run = training_run_start(knowledge_base=kb, component="retriever", mode="contrastive", parameters={**FAST_RETRIEVER, "epochs": 1})
    with django_capture_on_commit_callbacks(execute=True):
        assert training_run_execute(run_id=run.pk) == Outcome.SUCCEEDED

    version = ModelVersion.objects.get(training_run=run)
    space = version.embedding_space
    assert (space.retriever_version, space.status) == (version.name, EmbeddingSpace.Status.BUILDING)
    assert space.model_reference == version.query_model_reference == f"test-kb/retriever/{run.pk}/encoder"
    assert space.dimensions == kb.live_space.dimensions
    job = EmbeddingJob.objects.get(space=space)
    assert no_tasks_sent == [("embedding_job_dispatch_task", (job.pk,))]  # no evaluation yet
    with pytest.raises(Conflict, match="embedded"):
        model_version_promote(version=version, actor=admin_user)

    with django_capture_on_commit_callbacks(execute=True):
        chunk_batch_embed(job_id=job.pk, chunk_ids=list(kb.chunks.values_list("pk", flat=True)))

    space.refresh_from_db()
    assert space.status == EmbeddingSpace.Status.READY
    assert no_tasks_sent[-1] == ("evaluation_job_execute_task", (_evaluation_job(version).pk,))
    model_version_promote(version=version, actor=admin_user)
    choice = retriever_for(knowledge_base=kb)
    assert (choice.version, choice.space) == (version.name, space)
    assert passages_retrieve(space=choice.space, query="statins enzyme", k=1, query_model_reference=choice.query_model_reference)


@pytest.fixture(scope="module")
def tiny_language_model(tmp_path_factory) -> Path:
    """A random 2-layer GPT-2 over the words of the test corpus (see tests/rag/test_training_generator.py)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from rag.generation import build_prompt
    from tests.conftest import SAMPLE_DOCUMENTS
    from tests.rag.conftest import word_tokenizer

    texts = [build_prompt(query=q, passages=[]) + " " + a + " " + r for q, _, a, r in QUESTIONS]
    texts += [d["title"] + " " + d["text"] for d in SAMPLE_DOCUMENTS] + ["##Reason: ##begin_quote## ##end_quote## <ANSWER>:"]
    tokenizer = word_tokenizer(texts, with_pad=False)
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=512, vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_an_lsr_run_scores_chunks_with_the_language_model_and_trains_the_query_encoder(
    labelled_kb, no_tasks_sent, tiny_language_model, django_capture_on_commit_callbacks
):
    run = training_run_start(
        knowledge_base=labelled_kb, component="retriever", mode="lsr",
        parameters={"base_model": str(tiny_language_model), "heldout_share": 0.0, "device": "cpu", "top_k": 3, "batch_size": 2},
    )  # fmt: skip
    assert run.parameters["query_only"] is True and run.parameters["lm_temperature"] == 0.01
    with django_capture_on_commit_callbacks(execute=True):
        assert training_run_execute(run_id=run.pk) == Outcome.SUCCEEDED, TrainingRun.objects.get(pk=run.pk).log

    run.refresh_from_db()
    version = run.model_version
    assert "scoring chunks with the language model" in run.log
    assert version.mode == "lsr" and version.parameters["trainer"]["method"] == "lsr"
    assert version.parameters["trainer"]["lm"] == str(tiny_language_model)
    assert version.embedding_space == labelled_kb.live_space
    assert version.query_model_reference.endswith(f"/{run.pk}/query_encoder")
    assert len(version.training_curve) == 2  # 4 queries in batches of 2
    assert no_tasks_sent == [("evaluation_job_execute_task", (_evaluation_job(version).pk,))]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora_radit", "lora_raft"])
def test_a_lora_run_produces_a_generator_version_that_serving_loads_after_promotion(
    labelled_kb, no_tasks_sent, tiny_language_model, admin_user, artifacts, mode
):
    run = training_run_start(
        knowledge_base=labelled_kb, component="generator", mode=mode,
        parameters={"base_model": str(tiny_language_model), "heldout_share": 0.0, "device": "cpu", "epochs": 2, "max_length": 384},
    )  # fmt: skip
    assert training_run_execute(run_id=run.pk) == Outcome.SUCCEEDED, TrainingRun.objects.get(pk=run.pk).log

    version = ModelVersion.objects.get(training_run=run)
    folder = artifacts / "test-kb" / "generator" / str(run.pk)
    assert (version.generator_backend, version.generator_model) == ("hf", str(tiny_language_model))
    assert version.generator_adapter_path == version.artifact_path == f"test-kb/generator/{run.pk}"  # relative: any machine
    assert (folder / "adapter_config.json").exists() and (folder / "MANIFEST.json").exists()
    # RA-DIT: one pair per retrieved chunk (4 per question); RAFT: one pair per question
    assert version.parameters["trainer"]["pairs"] == (16 if mode == "lora_radit" else 4)
    assert version.training_curve and version.parent is None

    model_version_promote(version=version, actor=admin_user)
    generator, name = generator_for(knowledge_base=labelled_kb)
    assert name == version.name and generator.adapter_path == folder.resolve()
    from rag.generation import ContextPassage

    answer = generator.generate(query="Which enzyme do statins inhibit?", passages=[ContextPassage(text="Statins inhibit HMG-CoA reductase.")])
    assert answer.backend == "hf"


@pytest.fixture
def fine_tuning_api(monkeypatch):
    from tests.rag.conftest import API_KEY, FakeFineTuningApi

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeFineTuningApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_an_openai_run_records_the_fine_tuned_model_as_a_generator_version(labelled_kb, no_tasks_sent, fine_tuning_api, artifacts, admin_user):
    run = training_run_start(
        knowledge_base=labelled_kb, component="generator", mode="openai",
        parameters={"model": "gpt-4o-mini", "base_url": fine_tuning_api, "poll_seconds": 0, "heldout_share": 0.0, "epochs": 2},
    )  # fmt: skip
    assert training_run_execute(run_id=run.pk) == Outcome.SUCCEEDED, TrainingRun.objects.get(pk=run.pk).log

    version = ModelVersion.objects.get(training_run=run)
    assert version.generator_backend == "openai"
    assert version.generator_model.startswith("ft:gpt-4o-mini:org:ragloop-test-kb:")
    folder = artifacts / version.artifact_path
    assert len((folder / "training.jsonl").read_text().splitlines()) == 4
    verify_manifest(folder)
    assert version.parameters["trainer"]["job_id"].startswith("ftjob-")
    assert [point["step"] for point in version.training_curve][-1] == 10
    run.refresh_from_db()
    assert "fine-tuning job ftjob-" in run.log and run.progress == 1.0
    model_version_promote(version=version, actor=admin_user)
    generator, name = generator_for(knowledge_base=labelled_kb)
    assert (generator.backend, generator.model, name) == ("openai", version.generator_model, version.name)


# --- conversations: what each mode trains on for a follow-up ------------------------------------


def _history_before(position: int, *, max_words: int = 1500) -> list:
    """The ChatMessages the CONVERSATION's turn at `position` was asked after, as serving shows
    them to the generator: without the app's system message, within `max_words`."""
    from rag.conversation import ChatMessage, history_within_budget

    messages = [ChatMessage(**SYSTEM_MESSAGE)]
    for question, _, answer, *_ in CONVERSATION[:position]:
        messages += [ChatMessage("user", question), ChatMessage("assistant", answer)]
    return history_within_budget(messages, max_tokens=max_words)


@pytest.fixture
def captured_lora(monkeypatch):
    """Replace train_lora by a stand-in that records its arguments and saves an empty adapter."""
    import rag.training.generator as generator_training

    captured = {}

    def train_lora(**kwargs):
        captured.update(kwargs)
        folder = Path(kwargs["output_path"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_config.json").write_text("{}")
        return generator_training.GeneratorTrainingResult(
            output_path=folder, training_curve=[{"step": 1, "loss": 1.0}], parameters={"pairs": len(kwargs["pairs"])}, steps=1
        )

    monkeypatch.setattr(generator_training, "train_lora", train_lora)
    return captured


@pytest.mark.parametrize(("mode", "serving_budget"), [("lora_radit", 1500), ("lora_raft", 1500), ("lora_radit", 11)])
def test_lora_pairs_of_a_follow_up_are_the_conversation_then_the_question_as_asked(
    knowledge_base, curator, no_tasks_sent, captured_lora, settings, mode, serving_budget
):
    from rag.generation import ContextPassage, chat_messages

    # never more history than serving shows the generator (11 words: the last exchange only)
    settings.RAGLOOP_CHAT_HISTORY_TOKENS = serving_budget
    conversation_turns(knowledge_base, curator)
    run = training_run_start(
        knowledge_base=knowledge_base, component="generator", mode=mode,
        parameters={"base_model": "/models/tiny", "heldout_share": 0.0, "oracle_probability": 1.0} if mode == "lora_raft"
        else {"base_model": "/models/tiny", "heldout_share": 0.0},
    )  # fmt: skip
    assert run.parameters["max_history_tokens"] == 256

    assert training_run_execute(run_id=run.pk) == Outcome.SUCCEEDED, TrainingRun.objects.get(pk=run.pk).log

    # one passage per turn, so one pair per turn in both modes; the history is cut to the
    # budget later, by tokens of the model's own tokenizer
    assert captured_lora["max_history_tokens"] == 256
    assert sorted(captured_lora["pairs"], key=lambda pair: len(pair[0])) == [
        (
            chat_messages(
                query=question, passages=[ContextPassage(text=text)], history=_history_before(position, max_words=serving_budget)
            ),
            gold if mode == "lora_radit" else f"<ANSWER>: {gold}",  # RAFT's answer, with no rationale to quote
        )
        for position, (question, _, _, _, text, gold) in enumerate(CONVERSATION)
    ]
    [(messages, _)] = [pair for pair in captured_lora["pairs"] if "Query: And in children?\n" in pair[0][-1]["content"]]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]  # the question as asked, not the rewrite
    [(messages, _)] = [pair for pair in captured_lora["pairs"] if "Query: What about calcium?\n" in pair[0][-1]["content"]]
    assert len(messages) == (6 if serving_budget == 1500 else 4)


def test_an_openai_run_of_a_conversation_uploads_the_chats_serving_sends(
    knowledge_base, curator, no_tasks_sent, fine_tuning_api, artifacts, settings
):
    import json

    settings.RAGLOOP_CHAT_HISTORY_TOKENS = 11
    conversation_turns(knowledge_base, curator)
    run = training_run_start(
        knowledge_base=knowledge_base, component="generator", mode="openai",
        parameters={"model": "gpt-4o-mini", "base_url": fine_tuning_api, "poll_seconds": 0, "heldout_share": 0.0},
    )  # fmt: skip
    assert run.parameters["max_history_words"] == 11  # serving's budget, recorded with the run
    assert training_run_execute(run_id=run.pk) == Outcome.SUCCEEDED, TrainingRun.objects.get(pk=run.pk).log

    folder = artifacts / ModelVersion.objects.get(training_run=run).artifact_path
    chats = [json.loads(line)["messages"] for line in (folder / "training.jsonl").read_text().splitlines()]
    # 8 words keep only the last exchange before "What about calcium?"
    assert sorted([m["content"] for m in chat[1:-2]] for chat in chats) == [
        [], ["And in children?", "I could not find it."], ["Does vitamin D prevent hip fractures?", "Yes, by a fifth [1]."],
    ]


def test_lsr_retrieves_with_the_standalone_query_and_scores_chunks_as_the_generator_is_asked(
    embedded_knowledge_base, curator, no_tasks_sent, monkeypatch, tmp_path
):
    import rag.generation
    import rag.training.retriever as retriever_training
    from training.services.runs.shared import Reporter
    from training.services.runs.trainers import retriever as retriever_trainers

    conversation_turns(embedded_knowledge_base, curator)
    run = training_run_start(
        knowledge_base=embedded_knowledge_base, component="retriever", mode="lsr",
        parameters={"base_model": "/models/tiny", "heldout_share": 0.0, "top_k": 2},
    )  # fmt: skip
    TrainingRun.objects.filter(pk=run.pk).update(status="running")
    retrieved_for, scored = [], []
    real_retrieve = inputs.retrieve
    monkeypatch.setattr(inputs, "retrieve", lambda live, query, k: retrieved_for.append(query) or real_retrieve(live, query, k))

    class LanguageModel:
        def __init__(self, **kwargs):
            pass

        def answer_log_likelihood(self, *, query, passage, answer, history=()):
            scored.append((query, tuple(history)))
            return -1.0

    class Captured(Exception):
        pass

    def train_lsr(**kwargs):
        raise Captured(kwargs["examples"], kwargs["lm_log_likelihoods"])

    monkeypatch.setattr(rag.generation, "HFGenerator", LanguageModel)
    monkeypatch.setattr(retriever_training, "train_lsr", train_lsr)
    with pytest.raises(Captured) as captured:
        retriever_trainers.train_lsr(run=run, folder=tmp_path / "lsr", reporter=Reporter(run.pk))

    standalone = [CONVERSATION[0][0], CONVERSATION[1][1], CORRECTED_QUERY]
    examples, lm_scores = captured.value.args
    assert sorted(retrieved_for) == sorted(standalone)
    assert sorted(example.query for example in examples) == sorted(standalone)  # the retriever trains on these
    assert lm_scores == [[-1.0, -1.0]] * 3
    assert sorted(set(scored), key=lambda item: len(item[1])) == [
        (question, tuple(_history_before(position))) for position, (question, *_) in enumerate(CONVERSATION)
    ]


def test_an_openai_run_that_cannot_reach_the_api_fails_with_the_reason(labelled_kb, no_tasks_sent, monkeypatch, settings):
    import rag.training.openai_jobs

    sleeps = []
    monkeypatch.setattr(rag.training.openai_jobs, "_sleep", sleeps.append)
    settings.RAGLOOP_OPENAI_RETRY_ATTEMPTS = 3
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    run = training_run_start(
        knowledge_base=labelled_kb, component="generator", mode="openai",
        parameters={"model": "m", "base_url": "http://127.0.0.1:9/v1", "heldout_share": 0.0},
    )  # fmt: skip
    assert training_run_execute(run_id=run.pk) == Outcome.FAILED
    run.refresh_from_db()
    assert run.error.startswith("FineTuningError: could not reach fine-tuning endpoint") and "sk-wrong" not in run.log
    assert "gave up after 3 attempts" in run.error and sleeps == [1.0, 2.0]
    assert run.remote_state == {}  # nothing was uploaded


def _openai_run(knowledge_base, api_url: str) -> TrainingRun:
    return training_run_start(
        knowledge_base=knowledge_base, component="generator", mode="openai",
        parameters={"model": "gpt-4o-mini", "base_url": api_url, "poll_seconds": 0, "heldout_share": 0.0},
    )  # fmt: skip


def _died_after_creating_its_job(run: TrainingRun, api_url: str, artifacts: Path) -> str:
    """What a first execution leaves when its worker dies while the remote job runs."""
    from rag.training import openai_jobs
    from tests.rag.conftest import API_KEY

    folder = artifacts / "test-kb" / "generator" / str(run.pk)
    folder.mkdir(parents=True)
    (folder / "training.jsonl").write_text('{"messages": []}\n')
    file_id = openai_jobs.upload_training_file(base_url=api_url, api_key=API_KEY, jsonl_path=folder / "training.jsonl")
    job = openai_jobs.create_fine_tuning_job(base_url=api_url, api_key=API_KEY, training_file=file_id, model="gpt-4o-mini")
    TrainingRun.objects.filter(pk=run.pk).update(
        status="running", started_at="2000-01-01T00:00:00Z", heartbeat_at="2000-01-01T00:00:00Z",
        remote_state={"base_url": api_url, "training_file": file_id, "job_id": job["id"]},
    )  # fmt: skip
    return job["id"]


def test_an_openai_run_whose_worker_died_re_attaches_to_its_job_instead_of_starting_another(
    labelled_kb, no_tasks_sent, fine_tuning_api, artifacts
):
    from tests.rag.conftest import FakeFineTuningApi

    run = _openai_run(labelled_kb, fine_tuning_api)
    job_id = _died_after_creating_its_job(run, fine_tuning_api, artifacts)
    creations = len(FakeFineTuningApi.job_requests)

    assert training_run_execute(run_id=run.pk) == Outcome.SUCCEEDED, TrainingRun.objects.get(pk=run.pk).log

    assert len(FakeFineTuningApi.job_requests) == creations  # no second paid job
    version = ModelVersion.objects.get(training_run=run)
    assert version.parameters["trainer"]["job_id"] == job_id
    assert version.generator_model == FakeFineTuningApi.jobs[job_id]["fine_tuned_model"]
    run.refresh_from_db()
    assert f"Re-attaching to remote job {job_id} (1 of 5)" in run.log and f"re-attached to fine-tuning job {job_id}" in run.log
    assert run.remote_state["reattached"] == 1 and run.started_at.year == 2000


def test_a_fresh_openai_run_records_its_file_and_job_as_soon_as_they_exist(labelled_kb, no_tasks_sent, fine_tuning_api, monkeypatch):
    from rag.training import openai_jobs

    seen_while_waiting = []

    def wait_and_look(**kwargs):
        seen_while_waiting.append(dict(TrainingRun.objects.get(pk=run.pk).remote_state))
        return real_wait(**kwargs)

    real_wait = openai_jobs.wait_for_job
    monkeypatch.setattr(openai_jobs, "wait_for_job", wait_and_look)
    run = _openai_run(labelled_kb, fine_tuning_api)
    assert training_run_execute(run_id=run.pk) == Outcome.SUCCEEDED

    [state] = seen_while_waiting
    assert state["base_url"] == fine_tuning_api
    assert state["training_file"].startswith("file-") and state["job_id"].startswith("ftjob-")


def test_the_sweeper_queues_a_stalled_openai_run_again_to_follow_its_job_within_a_bound(
    labelled_kb, no_tasks_sent, fine_tuning_api, artifacts, settings, django_capture_on_commit_callbacks
):
    settings.RAGLOOP_OPENAI_REATTACH_LIMIT = 1
    run = _openai_run(labelled_kb, fine_tuning_api)
    job_id = _died_after_creating_its_job(run, fine_tuning_api, artifacts)
    no_tasks_sent.clear()

    with django_capture_on_commit_callbacks(execute=True):
        assert training_runs_fail_stalled() == []

    run.refresh_from_db()
    assert run.status == "queued" and run.remote_state["reattached"] == 1
    assert f"Queued again to follow remote job {job_id} (1 of 1)" in run.log
    assert no_tasks_sent == [("training_run_execute_task", (run.pk,))]

    TrainingRun.objects.filter(pk=run.pk).update(status="running")  # it died again; the bound is spent
    assert training_runs_fail_stalled() == [run.pk]
    assert TrainingRun.objects.get(pk=run.pk).status == "failed"


def test_cancelling_a_run_queued_to_follow_its_job_cancels_the_job_on_the_server(
    labelled_kb, no_tasks_sent, fine_tuning_api, artifacts
):
    from tests.rag.conftest import FakeFineTuningApi

    run = _openai_run(labelled_kb, fine_tuning_api)
    job_id = _died_after_creating_its_job(run, fine_tuning_api, artifacts)
    training_runs_fail_stalled()  # queued again

    run = training_run_cancel(run=TrainingRun.objects.get(pk=run.pk))
    assert (run.status, run.cancel_requested) == ("queued", True)
    assert f"cancels fine-tuning job {job_id} when it resumes" in run.log

    assert training_run_execute(run_id=run.pk) == Outcome.CANCELLED
    assert FakeFineTuningApi.jobs[job_id]["status"] == "cancelled"
    assert not ModelVersion.objects.filter(training_run=run).exists()


def test_an_openai_run_rides_out_a_rate_limit(labelled_kb, no_tasks_sent, fine_tuning_api, monkeypatch):
    import rag.training.openai_jobs
    from tests.rag.conftest import FakeFineTuningApi

    sleeps = []
    monkeypatch.setattr(rag.training.openai_jobs, "_sleep", sleeps.append)
    FakeFineTuningApi.fail_next("POST", "/files", 429, headers={"Retry-After": "2"})
    FakeFineTuningApi.fail_next("GET", "/fine_tuning/jobs/", 503)
    try:
        run = _openai_run(labelled_kb, fine_tuning_api)
        assert training_run_execute(run_id=run.pk) == Outcome.SUCCEEDED, TrainingRun.objects.get(pk=run.pk).log
    finally:
        FakeFineTuningApi.failures.clear()
    assert sleeps == [2.0, 1.0]


def _evaluation_job(version):
    from training.models import EvaluationJob

    return EvaluationJob.objects.get(candidate=version)


# --- tasks and receivers -----------------------------------------------------------------


def test_the_execute_task_retries_while_the_lock_is_held(labelled_kb, no_tasks_sent, monkeypatch):
    from celery.exceptions import Retry

    from training.tasks import training_run_execute_task

    run = training_run_start(knowledge_base=labelled_kb, component="retriever", mode="contrastive")
    monkeypatch.setattr(runs, "training_run_execute", lambda *, run_id: Outcome.WAITING_FOR_LOCK)
    retries = []
    monkeypatch.setattr(training_run_execute_task, "retry", lambda **kwargs: retries.append(kwargs) or Retry())
    with pytest.raises(Retry):
        training_run_execute_task.run(run.pk)
    assert retries == [{"countdown": 30}]
    assert TrainingRun.objects.get(pk=run.pk).status == "queued"
    # Out of retries: the run fails with a clear reason instead of waiting for ever.
    training_run_execute_task.push_request(retries=training_run_execute_task.max_retries)
    try:
        assert training_run_execute_task.run(run.pk) == Outcome.WAITING_FOR_LOCK
    finally:
        training_run_execute_task.pop_request()
    run.refresh_from_db()
    assert run.status == "failed" and "held its lock for too long" in run.error


# --- CLI ---------------------------------------------------------------------------------


def test_cli_train_refuses_bad_input_with_exit_code_2(labelled_kb, no_tasks_sent):
    for arguments, message in [
        (["--component", "retriever", "--mode", "lsr"], "pass base_model"),
        (["--component", "retriever", "--mode", "contrastive", "--param", "epochs=many"], "'epochs' must be"),
        (["--component", "retriever", "--mode", "contrastive", "--param", "epochs"], "expected key=value"),
        (["--component", "retriever", "--mode", "contrastive", "--snapshot", "999999"], "Snapshot 999999 not found"),
    ]:
        with pytest.raises(CommandError, match=message) as error:
            call_command("train", "test-kb", *arguments)
        assert error.value.returncode == 2
    with pytest.raises(CommandError, match="not found"):
        call_command("train", "no-such-kb", "--component", "retriever", "--mode", "contrastive")
    assert TrainingRun.objects.count() == 0


def test_cli_train_queues_a_run_and_train_cancel_cancels_it(labelled_kb, no_tasks_sent, capsys):
    import json

    call_command("snapshot_create", "test-kb", "--heldout-share", "0", "--json")
    snapshot = json.loads(capsys.readouterr().out)
    assert (snapshot["examples"], snapshot["train"], snapshot["heldout"]) == (4, 4, 0)

    call_command(
        "train", "test-kb", "--component", "retriever", "--mode", "contrastive_query_only",
        "--param", "epochs=3", "--param", "learning_rate=1e-4", "--param", "device=cpu",
        "--snapshot", str(snapshot["id"]), "--json",
    )  # fmt: skip
    run = json.loads(capsys.readouterr().out)
    assert (run["status"], run["snapshot"], run["mode"]) == ("queued", snapshot["id"], "contrastive_query_only")
    assert run["parameters"]["epochs"] == 3 and run["parameters"]["learning_rate"] == 1e-4

    call_command("train_cancel", str(run["id"]))
    assert capsys.readouterr().out.strip() == f"training run #{run['id']} cancelled"
    with pytest.raises(CommandError, match="already cancelled") as error:
        call_command("train_cancel", str(run["id"]))
    assert error.value.returncode == 2


def test_cli_train_wait_exits_non_zero_with_the_error_of_a_failed_run(labelled_kb, monkeypatch, capsys):
    """--wait follows the row; here the "worker" is the service, run when the task is sent."""
    import training.tasks

    def fail_at_once(run_id):
        TrainingRun.objects.filter(pk=run_id).update(status="failed", error="RuntimeError: boom", progress=0.4)

    monkeypatch.setattr(training.tasks.training_run_execute_task, "delay", fail_at_once)
    monkeypatch.setattr(lifecycle.transaction, "on_commit", lambda callback: callback())
    with pytest.raises(CommandError, match="failed: RuntimeError: boom") as error:
        call_command("train", "test-kb", "--component", "retriever", "--mode", "contrastive", "--param", "heldout_share=0", "--wait")
    assert error.value.returncode == 1
    assert "40.0% failed" in capsys.readouterr().err


def test_mined_negatives_skip_every_chunk_of_a_relevant_document(monkeypatch):
    """Another chunk of a document judged relevant is a likely false negative, not a negative."""
    from knowledge.selectors import RetrievedChunk
    from rag.datasets import DatasetExample, LabeledPassage

    hits = [
        RetrievedChunk(rank=1, score=0.9, chunk_id=11, document_id=1, document_external_id="doc-a", title="", text="A, part one"),
        RetrievedChunk(rank=2, score=0.8, chunk_id=12, document_id=1, document_external_id="doc-a", title="", text="A, part two"),
        RetrievedChunk(rank=3, score=0.7, chunk_id=21, document_id=2, document_external_id="doc-b", title="", text="B"),
        RetrievedChunk(rank=4, score=0.6, chunk_id=31, document_id=3, document_external_id="doc-c", title="", text="C"),
    ]
    monkeypatch.setattr(inputs, "retrieve", lambda live, query, k: hits[:k])

    class Reporter:
        def raise_if_stopped(self):
            pass

        def tick(self, done, total):
            pass

    example = DatasetExample(example_id="q", query="q?", relevant=[LabeledPassage(text="A, part one", document_id="doc-a", chunk_id=11)])
    mined = inputs.mine_negatives(examples=[example], live=None, top_k=4, limit=5, reporter=Reporter())
    assert mined == {"q?": ["B", "C"]}
    assert inputs.mine_negatives(examples=[example], live=None, top_k=4, limit=1, reporter=Reporter()) == {"q?": ["B"]}


def test_passages_judged_as_whole_documents_train_as_their_best_chunk(knowledge_base):
    """An imported document-level judgment (no chunk) trains on the chunk the live retriever
    ranks highest for the query: the unit the index holds, within the encoder's window."""
    from knowledge.selectors import retriever_for
    from knowledge.services.documents import documents_ingest
    from rag.datasets import DatasetExample, LabeledPassage
    from rag.documents import SourceDocument
    from tests.conftest import embed_everything_now

    knowledge_base.chunk_max_tokens, knowledge_base.chunk_overlap_tokens = 24, 0
    knowledge_base.save()
    long_text = (
        "Statins lower blood cholesterol by inhibiting the enzyme HMG-CoA reductase in the liver. "
        "Migrating birds navigate with a magnetic compass in their eyes and follow the coastlines south. "
        "Volcanic eruptions inject sulphur dioxide into the stratosphere and cool the climate for years."
    )
    other_text = (
        "Deep sleep consolidates new memories in the hippocampus overnight. "
        "Coffee keeps people alert because caffeine blocks the adenosine receptors of the brain."
    )
    documents_ingest(knowledge_base=knowledge_base, documents=[
        SourceDocument(external_id="long", title="", text=long_text, metadata={}),
        SourceDocument(external_id="other", title="", text=other_text, metadata={}),
    ])  # fmt: skip
    embed_everything_now(knowledge_base)
    chunks = {c.text: c for c in knowledge_base.chunks.all()}
    assert len(chunks) >= 4, "the documents must be split for this test to mean anything"
    birds = next(text for text in chunks if "birds" in text)
    kept = next(text for text in chunks if "Statins" in text)

    class Reporter:
        def phase(self, message, *, low, high):
            self.message = message

        def raise_if_stopped(self):
            pass

        def tick(self, done, total):
            pass

    example = DatasetExample(
        example_id="q",
        query="How do migrating birds find their way south?",
        relevant=[
            LabeledPassage(text=long_text, document_id="long"),  # judged as a whole
            LabeledPassage(text=kept, document_id="long", chunk_id=chunks[kept].pk),  # a chunk stays itself
        ],
        irrelevant=[
            LabeledPassage(text=other_text, document_id="other"),
            LabeledPassage(text="A passage of a document that is not in this knowledge base.", document_id="gone"),
        ],
    )
    reporter = Reporter()
    [converted] = inputs.examples_in_chunks(examples=[example], live=retriever_for(knowledge_base=knowledge_base), reporter=reporter)

    assert converted.query == example.query
    assert converted.positives == [birds, kept]
    # The irrelevant document's hardest chunk for this query; a document not here keeps its text.
    assert converted.hard_negatives[1] == "A passage of a document that is not in this knowledge base."
    assert converted.hard_negatives[0] in chunks and chunks[converted.hard_negatives[0]].document.external_id == "other"
    assert reporter.message == "finding the best chunk of 3 document(s) judged as a whole"
