"""The exported inference backends of the encoder: built locally from the packaged model,
cached in a checksummed folder, refused when tampered with, and as close to torch as fp32 is."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rag.embedding import EMBEDDING_BACKENDS, Embedder, base_retriever_path, load_embedder
from rag.embedding_backends import UnknownBackend, model_weights_sha256
from rag.training.artifacts import ArtifactIntegrityError, file_sha256, verify_manifest

TEXTS = [
    "Refunds take 14 days to reach your card.",
    "We ship worldwide, except to PO boxes.",
    "Mitochondria produce most of the cell's supply of ATP.",
]


@pytest.fixture(scope="module")
def export_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("inference-exports")


@pytest.fixture(scope="module")
def onnx_embedder(export_root: Path) -> Embedder:
    return Embedder(base_retriever_path(), backend="onnx", export_root=export_root, device="cpu")


def test_the_backends_are_the_five_the_settings_offer():
    assert EMBEDDING_BACKENDS == ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")


@pytest.mark.parametrize("backend", ["tensorrt", "ONNX", "", "onnx_int8"])
def test_an_unknown_backend_is_refused_before_anything_loads(backend, export_root):
    with pytest.raises(UnknownBackend, match="choose one of torch, onnx, onnx-int8, openvino, openvino-int8"):
        Embedder(base_retriever_path(), backend=backend, export_root=export_root)
    with pytest.raises(UnknownBackend):
        load_embedder(base_retriever_path(), backend=backend, export_root=export_root)
    assert not any(export_root.iterdir()) or backend == ""  # nothing was exported for a bad name


def test_an_exported_backend_needs_a_cache_folder():
    with pytest.raises(ValueError, match="needs an export_root"):
        Embedder(base_retriever_path(), backend="onnx")


def test_the_onnx_export_is_built_from_the_packaged_model_and_checksummed(onnx_embedder: Embedder, export_root: Path):
    folder = onnx_embedder.export_folder
    assert onnx_embedder.exported is True
    weights = file_sha256(base_retriever_path() / "model.safetensors")
    assert folder == export_root / weights[:16] / "onnx"
    assert sorted(p.name for p in folder.iterdir()) == ["EXPORT.json", "MANIFEST.json", "model.onnx"]
    info = json.loads((folder / "EXPORT.json").read_text())
    assert info["backend"] == "onnx" and info["source_weights_sha256"] == weights == model_weights_sha256(base_retriever_path())
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert manifest["files"]["model.onnx"]["sha256"] == file_sha256(folder / "model.onnx")
    verify_manifest(folder)
    # No temporary build folder is left beside it.
    assert [p.name for p in folder.parent.iterdir()] == ["onnx"]


def test_a_second_load_reuses_the_export(onnx_embedder: Embedder, export_root: Path):
    onnx_file = onnx_embedder.export_folder / "model.onnx"
    before = onnx_file.stat().st_mtime_ns

    again = Embedder(base_retriever_path(), backend="onnx", export_root=export_root, device="cpu")

    assert again.exported is False and again.export_folder == onnx_embedder.export_folder
    assert onnx_file.stat().st_mtime_ns == before
    np.testing.assert_array_equal(again.encode_documents(TEXTS), onnx_embedder.encode_documents(TEXTS))


def test_onnx_fp32_vectors_match_torch(onnx_embedder: Embedder):
    torch_embedder = load_embedder(base_retriever_path())
    for encode in ("encode_documents", "encode_queries"):
        exported = getattr(onnx_embedder, encode)(TEXTS)
        reference = getattr(torch_embedder, encode)(TEXTS)
        assert exported.shape == reference.shape == (3, 384) and exported.dtype == np.float32
        np.testing.assert_allclose(exported, reference, atol=2e-5)
        assert float(np.min(np.sum(exported * reference, axis=1))) > 0.99999
    # Still a retriever: the refunds question finds the refunds chunk.
    documents = onnx_embedder.encode_documents(TEXTS)
    assert int(np.argmax(documents @ onnx_embedder.encode_queries(["how long does a refund take?"])[0])) == 0


def test_a_tampered_export_is_refused(onnx_embedder: Embedder, tmp_path: Path):
    root = tmp_path / "exports"
    shutil.copytree(onnx_embedder.export_folder.parent, root / onnx_embedder.export_folder.parent.name)
    onnx_file = root / onnx_embedder.export_folder.parent.name / "onnx" / "model.onnx"
    with onnx_file.open("r+b") as handle:  # flip one byte, keep the size
        handle.seek(4096)
        byte = handle.read(1)
        handle.seek(4096)
        handle.write(bytes([byte[0] ^ 0xFF]))

    with pytest.raises(ArtifactIntegrityError, match="changed: model.onnx"):
        Embedder(base_retriever_path(), backend="onnx", export_root=root, device="cpu")


CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
model name\t: {model}
flags\t\t: fpu sse2 avx avx2 fma {extra}

processor\t: 1
model name\t: {model}
flags\t\t: fpu sse2
"""


@pytest.mark.parametrize(
    ("model", "extra", "described"),
    [
        ("AMD EPYC", "", "AMD EPYC; avx2; int8: none (no VNNI/AMX)"),
        ("Intel(R) Xeon(R) Platinum 8480+", "avx512f avx512_vnni amx_int8",
         "Intel(R) Xeon(R) Platinum 8480+; avx2, avx512f; int8: avx512_vnni, amx_int8"),
        ("Intel(R) Core(TM) Ultra 7", "avx_vnni", "Intel(R) Core(TM) Ultra 7; avx2; int8: avx_vnni"),
    ],
)
def test_the_cpu_description_names_the_int8_instructions_the_first_processor_has(tmp_path, model, extra, described):
    from rag.embedding_backends import cpu_description

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(vendor="x", model=model, extra=extra))
    assert cpu_description(cpuinfo) == described
    assert cpu_description(tmp_path / "missing") == "unknown"
