"""The artifact store (knowledge.artifact_store) against a real S3 endpoint (moto's server in its
own process, see tests/conftest.py): what training publishes, another machine's fresh cache
fetches, checks against the checksum manifest and serves; what does not match is refused and
fetched again; without a store everything stays in the local artifacts folder."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from knowledge.artifact_store import (
    ArtifactUnavailable,
    artifact_cache_forget,
    artifact_discard,
    artifact_local_path,
    artifact_publish,
    artifact_verify,
)
from knowledge.services.knowledge_bases import retriever_model_path
from rag.embedding import base_retriever_path, load_embedder
from rag.training.artifacts import MANIFEST_NAME, manifest_checksum, read_manifest, write_manifest

FILES = {"query_encoder/config.json": b'{"dims": 4}', "query_encoder/model.bin": b"weights " * 1000, "README.md": b"v7"}


@pytest.fixture
def training_machine(settings, tmp_path) -> Path:
    settings.RAGLOOP_ARTIFACTS_DIR = tmp_path / "training" / "artifacts"
    settings.RAGLOOP_ARTIFACT_CACHE_DIR = str(tmp_path / "training" / "cache")
    return settings.RAGLOOP_ARTIFACTS_DIR


def _artifact(root: Path, relative: str = "kb/retriever/7", files=FILES) -> Path:
    folder = root / relative
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    write_manifest(folder)
    return folder


def _other_machine(settings, tmp_path, name: str) -> Path:
    """Switch this process to a machine that never saw the training folder: empty artifacts
    folder, empty cache, nothing resolved yet."""
    settings.RAGLOOP_ARTIFACTS_DIR = tmp_path / name / "artifacts"
    settings.RAGLOOP_ARTIFACT_CACHE_DIR = str(tmp_path / name / "cache")
    artifact_cache_forget()
    return tmp_path / name / "cache"


def _bucket_files(s3_store, relative: str) -> dict[str, bytes]:
    base = f"{s3_store.prefix}/{relative}/"
    return {key[len(base):]: s3_store.fs.cat_file(key) for key in s3_store.fs.find(base)}


def test_a_published_artifact_is_uploaded_manifest_included_and_a_fresh_cache_fetches_and_checks_it(
    s3_store, training_machine, settings, tmp_path
):
    folder = _artifact(training_machine)
    assert artifact_publish(folder=folder) == "kb/retriever/7"
    in_bucket = _bucket_files(s3_store, "kb/retriever/7")
    assert in_bucket == {**FILES, MANIFEST_NAME: (folder / MANIFEST_NAME).read_bytes()}

    cache = _other_machine(settings, tmp_path, "web")
    path = artifact_local_path(reference="kb/retriever/7/query_encoder")
    checksum = manifest_checksum(read_manifest(folder))
    assert path == cache / checksum / "query_encoder"
    assert (path / "model.bin").read_bytes() == FILES["query_encoder/model.bin"]
    assert (cache / checksum / "README.md").read_bytes() == b"v7"  # the whole artifact, once
    assert not (tmp_path / "web" / "artifacts").exists()  # nothing written where training writes
    artifact_verify(path="kb/retriever/7", checksum=checksum)
    # The cache is keyed by checksum: a second process on the machine finds it and fetches nothing.
    artifact_cache_forget()
    s3_store.fs.rm_file(f"{s3_store.prefix}/kb/retriever/7/query_encoder/model.bin")
    assert artifact_local_path(reference="kb/retriever/7/query_encoder") == path


def test_a_model_in_the_store_is_served_by_a_machine_that_never_had_it(s3_store, training_machine, settings, tmp_path):
    folder = training_machine / "kb" / "retriever" / "3" / "encoder"
    shutil.copytree(base_retriever_path(), folder)
    write_manifest(folder.parent)
    artifact_publish(folder=folder.parent)
    shutil.rmtree(training_machine)

    cache = _other_machine(settings, tmp_path, "web")
    path = retriever_model_path("kb/retriever/3/encoder")
    assert path.is_relative_to(cache)
    served = load_embedder(path).encode_queries(["Which enzyme do statins inhibit?"])[0]
    base = load_embedder(base_retriever_path()).encode_queries(["Which enzyme do statins inhibit?"])[0]
    assert np.allclose(served, base)


def test_a_corrupted_object_in_the_store_is_refused_with_a_clear_error(s3_store, training_machine, settings, tmp_path):
    folder = _artifact(training_machine)
    artifact_publish(folder=folder)
    s3_store.fs.pipe_file(f"{s3_store.prefix}/kb/retriever/7/query_encoder/model.bin", b"tampered " * 1000)

    cache = _other_machine(settings, tmp_path, "web")
    with pytest.raises(ArtifactUnavailable) as refused:
        artifact_local_path(reference="kb/retriever/7/query_encoder")
    message = str(refused.value)
    assert "kb/retriever/7 downloaded from s3://" in message and "does not match its checksum manifest (2 attempts)" in message
    assert message.endswith("changed: query_encoder/model.bin")
    assert refused.value.status_code == 503
    assert list(cache.iterdir()) == []  # no copy, not even a partial one, is left to load
    with pytest.raises(ArtifactUnavailable, match="changed: query_encoder/model.bin"):
        artifact_verify(path="kb/retriever/7")


def test_a_truncated_object_is_refused_too(s3_store, training_machine, settings, tmp_path):
    folder = _artifact(training_machine)
    artifact_publish(folder=folder)
    s3_store.fs.pipe_file(f"{s3_store.prefix}/kb/retriever/7/query_encoder/model.bin", FILES["query_encoder/model.bin"][:100])
    _other_machine(settings, tmp_path, "web")
    with pytest.raises(ArtifactUnavailable, match="changed: query_encoder/model.bin"):
        artifact_local_path(reference="kb/retriever/7/query_encoder")


def test_a_download_cut_short_is_fetched_again(s3_store, training_machine, settings, tmp_path, monkeypatch):
    from knowledge.artifact_store import _Store

    folder = _artifact(training_machine)
    artifact_publish(folder=folder)
    cache = _other_machine(settings, tmp_path, "web")
    filesystem = _Store(s3_store.url).fs  # fsspec hands the store this same instance
    real_get_file = filesystem.get_file
    fetched: list[str] = []

    def cut_short_once(rpath, lpath, **kwargs):
        result = real_get_file(rpath, lpath, **kwargs)
        fetched.append(rpath.rsplit("/", 1)[-1])
        if fetched.count("model.bin") == 1 and rpath.endswith("model.bin"):
            Path(lpath).write_bytes(Path(lpath).read_bytes()[:10])  # the connection dropped mid-file
        return result

    monkeypatch.setattr(filesystem, "get_file", cut_short_once)
    path = artifact_local_path(reference="kb/retriever/7/query_encoder")
    assert fetched.count("model.bin") == 2
    assert (path / "model.bin").read_bytes() == FILES["query_encoder/model.bin"]
    assert sorted(p.name for p in cache.iterdir()) == [manifest_checksum(read_manifest(folder))]


def test_a_cached_copy_changed_on_disk_is_never_served_and_is_fetched_again(s3_store, training_machine, settings, tmp_path):
    folder = _artifact(training_machine)
    artifact_publish(folder=folder)
    _other_machine(settings, tmp_path, "web")
    path = artifact_local_path(reference="kb/retriever/7/query_encoder")
    (path / "model.bin").write_bytes(b"half")  # a disk problem, or someone editing the cache

    artifact_cache_forget()  # a new process
    again = artifact_local_path(reference="kb/retriever/7/query_encoder")
    assert again == path and (again / "model.bin").read_bytes() == FILES["query_encoder/model.bin"]


def test_the_registered_checksum_must_match_the_manifest_in_the_store(s3_store, training_machine, settings, tmp_path):
    folder = _artifact(training_machine)
    artifact_publish(folder=folder)
    _other_machine(settings, tmp_path, "web")
    with pytest.raises(ArtifactUnavailable, match="is not the one registered"):
        artifact_verify(path="kb/retriever/7", checksum="0" * 64)


def test_publishing_again_uploads_nothing_and_a_different_artifact_never_overwrites(s3_store, training_machine):
    folder = _artifact(training_machine)
    artifact_publish(folder=folder)
    before = s3_store.fs.info(f"{s3_store.prefix}/kb/retriever/7/{MANIFEST_NAME}")["LastModified"]
    assert artifact_publish(folder=folder) == "kb/retriever/7"  # a retried registration
    assert s3_store.fs.info(f"{s3_store.prefix}/kb/retriever/7/{MANIFEST_NAME}")["LastModified"] == before

    (folder / "README.md").write_bytes(b"another installation's v7")
    write_manifest(folder)
    with pytest.raises(ArtifactUnavailable, match="already holds a different artifact at kb/retriever/7; it is never overwritten"):
        artifact_publish(folder=folder)
    assert _bucket_files(s3_store, "kb/retriever/7")["README.md"] == b"v7"


def test_objects_without_a_manifest_are_not_an_artifact(s3_store, training_machine, settings, tmp_path):
    # An upload cut short before its last object: the manifest.
    s3_store.fs.pipe_file(f"{s3_store.prefix}/kb/retriever/9/query_encoder/model.bin", b"weights")
    _other_machine(settings, tmp_path, "web")
    with pytest.raises(ArtifactUnavailable, match="holds no artifact at kb/retriever/9/query_encoder or above it"):
        artifact_local_path(reference="kb/retriever/9/query_encoder")


def test_a_discarded_folder_leaves_neither_the_folder_nor_its_upload(s3_store, training_machine):
    folder = _artifact(training_machine)
    artifact_publish(folder=folder)
    artifact_discard(folder=folder)
    assert not folder.exists()
    assert not s3_store.fs.exists(f"{s3_store.prefix}/kb/retriever/7")


def test_a_store_that_cannot_be_reached_is_a_clear_error(settings, training_machine, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    settings.RAGLOOP_ARTIFACT_STORE = "s3://nowhere/models"
    settings.RAGLOOP_ARTIFACT_STORE_ENDPOINT_URL = f"http://127.0.0.1:{port}"
    artifact_cache_forget()
    with pytest.raises(ArtifactUnavailable, match=r"The artifact store s3://nowhere/models could not be read for kb/retriever/1"):
        artifact_local_path(reference="kb/retriever/1/query_encoder")


@pytest.mark.parametrize("reference", ["../../etc", "kb/../../x", ""])
def test_a_reference_outside_the_artifacts_folder_is_refused(s3_store, reference):
    with pytest.raises(ArtifactUnavailable, match="is not an artifact path"):
        artifact_local_path(reference=reference)


def test_without_a_store_artifacts_stay_in_the_local_folder(settings, tmp_path):
    settings.RAGLOOP_ARTIFACT_STORE = ""
    settings.RAGLOOP_ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.RAGLOOP_ARTIFACT_CACHE_DIR = ""
    folder = _artifact(tmp_path / "artifacts")
    assert artifact_publish(folder=folder) == "kb/retriever/7"
    assert artifact_local_path(reference="kb/retriever/7/query_encoder") == folder / "query_encoder"
    assert artifact_local_path(reference=str(folder)) == folder  # absolute paths of older versions
    artifact_verify(path="kb/retriever/7", checksum=manifest_checksum(read_manifest(folder)))
    assert not (tmp_path / "artifacts" / ".store-cache").exists()  # nothing cached, nothing copied
    (folder / "README.md").write_bytes(b"changed")
    with pytest.raises(ArtifactUnavailable, match="changed: README.md"):
        artifact_verify(path="kb/retriever/7")
