"""A retriever run that replaces a version trained on erased data starts from clean weights: the
nearest ancestor whose lineage holds no erased example, else the base model; never from the
flagged encoder, or the replacement would keep what it learnt from the erased data."""

from types import SimpleNamespace

import pytest

from knowledge.errors import InvalidInput
from knowledge.models import EmbeddingSpace, KnowledgeBase
from knowledge.services.knowledge_bases import BASE_MODEL_REFERENCE, retriever_model_path
from rag.training import retriever as retriever_training
from training.models import ModelVersion, TrainingRun
from training.services.runs import inputs
from training.services.runs.shared import Reporter
from training.services.runs.trainers import retriever as retriever_trainer

from .conftest import retriever_version

pytestmark = pytest.mark.django_db


def _full_mode_version(knowledge_base, name, *, parent=None, flagged=False, space_status="ready"):
    number = name.rsplit("v", 1)[1]
    space = EmbeddingSpace.objects.create(
        knowledge_base=knowledge_base, retriever_version=name, dimensions=384, status=space_status,
        model_reference=f"{knowledge_base.slug}/retriever/{number}/document_encoder",
    )  # fmt: skip
    version = retriever_version(knowledge_base, name, space=space, parent=parent)
    ModelVersion.objects.filter(pk=version.pk).update(
        query_model_reference=space.model_reference, trained_on_erased_data=flagged
    )
    return ModelVersion.objects.get(pk=version.pk)


def _query_only_version(knowledge_base, name, *, space, parent, flagged=False):
    version = retriever_version(knowledge_base, name, space=space, parent=parent)
    ModelVersion.objects.filter(pk=version.pk).update(
        query_model_reference=f"{knowledge_base.slug}/retriever/{name}/query_encoder", trained_on_erased_data=flagged
    )
    return ModelVersion.objects.get(pk=version.pk)


def _make_live(knowledge_base, version):
    ModelVersion.objects.filter(pk=version.pk).update(status="live")
    KnowledgeBase.objects.filter(pk=knowledge_base.pk).update(
        live_space=version.embedding_space, live_retriever_version=version.name,
        live_query_model_reference=version.query_model_reference,
    )  # fmt: skip


def _run(knowledge_base, mode="contrastive"):
    return TrainingRun.objects.create(knowledge_base=knowledge_base, component="retriever", mode=mode, parameters={})


def test_a_clean_live_retriever_is_trained_from_its_own_encoder(knowledge_base):
    v1 = _full_mode_version(knowledge_base, "retriever-v1")
    _make_live(knowledge_base, v1)

    start, encoder = inputs.live_retriever(_run(knowledge_base))

    assert (start.version, start.space, encoder) == ("retriever-v1", v1.embedding_space, retriever_model_path(v1.embedding_space.model_reference))


def test_a_flagged_full_mode_version_is_replaced_from_its_nearest_clean_ancestor(knowledge_base):
    v1 = _full_mode_version(knowledge_base, "retriever-v1")
    v2 = _full_mode_version(knowledge_base, "retriever-v2", parent=v1, flagged=True)
    v3 = _full_mode_version(knowledge_base, "retriever-v3", parent=v2, flagged=True)
    _make_live(knowledge_base, v3)

    start, encoder = inputs.live_retriever(_run(knowledge_base))

    assert encoder == retriever_model_path(v1.embedding_space.model_reference)
    # Negatives are still mined from what serves: the corpus the live space holds has no erased document.
    assert start.space == v3.embedding_space


def test_with_every_ancestor_flagged_the_run_starts_from_the_base_model(knowledge_base):
    v1 = _full_mode_version(knowledge_base, "retriever-v1", flagged=True)
    v2 = _full_mode_version(knowledge_base, "retriever-v2", parent=v1, flagged=True)
    _make_live(knowledge_base, v2)

    _, encoder = inputs.live_retriever(_run(knowledge_base))

    assert encoder == retriever_model_path(BASE_MODEL_REFERENCE)


