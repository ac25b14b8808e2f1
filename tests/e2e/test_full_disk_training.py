"""A training run on a full disk, with a real worker process: the artifacts folder is a small
tmpfs that holds the live version's artifact and little more, so the worker's save fails with
ENOSPC. The run fails with an error that says so, its partial artifact is deleted (nothing
registered, nothing loadable), and the live version is untouched: same pointers, same checksums,
still serving."""

import os
import shutil
import subprocess
import uuid

import pytest
from django.contrib.auth.models import Group

from curation.models import Membership
from knowledge.models import KnowledgeBase
from tests.conftest import wait_until
from tests.training.conftest import label_questions
from training.models import ModelVersion, TrainingRun

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# Room for the live version's copy of the base encoder (88 MB) plus a few MB: a second encoder
# (the run's) cannot fit.
HEADROOM_MB = 12


def _mount_tmpfs(path, size_mb: int) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("LOUD SKIP: mounting a small tmpfs needs root; the full-disk test cannot run here")
    path.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"LOUD SKIP: this machine refuses a tmpfs mount ({result.stderr.strip()}); the full-disk test cannot run")


@pytest.fixture
def artifacts(settings, tmp_path):
    """Overrides the e2e artifacts folder (and so the worker's environment) with a small tmpfs."""
    from rag.embedding import base_retriever_path

    encoder_mb = sum(f.stat().st_size for f in base_retriever_path().rglob("*") if f.is_file()) / 2**20
    folder = tmp_path / f"full-disk-{uuid.uuid4().hex[:6]}"
    _mount_tmpfs(folder, int(encoder_mb) + HEADROOM_MB)
    settings.RAGLOOP_ARTIFACTS_DIR = folder
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def live_version_on_the_small_disk(embedded_knowledge_base, artifacts, django_user_model):
    """A live query-only retriever whose encoder (a copy of the base one) fills most of the disk."""
    from rag.embedding import base_retriever_path
    from training.services.versions import model_version_register

    curator = django_user_model.objects.create_user("alice", password="pw-alice-123")
    curator.groups.add(Group.objects.get_or_create(name="curator")[0])
    Membership.objects.create(knowledge_base=embedded_knowledge_base, user=curator)
    label_questions(embedded_knowledge_base, curator)

    folder = artifacts / "test-kb" / "retriever" / "live"
    shutil.copytree(base_retriever_path(), folder / "query_encoder")
    base_space = embedded_knowledge_base.embedding_spaces.get(retriever_version="base")
    version = model_version_register(
        knowledge_base=embedded_knowledge_base, component="retriever", artifact_folder=folder, name="retriever-v1",
        embedding_space=base_space, query_model_reference="test-kb/retriever/live/query_encoder",
    )  # fmt: skip
    ModelVersion.objects.filter(pk=version.pk).update(status="live")
    KnowledgeBase.objects.filter(pk=embedded_knowledge_base.pk).update(
        live_space=base_space, live_retriever_version="retriever-v1", live_query_model_reference=version.query_model_reference
    )
    return ModelVersion.objects.get(pk=version.pk)


def test_a_run_that_fills_the_disk_fails_clearly_leaves_nothing_loadable_and_the_live_version_serving(
    live_version_on_the_small_disk, training_worker, artifacts
):
    from knowledge.selectors import passages_retrieve, retriever_for
    from rag.training.artifacts import verify_manifest
    from training.services.runs import training_run_start

    live = live_version_on_the_small_disk
    kb = KnowledgeBase.objects.get(slug="test-kb")
    free_before = shutil.disk_usage(artifacts).free

    run = training_run_start(
        knowledge_base=kb, component="retriever", mode="contrastive_query_only",
        parameters={"epochs": 1, "batch_size": 2, "heldout_share": 0.0, "device": "cpu"},
    )  # fmt: skip
    wait_until(lambda: TrainingRun.objects.get(pk=run.pk).is_finished, timeout=300,
               message=f"the worker to finish the run\n{training_worker.log()}")  # fmt: skip

    run.refresh_from_db()
    assert run.status == "failed", run.log + training_worker.log()
    assert run.error.startswith(f"The disk ran out of space while the run wrote its model under {artifacts}")
    assert "No space left on device" in run.error
    # Nothing registered, and the run's partial folder is gone: the disk has its space back.
    assert list(ModelVersion.objects.values_list("name", flat=True)) == ["retriever-v1"]
    assert not (artifacts / "test-kb" / "retriever" / str(run.pk)).exists()
    assert shutil.disk_usage(artifacts).free == free_before
    # The live version is untouched: still live, its artifact intact, and it serves.
    kb.refresh_from_db()
    live.refresh_from_db()
    assert (live.status, kb.live_retriever_version, kb.live_query_model_reference) == (
        "live", "retriever-v1", "test-kb/retriever/live/query_encoder"
    )
    verify_manifest(artifacts / live.artifact_path)
    choice = retriever_for(knowledge_base=kb)
    top = passages_retrieve(space=choice.space, query="Which enzyme do statins inhibit?", k=1,
                            query_model_reference=choice.query_model_reference)  # fmt: skip
    assert (choice.version, top[0].document_external_id) == ("retriever-v1", "d-statins")
