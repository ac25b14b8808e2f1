"""Retriever fine-tuning from curator labels: contrastive training and RA-DIT's LM-supervised retrieval.

Both trainers can update the query encoder only (RA-DIT's choice), so the chunk
embeddings already stored for a knowledge base stay valid and nothing is re-indexed.

One module (~760 lines; the optimisation loop and its checkpoints are rag/training/loop.py;
splitting the frozen side and the losses out is due with the move onto sentence-transformers'
trainers, issue 12) because the trainers share the encoder pair (query-only or tied), the
frozen document vectors, the seeding and the saving format that `load_trained_retriever` reads
back; the contrastive loss and its cached variant must stay equal step for step, which the
tests check side by side.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.training import ProgressCallback, StopCheck, pick_device, seed_everything
from rag.training.loop import Checkpointing, inputs_fingerprint, remove_checkpoint, training_loop

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

    from rag.corpus_pairs import CorpusPair

RETRIEVER_DESCRIPTION = "retriever.json"
QUERY_ENCODER_DIR = "query_encoder"
ENCODER_DIR = "encoder"

# Cosine similarities live in [-1, 1]; multiplying by 20 (a temperature of 0.05, the
# sentence-transformers MultipleNegativesRankingLoss default) lets a softmax over them be
# confident. Both trainers use it so their scores mean the same thing.
SIMILARITY_SCALE = 20.0


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
    curve: list[dict[str, float]],
    resumed_from_step: int = 0,
    checkpointing: Checkpointing | None = None,
) -> RetrieverTrainingResult:
    """Save the trained encoder and the retriever.json that says how to load it; then the
    checkpoint, which is not part of the model, is removed."""
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
    remove_checkpoint(checkpointing)
    return RetrieverTrainingResult(
        output_path=output_path,
        mode="query_only" if query_only else "full",
        training_curve=curve,
        parameters=parameters,
        steps=len(curve),
        resumed_from_step=resumed_from_step,
    )


# --- encoding with gradients -----------------------------------------------------------


def _load_encoder(model_path: str | Path, device: str) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    model_path = Path(model_path)
    if not model_path.is_dir():
        # Without this check sentence-transformers would treat the path as a hub name.
        raise FileNotFoundError(f"retriever model directory not found: {model_path}")
    return SentenceTransformer(str(model_path), device=device, local_files_only=True)


def _role_prompt(model: SentenceTransformer, role: str) -> str | None:
    """The prompt encode_query / encode_document would prepend, so training sees what serving sees."""
    names = ["query"] if role == "query" else ["document", "passage", "corpus"]
    for name in names:
        if name in model.prompts:
            return model.prompts[name]
    return None


def _embed(model: SentenceTransformer, texts: Sequence[str], *, role: str) -> torch.Tensor:
    """Unit-length embeddings (len(texts), dim) with gradients, the same forward pass as model.encode_<role>."""
    import torch
    from sentence_transformers.util import batch_to_device

    task = "query" if role == "query" else "document"
    features = model.preprocess(list(texts), prompt=_role_prompt(model, role), task=task)
    features = batch_to_device(features, model.device)
    embeddings = model(features, task=task)["sentence_embedding"]
    return torch.nn.functional.normalize(embeddings, p=2, dim=1)


def _frozen_document_embeddings(model: SentenceTransformer, texts: list[str]) -> torch.Tensor:
    """Embeddings of the frozen document encoder, exactly as the index stores them."""
    import torch

    vectors = model.encode_document(
        texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
    )
    return torch.as_tensor(vectors).detach()


def _frozen_side(
    *, base_model_path: str | Path, device: str, needed: list[str], frozen: FrozenDocuments | None
) -> tuple[torch.Tensor, list[str], dict[str, int]]:
    """(vectors, texts by row, row of each text): the stored vectors where given, then the
    needed texts they lack, encoded by the frozen encoder (loaded only if any are missing)."""
    import torch

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
    return torch.cat(parts).to(device), texts, rows


class _CachedEmbeddings:
    """GradCache (Gao et al., 2021): embed a batch's texts in mini-batches without building the
    graph, let the loss put its gradients on those vectors, then run each mini-batch through the
    encoder again and push its slice of the gradients into the weights.

    The second pass replays the random state of the first, so dropout drops the same units
    and the vectors the loss saw are the ones the gradients flow through.
    """

    def __init__(self, model: SentenceTransformer, texts: list[str], *, role: str, mini_batch_size: int) -> None:
        import torch

        self.model, self.role = model, role
        self.pieces = [texts[start : start + mini_batch_size] for start in range(0, len(texts), mini_batch_size)]
        self.random_states = []
        parts = []
        with torch.no_grad():
            for piece in self.pieces:
                self.random_states.append(_random_state())
                parts.append(_embed(model, piece, role=role))
        self.vectors = torch.cat(parts).requires_grad_()

    def backward_into_encoder(self) -> None:
        if self.vectors.grad is None:
            return  # the loss did not use these vectors
        gradients = self.vectors.grad.split([len(piece) for piece in self.pieces])
        for piece, state, gradient in zip(self.pieces, self.random_states, gradients, strict=True):
            with _replayed(state):
                vectors = _embed(self.model, piece, role=self.role)
            vectors.backward(gradient)


def _random_state() -> tuple[Any, Any]:
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


@contextmanager
def _replayed(state: tuple[Any, Any]) -> Iterator[None]:
    """Run the block with the random state captured earlier; the state outside is left as it was."""
    import torch

    cpu, cuda = state
    with torch.random.fork_rng(devices=range(len(cuda)) if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        yield


def _unique(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(texts))


def _backward_through(batch_loss: Callable[[list[Any]], torch.Tensor]) -> Callable[[list[Any]], float]:
    """A backward step for training_loop from a function that returns a batch's loss."""

    def backward(batch: list[Any]) -> float:
        loss = batch_loss(batch)
        loss.backward()
        return float(loss.detach())

    return backward


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


