"""Tests for checksummed artifact folders: the manifest records every file, and any change is caught."""

import hashlib
import json
from pathlib import Path

import pytest

from rag.training.artifacts import MANIFEST_NAME, ArtifactIntegrityError, verify_manifest, write_manifest


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    folder = tmp_path / "model-version-3"
    (folder / "query_encoder" / "1_Pooling").mkdir(parents=True)
    (folder / "retriever.json").write_text('{"mode": "query_only"}')
    (folder / "query_encoder" / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (folder / "query_encoder" / "1_Pooling" / "config.json").write_text("{}")
    return folder


def test_manifest_lists_every_file_with_size_and_sha256(artifact: Path):
    manifest = write_manifest(artifact)

    assert list(manifest["files"]) == [
        "query_encoder/1_Pooling/config.json",
        "query_encoder/model.safetensors",
        "retriever.json",
    ]
    weights = manifest["files"]["query_encoder/model.safetensors"]
    assert weights == {"size": 1024, "sha256": hashlib.sha256(bytes(range(256)) * 4).hexdigest()}
    assert json.loads((artifact / MANIFEST_NAME).read_text()) == manifest
    assert sorted(path.name for path in artifact.iterdir()) == [MANIFEST_NAME, "query_encoder", "retriever.json"]
    verify_manifest(artifact)  # an untouched folder passes


def test_rewriting_the_manifest_does_not_list_the_manifest_itself(artifact: Path):
    write_manifest(artifact)

    assert MANIFEST_NAME not in write_manifest(artifact)["files"]
    verify_manifest(artifact)


def test_a_changed_byte_is_caught_and_named(artifact: Path):
    write_manifest(artifact)
    weights = artifact / "query_encoder" / "model.safetensors"
    tampered = bytearray(weights.read_bytes())
    tampered[100] ^= 0x01
    weights.write_bytes(bytes(tampered))  # same size, different content

    with pytest.raises(ArtifactIntegrityError, match=r"changed: query_encoder/model\.safetensors$"):
        verify_manifest(artifact)


def test_a_missing_manifest_is_an_error(artifact: Path):
    with pytest.raises(ArtifactIntegrityError, match=f"has no {MANIFEST_NAME}"):
        verify_manifest(artifact)


def test_a_corrupt_manifest_is_an_error(artifact: Path):
    (artifact / MANIFEST_NAME).write_text("{not json")

    with pytest.raises(ArtifactIntegrityError, match="is not a valid manifest"):
        verify_manifest(artifact)


def test_extra_and_missing_files_are_caught_and_named(artifact: Path):
    write_manifest(artifact)
    (artifact / "query_encoder" / "notes.txt").write_text("added later")
    (artifact / "retriever.json").unlink()

    with pytest.raises(ArtifactIntegrityError) as raised:
        verify_manifest(artifact)

    assert str(raised.value).endswith("missing: retriever.json; not in manifest: query_encoder/notes.txt")


def test_writing_a_manifest_needs_a_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="artifact folder not found"):
        write_manifest(tmp_path / "missing")
