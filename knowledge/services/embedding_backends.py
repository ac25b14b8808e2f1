"""Changing which inference backend (torch, ONNX or OpenVINO, fp32 or int8) encodes a space's
chunks and queries, only where the vectors stay compatible.

A space's vectors are compared with one another and with its queries' vectors, so every one
of them must come from (nearly) the same function. Before a switch, a sample of the space's
chunks is encoded on the new backend and compared, chunk by chunk, with the vectors the space
stores; the switch is refused unless every cosine reaches RAGLOOP_BACKEND_SWITCH_MIN_COSINE.
The fp32 exports pass (cosine > 0.9999 with torch); int8 does not (about 0.99, as low as 0.97
on some chunks: docs/inference-backends.md), so an int8 space is a new knowledge base embedded
with it from the start, never a live space switched under its stored vectors.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
from django.conf import settings
from django.db import connection, transaction

from knowledge.errors import Conflict, InvalidInput
from knowledge.models import EmbeddingSpace, InferenceBackend
from knowledge.services.audit import audit_record
from knowledge.services.knowledge_bases import space_embedder
from rag.embedding import Embedder
from rag.embedding_backends import cpu_description
from rag.training.artifacts import ArtifactIntegrityError


@dataclass(frozen=True)
class BackendDrift:
    """How far a backend's vectors of a sample of a space's chunks are from the stored ones."""

    space_id: int
    backend_from: str
    backend_to: str
    sample_size: int
    min_cosine: float | None
    mean_cosine: float | None
    threshold: float
    # Measured on request (embedding_backend --check): the current backend's CPU seconds over the
    # new one's on the same sample, in this process, and the CPU it ran on (the int8 backends'
    # speed depends on its instruction sets).
    speedup: float | None = None
    cpu: str = ""

    @property
    def compatible(self) -> bool:
        return self.min_cosine is None or self.min_cosine >= self.threshold

    def as_dict(self) -> dict:
        return {**asdict(self), "compatible": self.compatible}


def _check_backend(backend: str) -> None:
    if backend not in InferenceBackend.values:
        raise InvalidInput(
            f"Embedding backend {backend!r} is unknown; choose one of {', '.join(InferenceBackend.values)}."
        )


def _stored_sample(space: EmbeddingSpace, size: int) -> tuple[list[str], np.ndarray]:
    """Up to `size` of the space's chunks and their stored vectors: a spread of the whole space
    (ordered by a hash of the chunk id), the same sample every time."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.text, e.embedding::text
            FROM curation_chunkembedding e JOIN curation_chunk c ON c.id = e.chunk_id
            WHERE e.space_id = %s
            ORDER BY md5(e.chunk_id::text)
            LIMIT %s
            """,
            [space.pk, size],
        )
        rows = cursor.fetchall()
    texts = [text for text, _ in rows]
    vectors = np.array([np.array(vector.strip("[]").split(","), dtype=np.float32) for _, vector in rows], dtype=np.float32)
    return texts, vectors.reshape(len(rows), int(space.dimensions))


def _encoding_cpu_seconds(embedder: Embedder, texts: list[str]) -> float:
    """CPU seconds of this process (every thread of it) to encode `texts`, after a warm-up call."""
    embedder.encode_documents(texts[:8])
    started = time.process_time()
    embedder.encode_documents(texts)
    return time.process_time() - started


def embedding_space_backend_drift(
    *, space: EmbeddingSpace, backend: str, sample_size: int | None = None, measure_speed: bool = False
) -> BackendDrift:
    """Encode a sample of the space's chunks on `backend` and compare with the stored vectors;
    with `measure_speed`, also time the sample on the current backend and on `backend`.

    Loads (and, the first time, exports) the backend's encoder: seconds to a minute."""
    _check_backend(backend)
    size = int(sample_size or settings.RAGLOOP_BACKEND_SWITCH_SAMPLE)
    texts, stored = _stored_sample(space, size)
    threshold = float(settings.RAGLOOP_BACKEND_SWITCH_MIN_COSINE)
    if not texts:
        return BackendDrift(space.pk, space.inference_backend, backend, 0, None, None, threshold)
    candidate = EmbeddingSpace(
        pk=space.pk, knowledge_base_id=space.knowledge_base_id, model_reference=space.model_reference,
        dimensions=space.dimensions, inference_backend=backend,
    )  # fmt: skip
    try:
        candidate_embedder = space_embedder(candidate)
        vectors = candidate_embedder.encode_documents(texts)
        speedup = None
        if measure_speed:
            current = _encoding_cpu_seconds(space_embedder(space), texts)
            speedup = current / max(_encoding_cpu_seconds(candidate_embedder, texts), 1e-9)
    except ArtifactIntegrityError as error:
        raise Conflict(f"The {backend} export of this space's model is damaged: {error}") from None
    cosines = np.sum(vectors * stored, axis=1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(stored, axis=1))
    return BackendDrift(
        space.pk, space.inference_backend, backend, len(texts), float(cosines.min()), float(cosines.mean()), threshold,
        speedup=speedup, cpu=cpu_description() if measure_speed else "",
    )  # fmt: skip


def embedding_space_backend_set(*, space: EmbeddingSpace, backend: str, sample_size: int | None = None) -> BackendDrift:
    """Switch the space to `backend` if its vectors stay compatible (see the module docstring);
    raise Conflict, changing nothing, if they would not."""
    _check_backend(backend)
    if backend == space.inference_backend:
        return BackendDrift(space.pk, backend, backend, 0, None, None, float(settings.RAGLOOP_BACKEND_SWITCH_MIN_COSINE))
    drift = embedding_space_backend_drift(space=space, backend=backend, sample_size=sample_size)
    if not drift.compatible:
        raise Conflict(
            f"Switching space {space} from {drift.backend_from} to {backend} would mix incompatible vectors: "
            f"on {drift.sample_size} of its chunks the lowest cosine between the two backends' vectors is "
            f"{drift.min_cosine:.4f} (mean {drift.mean_cosine:.4f}), under the {drift.threshold} that "
            f"RAGLOOP_BACKEND_SWITCH_MIN_COSINE allows. Embed the documents into a new knowledge base created "
            f"with this backend instead (kb_create --embedding-backend {backend})."
        )
    # The sample was encoded outside the transaction (it is slow); the lock makes sure the space
    # still has the backend the sample was compared against.
    with transaction.atomic():
        locked = EmbeddingSpace.objects.select_for_update().get(pk=space.pk)
        if locked.inference_backend != drift.backend_from:
            raise Conflict(f"Space {space} changed backend to {locked.inference_backend} meanwhile; try again.")
        locked.inference_backend = backend
        locked.save(update_fields=["inference_backend"])
        audit_record(
            action="embedding_space.backend_set", object_type="embedding_space", object_id=space.pk,
            knowledge_base=locked.knowledge_base, before={"inference_backend": drift.backend_from},
            after={"inference_backend": backend, "drift": drift.as_dict()},
        )  # fmt: skip
    space.inference_backend = backend
    return drift
