"""Artifacts across machines: a training run on the "training machine" uploads its version to an
S3 store (moto's server, a real HTTP endpoint; tests/conftest.py), and a "serving machine" that
never saw the training folder fetches it into a fresh cache, checks it, promotes it and serves
with it; a corrupted object is refused (promotion, retrieval and the API) with a clear error."""

import shutil
from pathlib import Path

import pytest

from knowledge.artifact_store import ArtifactUnavailable, artifact_cache_forget
from knowledge.errors import InvalidInput
from knowledge.selectors import passages_retrieve, retriever_for
from knowledge.services.knowledge_bases import retriever_model_path
from knowledge.services.turns import turn_ask
from rag.training.artifacts import MANIFEST_NAME, manifest_checksum, parse_manifest
from training.models import ModelVersion
from training.services.runs import Outcome, training_run_execute, training_run_start
from training.services.versions import model_version_promote, model_version_verify

from .conftest import label_questions

FAST_RETRIEVER = {"epochs": 1, "batch_size": 2, "heldout_share": 0.0, "device": "cpu", "top_k": 4, "mined_negatives": 2}


@pytest.fixture(autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_tasks_sent(monkeypatch):
    import training.tasks

    sent = []
    monkeypatch.setattr(training.tasks.evaluation_job_execute_task, "delay", lambda *args: sent.append(args))
    return sent


def _machine(settings, root: Path) -> Path:
    settings.RAGLOOP_ARTIFACTS_DIR = root / "artifacts"
    settings.RAGLOOP_ARTIFACT_CACHE_DIR = str(root / "cache")
    artifact_cache_forget()
    return root / "cache"


@pytest.mark.slow
def test_a_run_on_the_training_machine_is_served_by_another_machine_from_the_store(
    embedded_knowledge_base, curator, admin_user, s3_store, settings, tmp_path, no_tasks_sent,
    django_capture_on_commit_callbacks, api,
):  # fmt: skip
    kb = embedded_knowledge_base
    label_questions(kb, curator)
    _machine(settings, tmp_path / "gpu-box")
    run = training_run_start(knowledge_base=kb, component="retriever", mode="contrastive_query_only", parameters=FAST_RETRIEVER)
    with django_capture_on_commit_callbacks(execute=True):
        assert training_run_execute(run_id=run.pk) == Outcome.SUCCEEDED
    version = ModelVersion.objects.get(training_run=run)
    run.refresh_from_db()
    assert f"uploading the artifact to {s3_store.url}" in run.log

    # Uploaded: every file of the manifest and the manifest, which is the one the version recorded.
    local = tmp_path / "gpu-box" / "artifacts" / version.artifact_path
    prefix = f"{s3_store.prefix}/{version.artifact_path}/"
    in_bucket = sorted(key[len(prefix):] for key in s3_store.fs.find(prefix))
    manifest = parse_manifest(s3_store.fs.cat_file(prefix + MANIFEST_NAME), source="bucket")
    assert in_bucket == sorted([*manifest["files"], MANIFEST_NAME])
    assert "query_encoder/model.safetensors" in manifest["files"]
    assert manifest_checksum(manifest) == version.artifact_checksum
    assert (local / MANIFEST_NAME).read_bytes() == s3_store.fs.cat_file(prefix + MANIFEST_NAME)

    # The web machine: its own empty folders; the training machine's files are gone entirely.
    shutil.rmtree(tmp_path / "gpu-box")
    web_cache = _machine(settings, tmp_path / "web")
    model_version_promote(version=version, actor=admin_user)  # verified against the store's copy
    encoder = retriever_model_path(version.query_model_reference)
    assert encoder == web_cache / version.artifact_checksum / "query_encoder"
    choice = retriever_for(knowledge_base=kb)
    assert choice.version == version.name
    top = passages_retrieve(space=choice.space, query="Which enzyme do statins inhibit?", k=2,
                            query_model_reference=choice.query_model_reference)  # fmt: skip
    assert top[0].document_external_id == "d-statins"
    assert turn_ask(knowledge_base=kb, query="Why are people alert after coffee?", k=2).retriever_version == version.name

    # A corrupted object: a third machine refuses it, at promotion's check and at serving.
    s3_store.fs.pipe_file(prefix + "query_encoder/model.safetensors", b"not the weights")
    _machine(settings, tmp_path / "embedding-2")
    with pytest.raises(InvalidInput, match=r"cannot be loaded: .*does not match its checksum manifest.*changed: query_encoder/model\.safetensors"):
        model_version_verify(version=version)
    with pytest.raises(ArtifactUnavailable, match="changed: query_encoder/model.safetensors"):
        passages_retrieve(space=choice.space, query="statins", k=2, query_model_reference=choice.query_model_reference)
    response = api.post(f"/api/v1/kbs/{kb.slug}/retrieve", {"query": "statins"}, content_type="application/json")
    assert response.status_code == 503
    assert "does not match its checksum manifest" in response.json()["detail"]
