"""The reranker as a model version: serving with a live reranker (reordered passages, the turn's
latency split and its page), promotion and rollback, held-out evaluation against no reranker,
a retraining policy that targets it, and a real training run from graded labels."""

import shutil
from pathlib import Path

import pytest
from django.template.defaultfilters import floatformat

from curation.services.labels import LabelInput, label_submit
from knowledge.errors import Conflict, InvalidInput
from knowledge.models import KnowledgeBase
from knowledge.selectors import passages_search, reranker_for
from knowledge.services.turns import turn_ask
from rag.embedding import base_retriever_path
from rag.reranking import Reranker, rerank_order
from tests.training.conftest import QUESTIONS, make_snapshot, passage
from training.models import (
    Component,
    DatasetSnapshot,
    Evaluation,
    EvaluationSet,
    LoopCycle,
    ModelVersion,
    PromotionEvent,
    TrainingRun,
)
from training.services import evaluation_jobs, loop
from training.services.evaluation import model_version_evaluate
from training.services.loop import cycles
from training.services.runs import engine, training_run_start
from training.services.runs.shared import Trained
from training.services.versions import model_version_promote, model_version_register, model_version_rollback

QUERY = "Which enzyme do statins inhibit?"


@pytest.fixture(scope="module")
def cross_encoders(tmp_path_factory) -> dict[str, Path]:
    """Two cross-encoders made from the packaged MiniLM with differently seeded (untrained) heads:
    real models whose orders differ from the first stage's and from each other's."""
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder

    root = tmp_path_factory.mktemp("cross-encoders")
    folders = {}
    for name, seed in (("one", 0), ("two", 1)):
        torch.manual_seed(seed)
        model = CrossEncoder(str(base_retriever_path()), num_labels=1, max_length=256, device="cpu", local_files_only=True)
        model.save_pretrained(str(root / name))
        folders[name] = root / name
    return folders


@pytest.fixture
def artifacts(settings, tmp_path) -> Path:
    settings.RAGLOOP_ARTIFACTS_DIR = tmp_path / "artifacts"
    return settings.RAGLOOP_ARTIFACTS_DIR


def reranker_version(knowledge_base, name, source: Path, artifacts: Path, **fields) -> ModelVersion:
    folder = artifacts / knowledge_base.slug / "reranker" / name
    shutil.copytree(source, folder)
    return model_version_register(
        knowledge_base=knowledge_base, component=Component.RERANKER, artifact_folder=folder, name=name, **fields
    )


def expected_order(knowledge_base, folder: Path, query: str, k: int) -> list[int]:
    """The chunk ids the reranker in `folder` puts first among the first stage's top rerank_top_n."""
    candidates = passages_search(knowledge_base=knowledge_base, query=query, k=knowledge_base.rerank_top_n, rerank=False).passages
    scores = Reranker(folder, device="cpu").scores(query, [p.text for p in candidates])
    return [candidates[index].chunk_id for index in rerank_order(scores)[:k]]


