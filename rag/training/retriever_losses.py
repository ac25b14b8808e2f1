"""The retriever's losses, as the loss modules sentence-transformers' `SentenceTransformerTrainer`
calls with (features, labels): what the library's own losses lack, and nothing more.

The library's MultipleNegativesRankingLoss scores a batch of (anchor, positive, negative_1..n)
columns: a fixed number of negatives per row, each text encoded once per row it appears in, no
way to say that a candidate is another positive of the same query, and every candidate is
encoded by the model being trained. Ours need:

- a query's own other positives (several curators, several relevant chunks) masked out of its
  negatives, and candidates de-duplicated across the batch (one mined chunk shared by three
  queries is encoded once);
- query-only training, where the document side is frozen: its vectors are the ones the index
  stores, read, not encoded, and with `corpus_negatives` every stored vector of the space is a
  negative of every query;
- RA-DIT's LM-supervised retrieval: a KL divergence between the retriever's distribution over a
  query's retrieved chunks and the LM's, with a different number of chunks per query.

So each training row is an index into the trainer's own list (the dataset's `label` column; the
collator passes it through), and the loss builds its batch from the texts. GradCache is the
library's: `CachedLossMixin` embeds the columns in mini-batches without a graph, lets
`calculate_loss` put the gradients on the vectors and replays each mini-batch (with its random
state, so dropout drops the same units) in a backward hook, which also carries the mixed-
precision scaler and gradient accumulation through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sentence_transformers.base.losses.gradcache import CachedLossMixin
from sentence_transformers.util import batch_to_device

# Cosine similarities live in [-1, 1]; multiplying by 20 (a temperature of 0.05, the
# sentence-transformers MultipleNegativesRankingLoss default) lets a softmax over them be
# confident. Both trainers use it so their scores mean the same thing.
SIMILARITY_SCALE = 20.0


@dataclass(frozen=True)
class FrozenSide:
    """The frozen document vectors a query-only loss scores against, on the training device:
    `vectors[rows[text]]` is a text's vector; `texts` lists them row by row (a text may repeat:
    two chunks with the same words)."""

    vectors: torch.Tensor
    texts: list[str]
    rows: dict[str, int]


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
    logits = query_embeddings @ candidate_embeddings.T * scale
    if excluded is not None:
        logits = logits.masked_fill(excluded, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, targets)


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


def _role_prompt(model: Any, role: str) -> str | None:
    """The prompt encode_query / encode_document would prepend, so training sees what serving sees."""
    names = ["query"] if role == "query" else ["document", "passage", "corpus"]
    for name in names:
        if name in model.prompts:
            return model.prompts[name]
    return None


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    # float32 whatever the autocast computed in: the softmax over thousands of columns needs it.
    return torch.nn.functional.normalize(vectors.float(), p=2, dim=1)


class _TextBatchLoss(CachedLossMixin, torch.nn.Module):
    """What both losses share: the encoder (`model`, which the trainer swaps for its wrapped
    model under several GPUs), the texts turned into the encoder's input on its device, and the
    cached (GradCache) or plain forward pass over them."""

    def __init__(self, model: Any, *, mini_batch_size: int | None) -> None:
        super().__init__()
        self.model = model
        # Bound methods and plain values, not modules: the wrapped model replaces only `model`.
        self._preprocess, self._prompts, self._device = model.preprocess, model.prompts, model.device
        self.uses_gradient_cache = mini_batch_size is not None
        self.mini_batch_size = mini_batch_size or 0

    def features(self, texts: Sequence[str], *, role: str) -> dict[str, torch.Tensor]:
        task = "query" if role == "query" else "document"
        prompt = _role_prompt(self, role)
        return batch_to_device(self._preprocess(list(texts), prompt=prompt, task=task), self._device)

    @property
    def prompts(self) -> dict[str, str]:
        return self._prompts

    def embed_columns(self, columns: list[dict[str, torch.Tensor]], labels: torch.Tensor) -> torch.Tensor:
        """The loss over the embedded columns, through calculate_loss: cached or plain."""
        if self.uses_gradient_cache:
            return self.forward_cached(columns, labels)
        return self.calculate_loss([[self.model(column)["sentence_embedding"]] for column in columns], labels)


class CandidateRankingLoss(_TextBatchLoss):
    """MultipleNegativesRankingLoss over each batch's de-duplicated candidates: every positive of
    the batch (in-batch negatives), every curator hard negative and mined negative, with a
    query's own other known positives masked out, which removes the false negatives that
    NoDuplicatesBatchSampler avoids without dropping or reordering pairs.

    With `frozen` (query-only) the candidates are the stored vectors of those texts and only the
    queries are encoded; with `corpus_negatives` too, every query is scored against every frozen
    vector, the whole corpus, its own other positives (and copies of its positive's text) masked.
    `mini_batch_size` turns on GradCache: the encoder sees at most that many texts at a time.
    """

    def __init__(
        self,
        model: Any,
        pairs: Sequence[Any],  # rag.training.retriever.ContrastivePair
        known_positives: dict[str, set[str]],
        *,
        frozen: FrozenSide | None = None,
        corpus_negatives: bool = False,
        mini_batch_size: int | None = None,
        scale: float = SIMILARITY_SCALE,
    ) -> None:
        super().__init__(model, mini_batch_size=mini_batch_size)
        if corpus_negatives and frozen is None:
            raise ValueError("corpus_negatives needs the frozen document vectors")
        self.pairs, self.known_positives, self.frozen, self.scale = list(pairs), known_positives, frozen, scale
        self.corpus_negatives = corpus_negatives
        if corpus_negatives:
            self.rows_of_text: dict[str, list[int]] = {}
            for row, text in enumerate(frozen.texts):
                self.rows_of_text.setdefault(text, []).append(row)
        self._batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def forward(self, sentence_features: Any, labels: torch.Tensor) -> torch.Tensor:
        batch = [self.pairs[index] for index in labels.tolist()]
        columns = [self.features([pair.query for pair in batch], role="query")]
        if self.corpus_negatives:
            targets, excluded, frozen_vectors = self._against_the_corpus(batch)
        else:
            candidates = list(dict.fromkeys([pair.positive for pair in batch] + [t for pair in batch for t in pair.negatives]))
            column = {text: index for index, text in enumerate(candidates)}
            targets = torch.tensor([column[pair.positive] for pair in batch])
            excluded = torch.tensor(
                [[text in self.known_positives[pair.query] and text != pair.positive for text in candidates] for pair in batch]
            )
            frozen_vectors = None
            if self.frozen is not None:
                frozen_vectors = self.frozen.vectors[[self.frozen.rows[text] for text in candidates]]
            else:
                columns.append(self.features(candidates, role="document"))
        self._batch = (targets.to(self._device), excluded.to(self._device), frozen_vectors)
        return self.embed_columns(columns, labels)

    def _against_the_corpus(self, batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        frozen = self.frozen
        targets = torch.tensor([frozen.rows[pair.positive] for pair in batch])
        excluded = torch.zeros((len(batch), len(frozen.texts)), dtype=torch.bool)
        for index, pair in enumerate(batch):
            for text in self.known_positives[pair.query] | {pair.positive}:
                excluded[index, self.rows_of_text.get(text, [])] = True
            excluded[index, frozen.rows[pair.positive]] = False
        return targets, excluded, frozen.vectors

    def calculate_loss(self, reps: list[list[torch.Tensor]], labels: torch.Tensor | None = None, *, with_backward: bool = False) -> torch.Tensor:
        targets, excluded, frozen_vectors = self._batch
        queries = _unit(torch.cat(reps[0]))
        candidates = frozen_vectors if frozen_vectors is not None else _unit(torch.cat(reps[1]))
        loss = multiple_negatives_ranking_loss(queries, candidates, targets, excluded=excluded, scale=self.scale)
        if with_backward:
            loss.backward()  # stops at the cached vectors; the hook takes it into the encoder
            loss = loss.detach()
        return loss


@dataclass(frozen=True)
class LsrRow:
    """One query of LM-supervised retrieval: its retrieved chunks and the LM's score of each."""

    query: str
    chunks: list[str]
    lm_scores: list[float]


class LsrLoss(_TextBatchLoss):
    """lsr_loss over each batch: the retriever's score of a chunk is SIMILARITY_SCALE * cosine;
    queries with fewer chunks are padded and masked. With `frozen` (query-only) the chunks' vectors
    are the frozen encoder's; otherwise they are encoded by the model being trained."""

    def __init__(
        self,
        model: Any,
        rows: Sequence[LsrRow],
        *,
        frozen: FrozenSide | None = None,
        retriever_temperature: float = 1.0,
        lm_temperature: float = 0.01,
    ) -> None:
        super().__init__(model, mini_batch_size=None)
        self.rows, self.frozen = list(rows), frozen
        self.retriever_temperature, self.lm_temperature = retriever_temperature, lm_temperature
        self._batch: list[LsrRow] = []

    def forward(self, sentence_features: Any, labels: torch.Tensor) -> torch.Tensor:
        self._batch = [self.rows[index] for index in labels.tolist()]
        columns = [self.features([row.query for row in self._batch], role="query")]
        if self.frozen is None:
            columns.append(self.features([chunk for row in self._batch for chunk in row.chunks], role="document"))
        return self.embed_columns(columns, labels)

    def calculate_loss(self, reps: list[list[torch.Tensor]], labels: torch.Tensor | None = None, *, with_backward: bool = False) -> torch.Tensor:
        batch = self._batch
        width = max(len(row.chunks) for row in batch)
        mask = torch.tensor([[column < len(row.chunks) for column in range(width)] for row in batch], device=self._device)
        lm_scores = torch.tensor(
            [row.lm_scores + [0.0] * (width - len(row.lm_scores)) for row in batch], dtype=torch.float32, device=self._device
        )
        queries = _unit(torch.cat(reps[0]))
        if self.frozen is not None:
            chunk_vectors = self.frozen.vectors[[self.frozen.rows[chunk] for row in batch for chunk in row.chunks]]
        else:
            chunk_vectors = _unit(torch.cat(reps[1]))
        scores, offset = [], 0
        for query_vector, row in zip(queries, batch, strict=True):
            vectors = chunk_vectors[offset : offset + len(row.chunks)]
            offset += len(row.chunks)
            # Padding columns get a score of 0 here; the mask removes them from both softmaxes.
            scores.append(torch.nn.functional.pad(vectors @ query_vector * SIMILARITY_SCALE, (0, width - len(vectors))))
        loss = lsr_loss(
            torch.stack(scores), lm_scores, retriever_temperature=self.retriever_temperature,
            lm_temperature=self.lm_temperature, mask=mask,
        )  # fmt: skip
        if with_backward:
            loss.backward()
            loss = loss.detach()
        return loss
