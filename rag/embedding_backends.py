"""Inference backends for a retriever encoder: the model exported to ONNX (fp32 or int8) or
OpenVINO (fp32 or int8), built locally from the model folder we already have, cached in a
checksummed folder and run behind sentence-transformers' own pipeline.

Why not sentence-transformers' `backend="onnx"` / `export_dynamic_quantized_onnx_model`:
those go through Optimum (`optimum-onnx`, `optimum-intel`), whose every release pins
`transformers<4.58` (optimum-onnx 0.1.0) or `<5.6` (optimum-intel 2.2.0), while ragloop runs
transformers 5.23 under sentence-transformers 6.2; with transformers 5 optimum-onnx fails at
import. So this module does what those helpers do, with the same maintained libraries
underneath: `torch.onnx.export` for the graph, onnxruntime's `quantize_dynamic` with
sentence-transformers' "avx512_vnni" settings (per-channel signed int8 weights, unsigned
int8 activations), OpenVINO's converter for its IR and NNCF's weight compression for its
int8. The encoder keeps sentence-transformers' tokenizer, pooling, normalisation and
prompts; only the transformer's forward pass runs on the other runtime, the way Optimum's
ORTModel does. Swapping to `backend="onnx"` is a one-function change once Optimum supports
transformers 5.

An export lives in `<cache root>/<weights sha256[:16]>/<backend>/`: keyed by the source
weights, so a retrained model never reuses a stale export, and checksummed with the same
MANIFEST.json as training artifacts, verified before every load. A folder is built under a
temporary name and renamed into place, so a crash never leaves a half export that looks done.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rag.training.artifacts import ArtifactIntegrityError, file_sha256, verify_manifest, write_manifest

TORCH = "torch"
EMBEDDING_BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
EXPORT_INFO_NAME = "EXPORT.json"
_FILES = {
    "onnx": "model.onnx",
    "onnx-int8": "model_qint8_avx512_vnni.onnx",
    "openvino": "openvino_model.xml",
    "openvino-int8": "openvino_model_int8.xml",
}
# Weights files sentence-transformers / transformers may hold the encoder in.
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# Instruction sets that int8 inference (onnxruntime, OpenVINO) runs much faster with: on a CPU
# with none of them the int8 exports measured 1.0-1.4x torch, against 2.3-2.5x on one that had
# them (docs/inference-backends.md, "Which backend on which CPU").
INT8_INSTRUCTIONS = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name, its widest vector unit, and which int8 instruction sets it has, e.g.
    "AMD EPYC; avx2; int8: none (no VNNI/AMX)". "unknown" where /proc/cpuinfo cannot be read."""
    model, flags = "unknown", set()
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    vector = [name for name in ("avx2", "avx512f") if name in flags]
    int8 = [name for name in INT8_INSTRUCTIONS if name in flags]
    return f"{model}; {', '.join(vector) or 'no AVX2'}; int8: {', '.join(int8) or 'none (no VNNI/AMX)'}"


class UnknownBackend(ValueError):
    """A backend name that is not one of EMBEDDING_BACKENDS."""


def backend_check(backend: str) -> str:
    if backend not in EMBEDDING_BACKENDS:
        raise UnknownBackend(f"Embedding backend {backend!r} is unknown; choose one of {', '.join(EMBEDDING_BACKENDS)}.")
    return backend


def model_weights_sha256(model_path: Path) -> str:
    """sha256 of the encoder's weights file: what an export is built from."""
    for name in _WEIGHT_FILES:
        candidate = model_path / name
        if candidate.is_file():
            return file_sha256(candidate)
    raise FileNotFoundError(f"no weights ({' or '.join(_WEIGHT_FILES)}) in {model_path}")


def export_folder(model_path: Path, backend: str, cache_root: Path) -> Path:
    return Path(cache_root) / model_weights_sha256(model_path)[:16] / backend