def test_a_live_reranker_reorders_the_first_stages_top_n_and_the_turn_records_the_latency_split(
    embedded_knowledge_base, admin_user, client, artifacts, cross_encoders
):
    kb = embedded_knowledge_base
    KnowledgeBase.objects.filter(pk=kb.pk).update(rerank_top_n=4)
    kb.refresh_from_db()
    first_stage = [p.chunk_id for p in passages_search(knowledge_base=kb, query=QUERY, k=4, rerank=False).passages]

    plain = turn_ask(knowledge_base=kb, query=QUERY, k=2)
    assert plain.reranker_version == ""
    assert [p.chunk_id for p in plain.passages.order_by("rank")] == first_stage[:2]
    assert set(plain.latency_split) == {"embed", "first_stage", "rerank", "generate"}
    assert plain.latency_split["rerank"] == 0.0 and plain.latency_split["embed"] > 0

    version = reranker_version(kb, "reranker-v1", cross_encoders["one"], artifacts)
    model_version_promote(version=version, actor=admin_user, reason="reranker")
    expected = expected_order(kb, cross_encoders["one"], QUERY, 2)
    assert expected != first_stage[:2]  # this head does reorder (it reads chunks the first stage put 3rd and 4th)

    turn = turn_ask(knowledge_base=kb, query=QUERY, k=2)
    assert turn.reranker_version == "reranker-v1"
    assert turn.retriever_version == plain.retriever_version  # the first stage is still named as it was
    assert [p.chunk_id for p in turn.passages.order_by("rank")] == expected
    assert [p.rank for p in turn.passages.order_by("rank")] == [1, 2]
    assert turn.latency_split["rerank"] > 0
    assert sum(turn.latency_split.values()) <= turn.latency_ms

    # The side-by-side switch: rerank=False is the first stage alone.
    unreranked = passages_search(knowledge_base=kb, query=QUERY, k=2, rerank=False)
    assert (unreranked.reranker_version, [p.chunk_id for p in unreranked.passages]) == ("", first_stage[:2])

    client.force_login(admin_user)
    page = client.get(f"/turns/{turn.pk}/").content.decode()
    assert "reranker reranker-v1" in page
    assert f"rerank {floatformat(turn.latency_split['rerank'], 1)} ms" in page
    assert "first stage" in page and "generate" in page


def test_promotion_and_rollback_switch_the_live_reranker(embedded_knowledge_base, admin_user, artifacts, cross_encoders):
    kb = embedded_knowledge_base
    v1 = reranker_version(kb, "reranker-v1", cross_encoders["one"], artifacts)
    v2 = reranker_version(kb, "reranker-v2", cross_encoders["two"], artifacts)
    assert len(v1.artifact_checksum) == 64 and v1.artifact_path == "test-kb/reranker/reranker-v1"
    assert reranker_for(knowledge_base=kb) is None

    model_version_promote(version=v1, actor=admin_user)
    assert reranker_for(knowledge_base=kb).version == "reranker-v1"
    model_version_promote(version=v2, actor=admin_user)
    kb.refresh_from_db()
    assert (kb.live_reranker_version, kb.live_reranker_path) == ("reranker-v2", "test-kb/reranker/reranker-v2")
    assert turn_ask(knowledge_base=kb, query=QUERY, k=2).reranker_version == "reranker-v2"
    # The retriever is a component of its own: its live pointers did not move.
    assert (kb.live_retriever_version, kb.live_generator_version) == ("", "")

    model_version_rollback(knowledge_base=kb, component=Component.RERANKER, actor=admin_user, reason="slower")
    v1.refresh_from_db(); v2.refresh_from_db()  # fmt: skip
    assert (v1.status, v2.status) == ("live", "retired")
    assert reranker_for(knowledge_base=kb).version == "reranker-v1"
    model_version_rollback(knowledge_base=kb, component=Component.RERANKER, actor=admin_user)
    kb.refresh_from_db()
    assert (kb.live_reranker_version, kb.live_reranker_path) == ("", "")
    assert turn_ask(knowledge_base=kb, query=QUERY, k=2).reranker_version == ""
    with pytest.raises(Conflict, match="No reranker version is live"):
        model_version_rollback(knowledge_base=kb, component=Component.RERANKER, actor=admin_user)
    log = [
        (e.component, e.action, e.from_version and e.from_version.name, e.to_version and e.to_version.name)
        for e in PromotionEvent.objects.order_by("created_at", "pk")
    ]
    assert log == [
        ("reranker", "promote", None, "reranker-v1"),
        ("reranker", "promote", "reranker-v1", "reranker-v2"),
        ("reranker", "rollback", "reranker-v2", "reranker-v1"),
        ("reranker", "rollback", "reranker-v1", None),
    ]

    # A reranker whose files changed after registration is refused before it can serve.
    (artifacts / "test-kb/reranker/reranker-v2/config.json").write_text("{}")
    with pytest.raises(InvalidInput, match="config.json"):
        model_version_promote(version=v2, actor=admin_user)
    assert reranker_for(knowledge_base=kb) is None