def multiple_negatives_ranking_loss(
    query_embeddings: torch.Tensor,
    candidate_embeddings: torch.Tensor,
    targets: torch.Tensor,
    *,
    excluded: torch.Tensor | None = None,
    scale: float = SIMILARITY_SCALE,
) -> torch.Tensor:
    """Cross-entropy of each query picking its positive among all candidates of the batch.

    query_embeddings [B, D] and candidate_embeddings [C, D] are unit vectors; targets [B]
    holds each query's positive column; excluded [B, C] marks candidates that must not count
    as that query's negatives (its other known positives).
    """
    import torch

    logits = query_embeddings @ candidate_embeddings.T * scale
    if excluded is not None:
        logits = logits.masked_fill(excluded, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, targets)


def train_contrastive(
    *,
    base_model_path: str | Path,
    examples: Sequence[RetrievalTrainingExample],
    output_path: str | Path,
    epochs: int = 1,
    batch_size: int = 16,
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
    curator hard negative and mined negative of the batch. Candidates are de-duplicated per
    batch and a query's own other positives are masked out, which removes the false
    negatives that NoDuplicatesBatchSampler avoids, without dropping or reordering pairs.

    With query_only, only a copy of the encoder used for queries is trained; documents are
    embedded by the frozen base model, so stored chunk embeddings stay valid. frozen_documents
    hands in the vectors the index already stores, so nothing it holds is encoded again.
    corpus_negatives (query-only, with frozen_documents): every query is scored against every
    frozen vector, the whole corpus, not only its batch's candidates; its own other known
    positives (and copies of its positive's text) are masked out. The query side is all that
    moves, so a negative costs a row of a matrix product, not an encoder pass.

    mini_batch_size turns on the cached variant (GradCache, as sentence-transformers'
    CachedMultipleNegativesRankingLoss): the encoder runs on at most that many texts at a
    time, so a large batch, with all its in-batch negatives, fits in the memory of a small
    one. The gradients are the same as without it, at the price of a second forward pass.

    extra_parameters are recorded with the others (where the examples came from, e.g.).
    """
    import torch

    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
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
    encoded_before = 0
    if query_only:
        needed = [text for pair in pairs for text in (pair.positive, *pair.negatives)]
        document_vectors, document_texts, document_rows = _frozen_side(
            base_model_path=base_model_path, device=device, needed=needed, frozen=frozen_documents
        )
        encoded_before = len(document_texts) - (len(frozen_documents.texts) if frozen_documents is not None else 0)
        if corpus_negatives:
            rows_of_text: dict[str, list[int]] = {}
            for row, text in enumerate(document_texts):
                rows_of_text.setdefault(text, []).append(row)

    def corpus_backward_step(batch: list[ContrastivePair]) -> float:
        """Each query against every frozen vector: the whole corpus is its candidates."""
        targets = torch.tensor([document_rows[pair.positive] for pair in batch], device=device)
        excluded = torch.zeros((len(batch), len(document_texts)), dtype=torch.bool)
        for index, pair in enumerate(batch):
            for text in known_positives[pair.query] | {pair.positive}:
                excluded[index, rows_of_text.get(text, [])] = True
            excluded[index, document_rows[pair.positive]] = False
        excluded = excluded.to(device)
        queries = [pair.query for pair in batch]
        if mini_batch_size is None:
            loss = multiple_negatives_ranking_loss(
                _embed(query_model, queries, role="query"), document_vectors, targets, excluded=excluded
            )
            loss.backward()
            return float(loss.detach())
        cached = _CachedEmbeddings(query_model, queries, role="query", mini_batch_size=mini_batch_size)
        loss = multiple_negatives_ranking_loss(cached.vectors, document_vectors, targets, excluded=excluded)
        loss.backward()
        cached.backward_into_encoder()
        return float(loss.detach())

    def backward_step(batch: list[ContrastivePair]) -> float:
        if corpus_negatives:
            return corpus_backward_step(batch)
        queries = [pair.query for pair in batch]
        candidates = _unique([pair.positive for pair in batch] + [text for pair in batch for text in pair.negatives])
        column = {text: index for index, text in enumerate(candidates)}
        targets = torch.tensor([column[pair.positive] for pair in batch], device=device)
        excluded = torch.tensor(
            [[text in known_positives[pair.query] and text != pair.positive for text in candidates] for pair in batch],
            device=device,
        )
        if mini_batch_size is None:
            query_vectors = _embed(query_model, queries, role="query")
            if query_only:
                candidate_vectors = document_vectors[[document_rows[text] for text in candidates]]
            else:
                candidate_vectors = _embed(query_model, candidates, role="document")
            loss = multiple_negatives_ranking_loss(query_vectors, candidate_vectors, targets, excluded=excluded)
            loss.backward()
            return float(loss.detach())
        cached = [_CachedEmbeddings(query_model, queries, role="query", mini_batch_size=mini_batch_size)]
        if query_only:
            candidate_vectors = document_vectors[[document_rows[text] for text in candidates]]
        else:
            cached.append(_CachedEmbeddings(query_model, candidates, role="document", mini_batch_size=mini_batch_size))
            candidate_vectors = cached[1].vectors
        loss = multiple_negatives_ranking_loss(cached[0].vectors, candidate_vectors, targets, excluded=excluded)
        loss.backward()  # stops at the cached vectors: their gradients, not the encoder's yet
        for embeddings in cached:
            embeddings.backward_into_encoder()
        return float(loss.detach())

    trained = training_loop(
        model=query_model,
        items=pairs,
        backward_step=backward_step,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_ratio=warmup_ratio,
        seed=seed,
        progress=progress,
        should_stop=should_stop,
        fingerprint=inputs_fingerprint(
            "contrastive", str(base_model_path), query_only, mini_batch_size, corpus_negatives,
            document_texts if query_only else None,
        ),  # fmt: skip
        checkpointing=checkpointing,
    )
    parameters = {
        "method": "contrastive",
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "warmup_ratio": warmup_ratio,
        "seed": seed,
        "query_only": query_only,
        "similarity_scale": SIMILARITY_SCALE,
        "examples": len(examples),
        "pairs": len(pairs),
        "mined_negative_queries": len(mined_negatives or {}),
        "mini_batch_size": mini_batch_size,
        "corpus_negatives": len(document_texts) if corpus_negatives else 0,
        "frozen_vectors_given": len(frozen_documents.texts) if frozen_documents is not None else 0,
        "frozen_texts_encoded": encoded_before,
        "resumed_from_step": trained.resumed_from_step,
        **(extra_parameters or {}),
    }
    return _save_retriever(
        output_path=output_path,
        query_only=query_only,
        trained_model=query_model,
        base_model_path=base_model_path,
        parameters=parameters,
        curve=trained.curve,
        resumed_from_step=trained.resumed_from_step,
        checkpointing=checkpointing,
    )


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


def lsr_loss(
    retriever_scores: torch.Tensor,
    lm_log_likelihoods: torch.Tensor,
    *,
    retriever_temperature: float = 1.0,
    lm_temperature: float = 0.01,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """RA-DIT's LM-supervised retrieval loss: mean over queries of KL(p_LM || p_R).

    For each query (row) over its k retrieved chunks (columns):
      p_R  = softmax(retriever_scores / retriever_temperature)   -- what the retriever believes
      p_LM = softmax(lm_log_likelihoods / lm_temperature)        -- how much each chunk helps the
             LM produce the gold answer; a fixed target, so it is detached
      loss = mean_b sum_k p_LM (log p_LM - log p_R)

    The direction is the paper's KL(p_LSR || p_R): the LM's preference is the reference
    distribution, so the retriever is pushed to cover every chunk the LM finds useful (the
    forward, mass-covering KL), and the gradient reaches only the retriever's scores.
    `mask` [B, K] (True = a real chunk) lets queries with fewer than K chunks share a batch.
    """
    import torch

    if retriever_scores.shape != lm_log_likelihoods.shape or retriever_scores.dim() != 2:
        raise ValueError(
            f"retriever_scores and lm_log_likelihoods must both be [B, K]; "
            f"got {tuple(retriever_scores.shape)} and {tuple(lm_log_likelihoods.shape)}"
        )
    retriever_logits = retriever_scores / retriever_temperature
    lm_logits = lm_log_likelihoods.detach().to(retriever_scores.dtype) / lm_temperature
    if mask is not None:
        retriever_logits = retriever_logits.masked_fill(~mask, float("-inf"))
        lm_logits = lm_logits.masked_fill(~mask, float("-inf"))
    log_p_retriever = torch.log_softmax(retriever_logits, dim=-1)
    log_p_lm = torch.log_softmax(lm_logits, dim=-1)
    terms = log_p_lm.exp() * (log_p_lm - log_p_retriever)
    if mask is not None:
        # Missing chunks have p = 0 on both sides; their 0 * (-inf - -inf) is NaN, not 0.
        terms = torch.where(mask, terms, torch.zeros_like(terms))
    return terms.sum(dim=-1).mean()


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
    """Fine-tune a retriever so its distribution over each query's top-k chunks matches the LM's.

    The retriever's score of a chunk is SIMILARITY_SCALE * cosine(query, chunk).
    `lm_log_likelihoods[i][j]` scores `examples[i].chunks[j]` (see score_chunks_with_lm).
    In query-only mode (the default, as in RA-DIT) chunk embeddings come from the frozen
    base model, computed once; in full mode the chunks are re-encoded by the trained model.
    Examples with fewer than two chunks carry no preference and are left out.
    """
    import torch

    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
    if len(lm_log_likelihoods) != len(examples):
        raise ValueError(f"got {len(lm_log_likelihoods)} rows of LM scores for {len(examples)} examples")
    for index, (example, scores) in enumerate(zip(examples, lm_log_likelihoods, strict=True)):
        if len(scores) != len(example.chunks):
            raise ValueError(f"example {index} has {len(example.chunks)} chunks but {len(scores)} LM scores")
    usable = [
        (example, list(scores)) for example, scores in zip(examples, lm_log_likelihoods) if len(example.chunks) >= 2
    ]
    if not usable:
        raise ValueError("LM-supervised retrieval needs at least one example with two or more chunks")

    device = pick_device(device)
    seed_everything(seed)
    output_path = Path(output_path)
    query_model = _load_encoder(base_model_path, device)
    if query_only:
        document_model = _load_encoder(base_model_path, device)
        document_model.eval()
        chunk_texts = _unique([chunk for example, _ in usable for chunk in example.chunks])
        chunk_vectors = _frozen_document_embeddings(document_model, chunk_texts).to(device)
        chunk_rows = {text: row for row, text in enumerate(chunk_texts)}
        del document_model

    def batch_loss(batch: list[tuple[LsrTrainingExample, list[float]]]) -> torch.Tensor:
        width = max(len(example.chunks) for example, _ in batch)
        mask = torch.tensor(
            [[column < len(example.chunks) for column in range(width)] for example, _ in batch], device=device
        )
        lm_scores = torch.tensor(
            [scores + [0.0] * (width - len(scores)) for _, scores in batch], dtype=torch.float32, device=device
        )
        query_vectors = _embed(query_model, [example.query for example, _ in batch], role="query")
        flat_chunks = [chunk for example, _ in batch for chunk in example.chunks]
        if query_only:
            flat_vectors = chunk_vectors[[chunk_rows[chunk] for chunk in flat_chunks]]
        else:
            flat_vectors = _embed(query_model, flat_chunks, role="document")
        rows = []
        offset = 0
        for query_vector, (example, _) in zip(query_vectors, batch):
            vectors = flat_vectors[offset : offset + len(example.chunks)]
            offset += len(example.chunks)
            # Padding columns get a score of 0 here; the mask removes them from both softmaxes.
            rows.append(torch.nn.functional.pad(vectors @ query_vector * SIMILARITY_SCALE, (0, width - len(vectors))))
        return lsr_loss(
            torch.stack(rows),
            lm_scores,
            retriever_temperature=retriever_temperature,
            lm_temperature=lm_temperature,
            mask=mask,
        )

    trained = training_loop(
        model=query_model,
        items=usable,
        backward_step=_backward_through(batch_loss),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_ratio=warmup_ratio,
        seed=seed,
        progress=progress,
        should_stop=should_stop,
        fingerprint=inputs_fingerprint("lsr", str(base_model_path), query_only, retriever_temperature, lm_temperature),
        checkpointing=checkpointing,
    )
    parameters = {
        "method": "lsr",
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "warmup_ratio": warmup_ratio,
        "retriever_temperature": retriever_temperature,
        "lm_temperature": lm_temperature,
        "seed": seed,
        "query_only": query_only,
        "similarity_scale": SIMILARITY_SCALE,
        "examples": len(examples),
        "examples_used": len(usable),
        "resumed_from_step": trained.resumed_from_step,
    }
    return _save_retriever(
        output_path=output_path,
        query_only=query_only,
        trained_model=query_model,
        base_model_path=base_model_path,
        parameters=parameters,
        curve=trained.curve,
        resumed_from_step=trained.resumed_from_step,
        checkpointing=checkpointing,
    )