def test_a_flagged_query_only_version_over_a_clean_space_trains_against_that_space(knowledge_base):
    # The query-only version's own weights are never a starting point: it trains from the
    # space's document encoder, which a clean version produced.
    v1 = _full_mode_version(knowledge_base, "retriever-v1")
    v2 = _query_only_version(knowledge_base, "retriever-v2", space=v1.embedding_space, parent=v1, flagged=True)
    _make_live(knowledge_base, v2)

    start, encoder = inputs.live_retriever(_run(knowledge_base, "contrastive_query_only"), query_only=True)

    assert (start.space, encoder) == (v1.embedding_space, retriever_model_path(v1.embedding_space.model_reference))


def test_a_query_only_run_moves_to_the_clean_space_when_the_live_space_came_from_a_flagged_encoder(knowledge_base):
    v1 = _full_mode_version(knowledge_base, "retriever-v1")
    v2 = _full_mode_version(knowledge_base, "retriever-v2", parent=v1, flagged=True)
    v3 = _query_only_version(knowledge_base, "retriever-v3", space=v2.embedding_space, parent=v2, flagged=True)
    _make_live(knowledge_base, v3)

    start, encoder = inputs.live_retriever(_run(knowledge_base, "contrastive_query_only"), query_only=True)

    # The candidate's query encoder must match clean document vectors: v1's space, not the live one.
    assert (start.version, start.space, start.query_model_reference) == ("retriever-v1", v1.embedding_space, v1.embedding_space.model_reference)
    assert encoder == retriever_model_path(v1.embedding_space.model_reference)


def test_a_query_only_run_is_refused_when_the_clean_space_holds_no_vectors(knowledge_base):
    v1 = _full_mode_version(knowledge_base, "retriever-v1", space_status="retired")
    v2 = _full_mode_version(knowledge_base, "retriever-v2", parent=v1, flagged=True)
    _make_live(knowledge_base, v2)

    with pytest.raises(InvalidInput, match=r"query-only run cannot replace retriever-v2.*retriever-v1.*full mode"):
        inputs.live_retriever(_run(knowledge_base, "contrastive_query_only"), query_only=True)
    # Full mode re-embeds the corpus, so the retired space's encoder is still a clean start.
    _, encoder = inputs.live_retriever(_run(knowledge_base))
    assert encoder == retriever_model_path(v1.embedding_space.model_reference)


def test_the_trainer_starts_from_the_clean_encoder_and_says_why_in_the_run_log(knowledge_base, monkeypatch, tmp_path):
    v1 = _full_mode_version(knowledge_base, "retriever-v1", flagged=True)
    _make_live(knowledge_base, v1)
    run = TrainingRun.objects.create(
        knowledge_base=knowledge_base, component="retriever", mode="contrastive", status="running",
        parameters={"top_k": 5, "mined_negatives": 0, "epochs": 1, "batch_size": 2, "learning_rate": 1e-5,
                    "warmup_ratio": 0.0, "seed": 1, "failure_tag_repeats": 1},
    )  # fmt: skip
    started_from = []

    def train_contrastive(*, base_model_path, **_):
        started_from.append(base_model_path)
        raise InvalidInput("stopped here: only the starting point is under test")

    monkeypatch.setattr(retriever_training, "train_contrastive", train_contrastive)
    # Only the starting point is under test: the snapshot's examples and chunks are stand-ins.
    monkeypatch.setattr(inputs, "train_examples", lambda run: [SimpleNamespace(relevant=["a passage"])])
    monkeypatch.setattr(inputs, "mine_negatives", lambda **_: {})
    monkeypatch.setattr(inputs, "examples_in_chunks", lambda **_: [object()])

    with pytest.raises(InvalidInput, match="stopped here"):
        retriever_trainer.train_contrastive(run=run, folder=tmp_path, reporter=Reporter(run.pk))

    assert started_from == [retriever_model_path(BASE_MODEL_REFERENCE)]
    run.refresh_from_db()
    assert "starting from the encoder of base: the live retriever's encoder (retriever-v1) was trained on erased data" in run.log
