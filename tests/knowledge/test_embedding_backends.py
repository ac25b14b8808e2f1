"""A space's inference backend: validated, shown, and switched only where vectors stay compatible."""

import json

import pytest
from django.core.management import CommandError, call_command

from knowledge.errors import Conflict, InvalidInput
from knowledge.models import AuditEvent, EmbeddingSpace, InferenceBackend
from knowledge.services.embedding_backends import embedding_space_backend_set
from knowledge.services.knowledge_bases import knowledge_base_create
from rag.embedding import EMBEDDING_BACKENDS


@pytest.fixture(autouse=True)
def exports_in_tmp(settings, tmp_path_factory):
    settings.RAGLOOP_INFERENCE_EXPORTS_DIR = tmp_path_factory.getbasetemp() / "knowledge-inference-exports"


def test_the_setting_offers_exactly_the_encoder_backends():
    assert tuple(InferenceBackend.values) == EMBEDDING_BACKENDS


def test_an_unknown_backend_is_refused_on_create_and_by_the_commands(db):
    with pytest.raises(InvalidInput, match="Embedding backend 'tensorrt' is unknown"):
        knowledge_base_create(slug="kb-bad", embedding_backend="tensorrt")
    with pytest.raises(CommandError, match="Embedding backend 'int8' is unknown"):
        call_command("kb_create", "kb-bad", "--embedding-backend", "int8")
    assert not EmbeddingSpace.objects.exists()

    knowledge_base = knowledge_base_create(slug="kb-good", embedding_backend="onnx-int8")
    assert knowledge_base.live_space.inference_backend == "onnx-int8"
    with pytest.raises(CommandError, match="Embedding backend 'fast' is unknown"):
        call_command("embedding_backend", "kb-good", "fast")
    knowledge_base.live_space.refresh_from_db()
    assert knowledge_base.live_space.inference_backend == "onnx-int8"


def test_int8_is_refused_on_a_live_torch_space_and_onnx_fp32_is_allowed(embedded_knowledge_base):
    space = embedded_knowledge_base.live_space
    assert space.inference_backend == "torch" and space.embeddings.count() > 0

    with pytest.raises(Conflict, match="would mix incompatible vectors: on .* the lowest cosine") as refused:
        embedding_space_backend_set(space=space, backend="onnx-int8")
    assert "kb_create --embedding-backend onnx-int8" in str(refused.value)
    space.refresh_from_db()
    assert space.inference_backend == "torch"
    assert not AuditEvent.objects.filter(action="embedding_space.backend_set").exists()

    drift = embedding_space_backend_set(space=space, backend="onnx")

    assert drift.compatible and drift.sample_size == space.embeddings.count() and drift.min_cosine > 0.9999
    space.refresh_from_db()
    assert space.inference_backend == "onnx"
    event = AuditEvent.objects.get(action="embedding_space.backend_set")
    assert (event.before, event.after["inference_backend"]) == ({"inference_backend": "torch"}, "onnx")


def test_the_command_refuses_an_incompatible_switch(embedded_knowledge_base, capsys):
    with pytest.raises(CommandError, match="would mix incompatible vectors"):
        call_command("embedding_backend", embedded_knowledge_base.slug, "onnx-int8")
    call_command("embedding_backend", embedded_knowledge_base.slug)
    assert capsys.readouterr().out.strip() == f"{embedded_knowledge_base.slug}/base: torch"


def test_the_check_measures_drift_and_speed_without_switching(embedded_knowledge_base, capsys):
    slug = embedded_knowledge_base.slug
    call_command("embedding_backend", slug, "onnx", "--check", "--json")
    measured = json.loads(capsys.readouterr().out)
    assert measured["compatible"] and measured["min_cosine"] > 0.9999
    assert measured["backend_from"] == "torch" and measured["backend_to"] == "onnx"
    # Speed is a ratio of CPU seconds on the same chunks: positive and finite, whatever the CPU.
    assert 0.05 < measured["speedup"] < 20
    assert "; int8: " in measured["cpu"]

    call_command("embedding_backend", slug, "onnx-int8", "--check")
    printed = capsys.readouterr().out
    assert f"{slug}/base incompatible onnx-int8 (min cosine" in printed
    assert "x torch's chunks per CPU second on this sample" in printed and "int8: " in printed
    embedded_knowledge_base.live_space.refresh_from_db()
    assert embedded_knowledge_base.live_space.inference_backend == "torch"