def backend_export_ensure(model, model_path: Path, backend: str, cache_root: Path) -> tuple[Path, bool]:
    """The verified export folder of `backend` for the SentenceTransformer `model` loaded from
    `model_path`, and whether this call built it. An existing folder is verified against its
    manifest (ArtifactIntegrityError if anything changed) and never rebuilt silently."""
    backend_check(backend)
    if backend == TORCH:
        raise ValueError("the torch backend runs the model folder itself; there is nothing to export")
    final = export_folder(model_path, backend, cache_root)
    if final.is_dir():
        verify_manifest(final)
        return final, False
    final.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{backend}-", dir=final.parent))
    try:
        _export(model, backend, building)
        info = {
            "backend": backend,
            "source": str(model_path),
            "source_weights_sha256": model_weights_sha256(model_path),
            "file": _FILES[backend],
            "libraries": _library_versions(),
        }
        (building / EXPORT_INFO_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        write_manifest(building)
        try:
            os.rename(building, final)
        except OSError:
            # Another process finished the same export first: use its folder, verified.
            if not final.is_dir():
                raise
            shutil.rmtree(building, ignore_errors=True)
            verify_manifest(final)
            return final, False
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return final, True


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def _export(model, backend: str, folder: Path) -> None:
    onnx_path = folder / _FILES["onnx"]
    if backend in ("onnx", "onnx-int8"):
        _export_onnx(model, onnx_path)
        if backend == "onnx-int8":
            _quantize_onnx_dynamic(onnx_path, folder / _FILES["onnx-int8"])
            onnx_path.unlink()  # the int8 folder serves the int8 file alone
        return
    import openvino as ov

    with tempfile.TemporaryDirectory() as scratch:
        scratch_onnx = Path(scratch) / "model.onnx"
        _export_onnx(model, scratch_onnx)
        ov_model = ov.convert_model(str(scratch_onnx))
    if backend == "openvino-int8":
        import nncf

        # Data-free int8 weights (what NNCF recommends for transformer encoders without a
        # calibration set); activations stay fp32.
        ov_model = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(ov_model, str(folder / _FILES[backend]), compress_to_fp16=False)


def _export_onnx(model, path: Path) -> None:
    import torch

    transformer = model[0].auto_model

    class _Forward(torch.nn.Module):
        # transformers 5 reordered the positional arguments of forward: name them.
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True
            ).last_hidden_state

    sample = model.tokenizer(["an example sentence", "a second, longer example sentence"], padding=True, return_tensors="pt")
    if "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    axes = {"batch": 0, "sequence": 1}
    was_training = transformer.training
    transformer.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                _Forward(transformer),
                tuple(sample[name] for name in _INPUTS),
                str(path),
                input_names=list(_INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={name: {v: k for k, v in axes.items()} for name in (*_INPUTS, "last_hidden_state")},
                opset_version=17,
                # The TorchScript exporter: the dynamo one needs a newer transformers tracing story.
                dynamo=False,
            )
    finally:
        transformer.train(was_training)


def _quantize_onnx_dynamic(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # sentence-transformers' "avx512_vnni" AutoQuantizationConfig, as onnxruntime spells it.
    quantize_dynamic(
        str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=False,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )  # fmt: skip


def backend_forward_install(model, backend: str, folder: Path, *, threads: int | None = None) -> None:
    """Make the SentenceTransformer `model` run its transformer on the export in `folder`."""
    import torch

    transformer_module = model[0]
    config = transformer_module.auto_model.config
    path = folder / _FILES[backend]
    if backend.startswith("onnx"):
        runner = _onnxruntime_runner(path, threads)
    else:
        runner = _openvino_runner(path, threads)

    class _ExportedTransformer(torch.nn.Module):
        """Stands in for the transformers model: the same inputs, a last_hidden_state out."""

        def __init__(self):
            super().__init__()
            self.config = config
            self.backend = backend

        def forward(self, input_ids, attention_mask, token_type_ids=None, **ignored: Any):
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            feeds = {
                "input_ids": input_ids.cpu().numpy(),
                "attention_mask": attention_mask.cpu().numpy(),
                "token_type_ids": token_type_ids.cpu().numpy(),
            }
            return {"last_hidden_state": torch.from_numpy(runner(feeds))}

    transformer_module.model = _ExportedTransformer()
    transformer_module.model_forward_params = None


def _onnxruntime_runner(path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads spin by default, burning CPU that belongs to the other processes.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def _openvino_runner(path: Path, threads: int | None):
    import numpy as np
    import openvino as ov

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    return lambda feeds: np.array(request.infer(feeds)[0], copy=True)


__all__ = [
    "EMBEDDING_BACKENDS",
    "ArtifactIntegrityError",
    "UnknownBackend",
    "backend_check",
    "backend_export_ensure",
    "backend_forward_install",
    "cpu_description",
]