def _label_graded(knowledge_base, curator) -> None:
    """Each question: its document's passage relevant, the next passage partly, the rest not."""
    for query, document, answer, _ in QUESTIONS:
        turn = turn_ask(knowledge_base=knowledge_base, query=query, k=4)
        passages = list(turn.passages.order_by("rank"))
        others = [p for p in passages if p.source_id != document]
        judgments = {p.pk: "relevant" if p.source_id == document else "not_relevant" for p in passages}
        judgments[others[0].pk] = "partly"
        label_submit(turn=turn, curator=curator, data=LabelInput(passages=judgments, answer_rating="wrong", gold_answer=answer))


def test_the_evaluation_compares_the_candidate_with_no_reranker_on_the_same_candidates(
    embedded_knowledge_base, curator, admin_user, artifacts, cross_encoders
):
    from training.services.snapshots import dataset_snapshot_create

    kb = embedded_knowledge_base
    _label_graded(kb, curator)
    snapshot = dataset_snapshot_create(knowledge_base=kb, heldout_share=1.0)
    assert all(len(example.partly) == 1 for example in snapshot.examples.all())
    version = reranker_version(kb, "reranker-v1", cross_encoders["one"], artifacts)

    evaluation = model_version_evaluate(version=version, snapshot=snapshot)
    assert (evaluation.component, evaluation.baseline, evaluation.baseline_name) == ("reranker", None, "no reranker (base)")
    assert evaluation.candidate_metrics["queries"] == evaluation.baseline_metrics["queries"] == len(QUESTIONS)
    # No reranker is the first stage's order: what the retriever's own evaluation sees at depth 50.
    first_stage = {q: passages_search(knowledge_base=kb, query=q, k=4, rerank=False).passages[0].document_external_id for q, *_ in QUESTIONS}
    by_query = {r.example.query: r for r in evaluation.query_results.select_related("example")}
    assert {q: r.baseline["documents"][0]["id"] for q, r in by_query.items()} == first_stage
    expected_first = {q: expected_order(kb, cross_encoders["one"], q, 1)[0] for q, *_ in QUESTIONS}
    chunk_documents = dict(kb.chunks.values_list("pk", "document__external_id"))
    assert {q: r.candidate["documents"][0]["id"] for q, r in by_query.items()} == {
        q: chunk_documents[c] for q, c in expected_first.items()
    }
    assert "ndcg@10" in evaluation.delta_intervals
    version.refresh_from_db()
    assert version.metrics["ndcg@10"] == evaluation.candidate_metrics["ndcg@10"]

    # Once a reranker is live, the next candidate is compared with it.
    model_version_promote(version=version, actor=admin_user)
    v2 = reranker_version(kb, "reranker-v2", cross_encoders["two"], artifacts)
    second = model_version_evaluate(version=v2, snapshot=snapshot)
    assert (second.baseline, second.baseline_name) == (version, "reranker-v1")
    assert second.baseline_metrics["ndcg@10"] == pytest.approx(evaluation.candidate_metrics["ndcg@10"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": "contrastive"}, "not a reranker training mode"),
        ({"gate_metric": "f1"}, "not a reranker metric"),
        ({"parameters": {"mined_negatives": -1}}, "'mined_negatives' must be"),
        ({"parameters": {"base_model": "/m"}}, "Unknown parameter.*base_model"),
        ({"parameters": {"loss": "listnet"}}, "'loss' must be one of bce, lambda, got 'listnet'"),
    ],
)
def test_a_bad_reranker_policy_is_refused(embedded_knowledge_base, changes, message):
    with pytest.raises(InvalidInput, match=message):
        loop.retraining_policy_set(knowledge_base=embedded_knowledge_base, component="reranker", changes=changes)


