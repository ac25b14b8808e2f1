"""Retriever fine-tuning from curator labels: contrastive training and RA-DIT's LM-supervised retrieval.

Both trainers can update the query encoder only (RA-DIT's choice), so the chunk
embeddings already stored for a knowledge base stay valid and nothing is re-indexed.

The trainers run on sentence-transformers' `SentenceTransformerTrainer` (AdamW, the schedule,
gradient accumulation, mixed precision, several GPUs through `accelerate`, checkpoints and
resume); their losses, which the library lacks, are in rag.training.retriever_losses. This
module builds the training rows and the frozen side, runs the trainer and saves the retriever
in the layout `load_trained_retriever` reads back.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.training import ProgressCallback, StopCheck, pick_device, seed_everything
from rag.training.checkpoints import Checkpointing, inputs_fingerprint
from rag.training.hf_trainer import (
    checkpoint_arguments,
    checkpoint_to_resume,
    loss_curve,
    optimisation_arguments,
    quiet,
    remove_checkpoints,
    resumed_step,
    trainer_callback,
)

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

    from rag.corpus_pairs import CorpusPair
    from rag.training.retriever_losses import FrozenSide

RETRIEVER_DESCRIPTION = "retriever.json"
QUERY_ENCODER_DIR = "query_encoder"
ENCODER_DIR = "encoder"

@dataclass(frozen=True)
class RetrievalTrainingExample:
    """One curated query: passages curators marked relevant, and retrieved ones they marked irrelevant."""

    query: str
    positives: list[str]
    hard_negatives: list[str] = field(default_factory=list)
    # How many times each of its (query, positive) pairs is trained on per epoch: more than 1
    # for a failure the retriever should learn from first (rag.datasets.example_repeats).
    repeats: int = 1


@dataclass(frozen=True)
class LsrTrainingExample:
    """One query for LM-supervised retrieval: its top-k retrieved chunks and the gold answer."""

    query: str
    chunks: list[str]
    answer: str


@dataclass(frozen=True)
class FrozenDocuments:
    """Document vectors as the index stores them (query-only training): the texts of a space's
    chunks and their unit vectors, row for row, read from the database by the caller (rag takes
    vectors, not a database). Texts a trainer needs that are not here are encoded by the frozen
    encoder, as before."""

    texts: list[str]
    vectors: Any  # numpy array [len(texts), dim], float32, unit rows

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.vectors):
            raise ValueError(f"{len(self.texts)} texts but {len(self.vectors)} vectors")


@dataclass
class RetrieverTrainingResult:
    """Where a trained retriever was saved, how its loss went, and what it was trained with."""

    output_path: Path
    mode: str  # "query_only" or "full"
    training_curve: list[dict[str, float]]
    parameters: dict[str, Any]
    steps: int
    resumed_from_step: int = 0  # > 0: the run went on from a checkpoint saved at that step


# --- saved layout ----------------------------------------------------------------------


def load_trained_retriever(path: str | Path) -> tuple[Path, Path | None]:
    """(query encoder directory, document encoder directory or None) of a trained retriever.

    None means the document side is unchanged: chunks keep the embeddings of the base
    model the retriever was trained from (`base_model_path` in retriever.json), so the
    serving side embeds queries with the new encoder and needs no re-indexing.
    """
    path = Path(path)
    description_path = path / RETRIEVER_DESCRIPTION
    try:
        description = json.loads(description_path.read_text(encoding="utf-8"))
        mode = description["mode"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is not a trained retriever: {RETRIEVER_DESCRIPTION} is missing") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{description_path} is not a valid retriever description: {error}") from None
    if mode == "query_only":
        return path / QUERY_ENCODER_DIR, None
    if mode == "full":
        return path / ENCODER_DIR, path / ENCODER_DIR
    raise ValueError(f"{description_path} has unknown mode {mode!r}")


def _save_retriever(
    *,
    output_path: Path,
    query_only: bool,
    trained_model: SentenceTransformer,
    base_model_path: str | Path,
    parameters: dict[str, Any],
    fitted: _Fitted,
    checkpointing: Checkpointing | None = None,
) -> RetrieverTrainingResult:
    """Save the trained encoder and the retriever.json that says how to load it; then the
    checkpoints, which are not part of the model, are removed."""
    output_path.mkdir(parents=True, exist_ok=True)
    encoder_dir = QUERY_ENCODER_DIR if query_only else ENCODER_DIR
    # No model card: writing one is slow and says nothing the registry does not record.
    trained_model.save(str(output_path / encoder_dir), create_model_card=False)
    layout = (
        {"mode": "query_only", "query_encoder": QUERY_ENCODER_DIR, "document_encoder": "base"}
        if query_only
        else {"mode": "full", "query_encoder": ENCODER_DIR, "document_encoder": ENCODER_DIR}
    )
    description = {**layout, "base_model_path": str(base_model_path), "parameters": parameters}
    (output_path / RETRIEVER_DESCRIPTION).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    remove_checkpoints(checkpointing, scratch=fitted.scratch)
    return RetrieverTrainingResult(
        output_path=output_path,
        mode="query_only" if query_only else "full",
        training_curve=fitted.curve,
        parameters=parameters,
        steps=len(fitted.curve),
        resumed_from_step=fitted.resumed_from_step,
    )


# --- the frozen side and the library's trainer -------------------------------------------


def _load_encoder(model_path: str | Path, device: str) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    model_path = Path(model_path)
    if not model_path.is_dir():
        # Without this check sentence-transformers would treat the path as a hub name.
        raise FileNotFoundError(f"retriever model directory not found: {model_path}")
    return SentenceTransformer(str(model_path), device=device, local_files_only=True)


def _frozen_document_embeddings(model: SentenceTransformer, texts: list[str]) -> torch.Tensor:
    """Embeddings of the frozen document encoder, exactly as the index stores them."""
    import torch

    vectors = model.encode_document(
        texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
    )
    return torch.as_tensor(vectors).detach()


def _frozen_side(
    *, base_model_path: str | Path, device: str, needed: list[str], frozen: FrozenDocuments | None
) -> tuple[FrozenSide, int]:
    """The stored vectors where given, then the needed texts they lack, encoded by the frozen
    encoder (loaded only if any are missing); and how many texts had to be encoded."""
    import torch

    from rag.training.retriever_losses import FrozenSide

    texts = list(frozen.texts) if frozen is not None else []
    rows: dict[str, int] = {}
    for row, text in enumerate(texts):
        rows.setdefault(text, row)
    missing = [text for text in _unique(needed) if text not in rows]
    parts = [torch.as_tensor(frozen.vectors, dtype=torch.float32)] if frozen is not None and len(texts) else []
    if missing:
        document_model = _load_encoder(base_model_path, device)
        document_model.eval()
        parts.append(_frozen_document_embeddings(document_model, missing).float().cpu())
        del document_model  # the frozen side is only needed for these vectors
        for text in missing:
            rows[text] = len(texts)
            texts.append(text)
    return FrozenSide(vectors=torch.cat(parts).to(device), texts=texts, rows=rows), len(missing)


def _unique(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(texts))


@dataclass
class _Fitted:
    curve: list[dict[str, float]]
    resumed_from_step: int
    mixed_precision: str
    scratch: Path


def _fit(
    *,
    model: SentenceTransformer,
    loss: Any,
    rows: int,
    epochs: int,
    batch_size: int,
    gradient_accumulation_steps: int,
    learning_rate: float,
    warmup_ratio: float,
    seed: int,
    device: str,
    output_path: Path,
    fingerprint: str,
    progress: ProgressCallback | None,
    should_stop: StopCheck | None,
    checkpointing: Checkpointing | None,
) -> _Fitted:
    """Train `model` with `loss` on sentence-transformers' SentenceTransformerTrainer; a row is an
    index the loss looks up (rag.training.retriever_losses). AdamW (weight decay 0.01), linear
    warm-up and decay, gradients clipped at norm 1, bf16 mixed precision on a GPU that has it,
    several GPUs under `accelerate launch`, the library's checkpoints and resume."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    resume_from = checkpoint_to_resume(checkpointing, fingerprint)
    scratch = output_path.parent / f".{output_path.name}.trainer"
    arguments = SentenceTransformerTrainingArguments(
        **checkpoint_arguments(checkpointing, scratch=scratch),
        **optimisation_arguments(
            rows=rows, epochs=epochs, batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
            learning_rate=learning_rate, warmup_ratio=warmup_ratio, seed=seed, device=device,
        ),
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(
        model=model, args=arguments, train_dataset=Dataset.from_dict({"label": list(range(rows))}), loss=loss,
        callbacks=[trainer_callback(progress=progress, should_stop=should_stop)],
    )  # fmt: skip
    quiet(trainer)
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    model.eval()
    return _Fitted(
        curve=loss_curve(trainer.state),
        resumed_from_step=resumed_step(resume_from),
        mixed_precision="bf16" if arguments.bf16 else "no",
        scratch=scratch,
    )


def _check_steps(epochs: int, batch_size: int, gradient_accumulation_steps: int) -> None:
    if epochs < 1 or batch_size < 1 or gradient_accumulation_steps < 1:
        raise ValueError("epochs, batch_size and gradient_accumulation_steps must be at least 1")


# --- contrastive training --------------------------------------------------------------


@dataclass(frozen=True)
class ContrastivePair:
    """One (query, positive) training row with the negatives that belong to that query."""

    query: str
    positive: str
    negatives: tuple[str, ...]


def contrastive_pairs(
    examples: Sequence[RetrievalTrainingExample], mined_negatives: dict[str, list[str]]
) -> tuple[list[ContrastivePair], dict[str, set[str]]]:
    """One pair per (query, positive), and every query's known positives (for masking).

    A query's negatives are all its curator hard negatives, then its mined ones, without
    repeats; several labels of one query (by different curators) pool their judgments. A pair
    of an example with `repeats` n comes n times, one after another (the largest n of the
    examples that give it); the shuffle spreads them over the epoch's batches, and a copy in
    the same batch as another copy is no false negative (candidates are de-duplicated).
    """
    known_positives: dict[str, set[str]] = {}
    curator_negatives: dict[str, list[str]] = {}
    for example in examples:
        known_positives.setdefault(example.query, set()).update(example.positives)
        curator_negatives.setdefault(example.query, []).extend(example.hard_negatives)
    pairs: dict[tuple[str, str], ContrastivePair] = {}
    repeats: dict[tuple[str, str], int] = {}
    for example in examples:
        # A passage marked relevant for this query is never its negative, even if another
        # curator's label or the miner put it there: a disputed passage is left out.
        negatives = tuple(
            text
            for text in _unique([*curator_negatives[example.query], *mined_negatives.get(example.query, [])])
            if text not in known_positives[example.query]
        )
        for positive in example.positives:
            # Two curators agreeing on a passage make one pair, not a double-weighted one.
            pairs.setdefault((example.query, positive), ContrastivePair(example.query, positive, negatives))
            repeats[example.query, positive] = max(repeats.get((example.query, positive), 1), example.repeats)
    return [pair for key, pair in pairs.items() for _ in range(repeats[key])], known_positives


def train_contrastive(
    *,
    base_model_path: str | Path,
    examples: Sequence[RetrievalTrainingExample],
    output_path: str | Path,
    epochs: int = 1,
    batch_size: int = 16,
    gradient_accumulation_steps: int = 1,
    learning_rate: float = 2e-5,
    warmup_ratio: float = 0.1,
    seed: int = 0,
    query_only: bool = False,
    mined_negatives: dict[str, list[str]] | None = None,
    mini_batch_size: int | None = None,
    frozen_documents: FrozenDocuments | None = None,
    corpus_negatives: bool = False,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpointing: Checkpointing | None = None,
    extra_parameters: dict[str, Any] | None = None,
) -> RetrieverTrainingResult:
    """Fine-tune a retriever with MultipleNegativesRankingLoss on curated (query, positive) pairs.

    Each query is scored against every positive of its batch (in-batch negatives) plus every
    curator hard negative and mined negative of the batch, de-duplicated, with its own other
    positives masked (rag.training.retriever_losses.CandidateRankingLoss).

    With query_only, only a copy of the encoder used for queries is trained; documents are
    embedded by the frozen base model, so stored chunk embeddings stay valid. frozen_documents
    hands in the vectors the index already stores, so nothing it holds is encoded again.
    corpus_negatives (query-only, with frozen_documents): every query is scored against every
    frozen vector, the whole corpus, not only its batch's candidates. The query side is all that
    moves, so a negative costs a row of a matrix product, not an encoder pass.

    mini_batch_size turns on GradCache (sentence-transformers' CachedLossMixin, as in its
    CachedMultipleNegativesRankingLoss): the encoder runs on at most that many texts at a time,
    so a large batch, with all its in-batch negatives, fits in the memory of a small one; the
    gradients are the same as without it, at the price of a second forward pass.
    gradient_accumulation_steps batches make one optimiser step (each batch is its own
    softmax: accumulation saves memory but does not widen the negatives, the cache does).

    extra_parameters are recorded with the others (where the examples came from, e.g.).
    """
    from rag.training.retriever_losses import SIMILARITY_SCALE, CandidateRankingLoss

    _check_steps(epochs, batch_size, gradient_accumulation_steps)
    if mini_batch_size is not None and mini_batch_size < 1:
        raise ValueError("mini_batch_size must be at least 1")
    if corpus_negatives and not (query_only and frozen_documents is not None):
        raise ValueError("corpus_negatives needs query_only and the frozen document vectors")
    pairs, known_positives = contrastive_pairs(examples, mined_negatives or {})
    if not pairs:
        raise ValueError("contrastive training needs at least one example with a positive passage")

    device = pick_device(device)
    seed_everything(seed)
    output_path = Path(output_path)
    query_model = _load_encoder(base_model_path, device)
    frozen, encoded_before = None, 0
    if query_only:
        needed = [text for pair in pairs for text in (pair.positive, *pair.negatives)]
        frozen, encoded_before = _frozen_side(
            base_model_path=base_model_path, device=device, needed=needed, frozen=frozen_documents
        )
    loss = CandidateRankingLoss(
        query_model, pairs, known_positives, frozen=frozen, corpus_negatives=corpus_negatives,
        mini_batch_size=mini_batch_size, scale=SIMILARITY_SCALE,
    )  # fmt: skip
    fitted = _fit(
        model=query_model, loss=loss, rows=len(pairs), epochs=epochs, batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, learning_rate=learning_rate, warmup_ratio=warmup_ratio,
        seed=seed, device=device, output_path=output_path, progress=progress, should_stop=should_stop,
        checkpointing=checkpointing,
        fingerprint=inputs_fingerprint(
            "contrastive", str(base_model_path), query_only, mini_batch_size, corpus_negatives,
            frozen.texts if frozen is not None else None, pairs, epochs, batch_size, gradient_accumulation_steps,
            learning_rate, warmup_ratio, seed,
        ),
    )  # fmt: skip
    parameters = {
        "method": "contrastive",
        "epochs": epochs,
        "batch_size": batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "learning_rate": learning_rate,
        "warmup_ratio": warmup_ratio,
        "seed": seed,
        "query_only": query_only,
        "similarity_scale": SIMILARITY_SCALE,
        "examples": len(examples),
        "pairs": len(pairs),
        "mined_negative_queries": len(mined_negatives or {}),
        "mini_batch_size": mini_batch_size,
        "corpus_negatives": len(frozen.texts) if corpus_negatives else 0,
        "frozen_vectors_given": len(frozen_documents.texts) if frozen_documents is not None else 0,
        "frozen_texts_encoded": encoded_before,
        "mixed_precision": fitted.mixed_precision,
        "resumed_from_step": fitted.resumed_from_step,
        **(extra_parameters or {}),
    }
    return _save_retriever(
        output_path=output_path, query_only=query_only, trained_model=query_model, base_model_path=base_model_path,
        parameters=parameters, fitted=fitted, checkpointing=checkpointing,
    )  # fmt: skip


def corpus_pairs_lineage(chunk_count: int) -> str:
    """How a corpus-pairs version's lineage reads where a labelled one names its snapshot."""
    return f"corpus_pairs, {chunk_count} chunks, no labels"


def train_corpus_pairs(
    *,
    base_model_path: str | Path,
    pairs: Sequence[CorpusPair],
    chunk_count: int,
    output_path: str | Path,
    query_only: bool = True,
    epochs: int = 1,
    batch_size: int = 32,
    learning_rate: float = 2e-5,
    warmup_ratio: float = 0.1,
    seed: int = 0,
    mini_batch_size: int | None = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpointing: Checkpointing | None = None,
) -> RetrieverTrainingResult:
    """Contrastive training on (opening span, continuation) pairs of chunks (rag.corpus_pairs),
    with in-batch negatives only: no label and no mined negative is involved.

    `chunk_count` is how many chunks the pairs were drawn from (some are skipped as too short);
    it is recorded with the lineage.
    """
    examples = [RetrievalTrainingExample(query=pair.query, positives=[pair.positive]) for pair in pairs]
    if not examples:
        raise ValueError("corpus-pairs training needs at least one chunk long enough to split")
    return train_contrastive(
        base_model_path=base_model_path,
        examples=examples,
        output_path=output_path,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_ratio=warmup_ratio,
        seed=seed,
        query_only=query_only,
        mini_batch_size=mini_batch_size,
        device=device,
        progress=progress,
        should_stop=should_stop,
        checkpointing=checkpointing,
        extra_parameters={
            "data": "corpus_pairs",
            "chunks": chunk_count,
            "labels": 0,
            "lineage": corpus_pairs_lineage(chunk_count),
        },
    )


# --- RA-DIT LM-supervised retrieval ----------------------------------------------------


def score_chunks_with_lm(
    *, lm_scorer: Callable[[str, str, str], float], examples: Sequence[LsrTrainingExample]
) -> list[list[float]]:
    """The LM's score of every retrieved chunk of every example: lm_scorer(query, chunk, answer).

    lm_scorer should return the length-normalised log-likelihood of the gold answer given a
    prompt holding only that chunk, e.g. HFGenerator.answer_log_likelihood with the chunk
    wrapped in a ContextPassage.
    """
    return [
        [float(lm_scorer(example.query, chunk, example.answer)) for chunk in example.chunks] for example in examples
    ]


def train_lsr(
    *,
    base_model_path: str | Path,
    examples: Sequence[LsrTrainingExample],
    lm_log_likelihoods: Sequence[Sequence[float]],
    output_path: str | Path,
    query_only: bool = True,
    epochs: int = 1,
    batch_size: int = 8,
    gradient_accumulation_steps: int = 1,
    learning_rate: float = 2e-5,
    warmup_ratio: float = 0.1,
    retriever_temperature: float = 1.0,
    lm_temperature: float = 0.01,
    seed: int = 0,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpointing: Checkpointing | None = None,
) -> RetrieverTrainingResult:
    """Fine-tune a retriever so its distribution over each query's top-k chunks matches the LM's
    (rag.training.retriever_losses.LsrLoss, on sentence-transformers' trainer).

    The retriever's score of a chunk is SIMILARITY_SCALE * cosine(query, chunk).
    `lm_log_likelihoods[i][j]` scores `examples[i].chunks[j]` (see score_chunks_with_lm).
    In query-only mode (the default, as in RA-DIT) chunk embeddings come from the frozen
    base model, computed once; in full mode the chunks are re-encoded by the trained model.
    Examples with fewer than two chunks carry no preference and are left out.
    """
    from rag.training.retriever_losses import SIMILARITY_SCALE, LsrLoss, LsrRow

    _check_steps(epochs, batch_size, gradient_accumulation_steps)
    if len(lm_log_likelihoods) != len(examples):
        raise ValueError(f"got {len(lm_log_likelihoods)} rows of LM scores for {len(examples)} examples")
    for index, (example, scores) in enumerate(zip(examples, lm_log_likelihoods, strict=True)):
        if len(scores) != len(example.chunks):
            raise ValueError(f"example {index} has {len(example.chunks)} chunks but {len(scores)} LM scores")
    usable = [
        LsrRow(query=example.query, chunks=list(example.chunks), lm_scores=[float(score) for score in scores])
        for example, scores in zip(examples, lm_log_likelihoods)
        if len(example.chunks) >= 2
    ]
    if not usable:
        raise ValueError("LM-supervised retrieval needs at least one example with two or more chunks")

    device = pick_device(device)
    seed_everything(seed)
    output_path = Path(output_path)
    query_model = _load_encoder(base_model_path, device)
    frozen = None
    if query_only:
        needed = [chunk for row in usable for chunk in row.chunks]
        frozen, _ = _frozen_side(base_model_path=base_model_path, device=device, needed=needed, frozen=None)
    loss = LsrLoss(
        query_model, usable, frozen=frozen, retriever_temperature=retriever_temperature, lm_temperature=lm_temperature
    )
    fitted = _fit(
        model=query_model, loss=loss, rows=len(usable), epochs=epochs, batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, learning_rate=learning_rate, warmup_ratio=warmup_ratio,
        seed=seed, device=device, output_path=output_path, progress=progress, should_stop=should_stop,
        checkpointing=checkpointing,
        fingerprint=inputs_fingerprint(
            "lsr", str(base_model_path), query_only, retriever_temperature, lm_temperature, usable, epochs, batch_size,
            gradient_accumulation_steps, learning_rate, warmup_ratio, seed,
        ),
    )  # fmt: skip
    parameters = {
        "method": "lsr",
        "epochs": epochs,
        "batch_size": batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "learning_rate": learning_rate,
        "warmup_ratio": warmup_ratio,
        "retriever_temperature": retriever_temperature,
        "lm_temperature": lm_temperature,
        "seed": seed,
        "query_only": query_only,
        "similarity_scale": SIMILARITY_SCALE,
        "examples": len(examples),
        "examples_used": len(usable),
        "mixed_precision": fitted.mixed_precision,
        "resumed_from_step": fitted.resumed_from_step,
    }
    return _save_retriever(
        output_path=output_path, query_only=query_only, trained_model=query_model, base_model_path=base_model_path,
        parameters=parameters, fitted=fitted, checkpointing=checkpointing,
    )  # fmt: skip