@pytest.fixture
def queued(monkeypatch):
    import training.services.runs.lifecycle as lifecycle

    sent = {"runs": [], "jobs": [], "cycles": []}
    monkeypatch.setattr(lifecycle, "_enqueue_execute", sent["runs"].append)
    monkeypatch.setattr(evaluation_jobs, "_enqueue", sent["jobs"].append)
    monkeypatch.setattr(cycles, "_enqueue_advance", sent["cycles"].append)
    return sent


def _run_cycle(cycle_id, queued) -> LoopCycle:
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


@pytest.mark.django_db(transaction=True)
def test_a_policy_retrains_the_reranker_and_its_gate_decides_against_no_reranker(
    embedded_knowledge_base, curator, artifacts, cross_encoders, queued, monkeypatch
):
    kb = embedded_knowledge_base
    _label_graded(kb, curator)
    trained = []

    def train(*, run, folder, reporter):  # the real trainer is exercised in the slow test below
        shutil.copytree(cross_encoders["one"], folder)
        trained.append((run.component, run.mode, run.parameters["mined_negatives"]))
        return Trained(folder, {})

    monkeypatch.setitem(engine.TRAINERS, "cross_encoder", train)
    # Trained on every labelled question, scored on a pinned set of the same questions in other words.
    exam = make_snapshot(kb, [
        {"example_id": f"exam-{n}", "query": f"{query} (asked again)", "relevant": [passage("x", document_id=document)]}
        for n, (query, document, *_) in enumerate(QUESTIONS)
    ])  # fmt: skip
    EvaluationSet.objects.create(knowledge_base=kb, snapshot=exam)
    policy = loop.retraining_policy_set(
        knowledge_base=kb, component="reranker",
        changes={"min_new_labels": 1, "gate_min_queries": 1, "parameters": {"heldout_share": 0.0}},
    )  # fmt: skip
    assert (policy.mode, policy.gate_metric) == ("cross_encoder", "ndcg@10")
    cycle = _run_cycle(loop.loop_cycle_run_now(policy=policy).pk, queued)

    assert trained == [("reranker", "cross_encoder", 4)]
    assert cycle.candidate.component == "reranker" and cycle.candidate.name == "reranker-v1"
    evaluation = Evaluation.objects.get(candidate=cycle.candidate)
    assert evaluation.baseline_name == "no reranker (base)"
    assert cycle.gate_outcome["baseline"] == "no reranker (base)"
    assert cycle.status in {LoopCycle.Status.REFUSED, LoopCycle.Status.AWAITING_REVIEW}, cycle.log
    assert "embed" not in cycle.stage_seconds  # a reranker has no embedding space to build


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_reranker_run_trains_from_graded_labels_and_is_registered_and_evaluated(
    embedded_knowledge_base, curator, artifacts, queued
):
    kb = embedded_knowledge_base
    _label_graded(kb, curator)
    run = training_run_start(
        knowledge_base=kb, component="reranker", mode="cross_encoder",
        parameters={"heldout_share": 0.0, "epochs": 1, "batch_size": 4, "device": "cpu"},
    )  # fmt: skip
    assert run.parameters["top_k"] == 20 and run.parameters["max_length"] == 256
    assert engine.training_run_execute(run_id=run.pk) == engine.Outcome.SUCCEEDED
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.log
    version = ModelVersion.objects.get(training_run=run)
    assert (version.component, version.mode, version.embedding_space) == ("reranker", "cross_encoder", None)
    assert len(version.artifact_checksum) == 64
    pairs = version.parameters["trainer"]["pairs"]
    # 4 queries: one relevant, one partly, two not relevant each; the sample's 4 chunks are all judged.
    assert (pairs["relevant"], pairs["partly"], pairs["not_relevant"]) == (4, 4, 8)
    assert "BinaryCrossEntropyLoss" == version.parameters["trainer"]["loss"]
    assert queued["jobs"], "the engine queues the candidate's evaluation"
    assert (artifacts / version.artifact_path / "MANIFEST.json").exists()
    assert DatasetSnapshot.objects.get(pk=run.snapshot_id).examples.exclude(partly=[]).count() == 4
