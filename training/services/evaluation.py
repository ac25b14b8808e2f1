"""Held-out evaluation: a candidate model version and the baseline (the live version of its
component, else the base model) scored side by side on the same held-out queries of a snapshot.

Definitions, fixed here for the review page, the CLI and the metric gate alike:

Retriever
- Relevance is document-level: the document ids of the example's curator-relevant passages,
  each graded 1. Held-out examples with no relevant passage that names a document are not
  scored (recall and nDCG are 0/0 there, see rag.metrics).
- A retriever's ranking is of documents: it retrieves the top CHUNKS_PER_QUERY (20) chunks and
  keeps each document at its best chunk's rank (first occurrence), up to RANK_CUTOFF (10)
  documents. Retrieving more chunks than documents needed lets documents split into several
  chunks still fill ten places, as trec_eval would count them.
- Figures: recall@1/5/10, MRR@10 and nDCG@10 (linear gain; rag.metrics.retrieval_report).
  Headline (per-query delta): nDCG@10.
- The candidate must have a ready embedding space; the baseline is the live retriever
  version, else the knowledge base's base space.
- Queries are the examples' self-contained queries (for a follow-up: the curator's corrected
  query, else the rewrite serving retrieved with), as retrieval sees them.

Reranker
- Relevance, figures and the headline are the retriever's (document-level nDCG@10 and the rest).
- Both sides rerank the SAME candidates: the first stage as serving runs it now (the knowledge
  base's retrieval mode and live retriever, no reranker), its top `rerank_top_n` chunks per
  query. A side's ranking is those chunks in its reranker's order, each document at its best
  chunk, up to RANK_CUTOFF documents. So the comparison isolates the reranker.
- The baseline is the live reranker version, else no reranker: the first stage's own order
  (named "no reranker (<first stage version>)").

Generator
- Only held-out examples with a gold answer are scored.
- Both generators get the SAME passages: the example's retrieved passages as the turn logged
  them (rank order, at most ANSWER_PASSAGES = 5), or its relevant passages when it had none
  retrieved (imported judgments). So the comparison isolates the generator from the retriever.
- Both are asked as serving asks them: the question as the user asked it, after the
  conversation's earlier messages as the turn stored them, within serving's history budget
  (RAGLOOP_CHAT_HISTORY_TOKENS; nothing for a turn on its own).
- Figures: SQuAD exact match and token F1 against the gold answer, with passage citations like
  [1] left out of the answer first (curators' gold answers carry none); groundedness, the share of
  answer tokens found in the supplied passages (titles included, as the prompt shows them);
  and, when the backend can score text (the local `hf` one), the gold answer's mean per-token
  log-likelihood given the history and each supplied passage in turn, averaged over the
  passages (RA-DIT's one-chunk-at-a-time conditioning, as LM-ft trains and LSR scores), else None.
  Headline (per-query delta): token F1.
- The baseline is the live generator version, else the knowledge base's configured generator.

Honest held-out data: a candidate is scored only on held-out examples whose query (normalised,
rag.datasets.split_key) no version in its lineage (itself, its parent, and so on) trained on.
With the default snapshot such examples are left out and counted (`heldout_left_out`); a
snapshot named by the caller whose held-out part overlaps that training data is refused with
the overlap named. Every metric's candidate-minus-baseline change carries a paired bootstrap
95% interval over queries (seeded, so the same evaluation gives the same interval).

If the candidate itself is live, the baseline is the base model (comparing a version with itself
says nothing). All retrieval and generation happen before anything is written; the evaluation,
its per-query rows and the candidate's headline metrics are then stored in one transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from knowledge.artifact_store import artifact_local_path
from knowledge.errors import Conflict, InvalidInput, UpstreamError
from knowledge.models import EmbeddingSpace, KnowledgeBase
from knowledge.selectors import RerankerChoice, passages_rerank, passages_retrieve, passages_search
from knowledge.services.knowledge_bases import BASE_RETRIEVER_VERSION

# One loaded model per process, shared with serving.
from knowledge.services.turns import generator_load as cached_generator
from rag.datasets import split_key
from rag.generation import ContextPassage, GeneratorError
from rag.metrics import answer_report, paired_bootstrap_interval, retrieval_report
from training.models import (
    Component,
    DatasetSnapshot,
    Evaluation,
    EvaluationQueryResult,
    EvaluationSet,
    ModelVersion,
    SnapshotExample,
)
from training.services.snapshots import history_as_served
from training.services.versions import model_version_verify

RANK_CUTOFF = 10
RECALL_KS = (1, 5, 10)
CHUNKS_PER_QUERY = 20
ANSWER_PASSAGES = 5

RETRIEVER_METRICS = (*(f"recall@{k}" for k in RECALL_KS), f"mrr@{RANK_CUTOFF}", f"ndcg@{RANK_CUTOFF}")
GENERATOR_METRICS = ("exact_match", "f1", "groundedness", "answer_log_likelihood")
HEADLINE_METRIC = {
    Component.RETRIEVER: f"ndcg@{RANK_CUTOFF}", Component.GENERATOR: "f1", Component.RERANKER: f"ndcg@{RANK_CUTOFF}",
}  # fmt: skip
# Passage citations as the generators write them ([1], [1, 3]); the same markers rag.metrics
# leaves out of groundedness.
_CITATION = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")


@dataclass(frozen=True)
class RetrieverUnderTest:
    name: str
    version: ModelVersion | None
    space: EmbeddingSpace
    query_model_reference: str


@dataclass(frozen=True)
class RerankerUnderTest:
    """A reranker version, or none (reranker None: the first stage's own order)."""

    name: str
    version: ModelVersion | None
    reranker: RerankerChoice | None


@dataclass(frozen=True)
class GeneratorUnderTest:
    name: str
    version: ModelVersion | None
    generator: Any


@dataclass(frozen=True)
class _Scored:
    """One side's figures: means over the scored queries and per-query figures."""

    metrics: dict[str, Any]
    per_query: dict[str, dict[str, Any]]


# --- choosing what is compared --------------------------------------------------------------


def _snapshot_for(*, version: ModelVersion, snapshot: DatasetSnapshot | None) -> DatasetSnapshot:
    """The snapshot named, else the knowledge base's pinned evaluation set, else the version's
    training snapshot, else the latest."""
    if snapshot is None:
        pinned = EvaluationSet.objects.filter(knowledge_base_id=version.knowledge_base_id).select_related("snapshot").first()
        snapshot = pinned.snapshot if pinned is not None else None
    if snapshot is None:
        snapshot = version.snapshot
    if snapshot is None:
        snapshot = DatasetSnapshot.objects.filter(knowledge_base_id=version.knowledge_base_id).order_by("-created_at", "-pk").first()
    if snapshot is None:
        raise InvalidInput(f"Knowledge base has no dataset snapshot to evaluate {version.name!r} on; create one first.")
    if snapshot.knowledge_base_id != version.knowledge_base_id:
        raise InvalidInput(f"Snapshot {snapshot.pk} belongs to another knowledge base than {version.name!r}.")
    return snapshot


def _live_other_than(version: ModelVersion) -> ModelVersion | None:
    return (
        ModelVersion.objects.filter(
            knowledge_base_id=version.knowledge_base_id, component=version.component, status=ModelVersion.Status.LIVE
        )
        .exclude(pk=version.pk)
        .select_related("embedding_space")
        .first()
    )


def _candidate_retriever(version: ModelVersion) -> RetrieverUnderTest:
    space = version.embedding_space
    if space is None or space.status != EmbeddingSpace.Status.READY:
        raise Conflict(
            f"Retriever version {version.name!r} is not embedded yet (its embedding space is "
            f"{space.status if space else 'missing'}); evaluate it once its chunks are embedded."
        )
    return RetrieverUnderTest(version.name, version, space, version.query_model_reference or space.model_reference)


def _baseline_retriever(version: ModelVersion) -> RetrieverUnderTest:
    live = _live_other_than(version)
    if live is not None and live.embedding_space is not None:
        space = live.embedding_space
        return RetrieverUnderTest(live.name, live, space, live.query_model_reference or space.model_reference)
    knowledge_base = KnowledgeBase.objects.select_related("live_space").get(pk=version.knowledge_base_id)
    space = knowledge_base.embedding_spaces.filter(retriever_version=BASE_RETRIEVER_VERSION).first() or knowledge_base.live_space
    if space is None:
        raise InvalidInput(f"Knowledge base {knowledge_base.slug!r} has no base retriever to compare with.")
    return RetrieverUnderTest(space.retriever_version, None, space, space.model_reference)


def _load_generator(*, backend: str, model: str, adapter_path: str = "", name: str):
    if adapter_path:  # as serving resolves it (knowledge.services.turns.generator_for)
        adapter_path = str(artifact_local_path(reference=adapter_path))
    try:
        return cached_generator(backend, model, adapter_path)
    except ValueError as error:
        raise InvalidInput(f"Generator {name!r} cannot be built: {error}") from error


def _candidate_generator(version: ModelVersion) -> GeneratorUnderTest:
    if not version.generator_backend:
        raise InvalidInput(f"Generator version {version.name!r} names no generator backend.")
    generator = _load_generator(
        backend=version.generator_backend, model=version.generator_model,
        adapter_path=version.generator_adapter_path, name=version.name,
    )
    return GeneratorUnderTest(version.name, version, generator)


def _baseline_generator(version: ModelVersion) -> GeneratorUnderTest:
    live = _live_other_than(version)
    if live is not None:
        generator = _load_generator(
            backend=live.generator_backend, model=live.generator_model,
            adapter_path=live.generator_adapter_path, name=live.name,
        )
        return GeneratorUnderTest(live.name, live, generator)
    knowledge_base = version.knowledge_base
    generator = _load_generator(
        backend=knowledge_base.generator_backend, model=knowledge_base.generator_model, name=knowledge_base.generator_version
    )
    return GeneratorUnderTest(knowledge_base.generator_version, None, generator)


# --- retriever ------------------------------------------------------------------------------


def ranked_documents(*, retriever: RetrieverUnderTest, query: str) -> list[dict[str, Any]]:
    """The retriever's top RANK_CUTOFF documents for a query: {"id", "title", "score"}, best first.

    A document ranks at its best chunk (its first hit among the top CHUNKS_PER_QUERY chunks).
    """
    documents: list[dict[str, Any]] = []
    seen: set[str] = set()
    for chunk in passages_retrieve(
        space=retriever.space, query=query, k=CHUNKS_PER_QUERY, query_model_reference=retriever.query_model_reference
    ):
        if chunk.document_external_id in seen:
            continue
        seen.add(chunk.document_external_id)
        documents.append({"id": chunk.document_external_id, "title": chunk.title, "score": round(chunk.score, 4)})
        if len(documents) == RANK_CUTOFF:
            break
    return documents


def retrieval_qrels(examples: list[SnapshotExample]) -> dict[str, dict[str, float]]:
    """{example id: {document id: 1.0}} from the relevant passages; examples without any left out."""
    qrels: dict[str, dict[str, float]] = {}
    for example in examples:
        documents = {passage.get("document_id") for passage in example.relevant} - {None, ""}
        if documents:
            qrels[example.example_id] = {document: 1.0 for document in sorted(documents)}
    return qrels


def _score_retriever(retriever: RetrieverUnderTest, examples: list[SnapshotExample], qrels) -> _Scored:
    rankings = {e.example_id: ranked_documents(retriever=retriever, query=e.query) for e in examples if e.example_id in qrels}
    report = retrieval_report(
        runs={query_id: [d["id"] for d in documents] for query_id, documents in rankings.items()},
        qrels=qrels,
        ks=RECALL_KS,
        rank_cutoff=RANK_CUTOFF,
    )
    per_query = {
        query_id: {**figures, "documents": rankings[query_id]} for query_id, figures in report["per_query"].items()
    }
    return _Scored(metrics={"queries": report["queries"], **report["mean"]}, per_query=per_query)


# --- reranker -------------------------------------------------------------------------------


def _reranker_of(version: ModelVersion) -> RerankerUnderTest:
    if not version.artifact_path:
        raise InvalidInput(f"Reranker version {version.name!r} has no model folder.")
    return RerankerUnderTest(version.name, version, RerankerChoice(version.name, artifact_local_path(reference=version.artifact_path)))


def _baseline_reranker(version: ModelVersion, *, first_stage_version: str) -> RerankerUnderTest:
    live = _live_other_than(version)
    if live is not None:
        return _reranker_of(live)
    return RerankerUnderTest(f"no reranker ({first_stage_version})"[:100], None, None)


def first_stage_candidates(*, knowledge_base: KnowledgeBase, examples: list[SnapshotExample]):
    """(first stage version, {example id: its top rerank_top_n chunks}) as serving retrieves now, unreranked."""
    depth = max(1, min(knowledge_base.rerank_top_n, 100))
    candidates, version = {}, ""
    for example in examples:
        retrieval = passages_search(knowledge_base=knowledge_base, query=example.query, k=depth, rerank=False)
        candidates[example.example_id], version = retrieval.passages, retrieval.retriever_version
    return version, candidates


def _score_reranker(reranker: RerankerUnderTest, examples: list[SnapshotExample], qrels, candidates) -> _Scored:
    rankings: dict[str, list[dict[str, Any]]] = {}
    for example in examples:
        chunks = candidates[example.example_id]
        if reranker.reranker is not None and chunks:
            chunks = passages_rerank(reranker=reranker.reranker, query=example.query, candidates=chunks, k=len(chunks))
        documents, seen = [], set()
        for chunk in chunks:
            if chunk.document_external_id in seen:
                continue
            seen.add(chunk.document_external_id)
            documents.append({"id": chunk.document_external_id, "title": chunk.title, "score": round(chunk.score, 4)})
            if len(documents) == RANK_CUTOFF:
                break
        rankings[example.example_id] = documents
    report = retrieval_report(
        runs={query_id: [d["id"] for d in documents] for query_id, documents in rankings.items()},
        qrels=qrels,
        ks=RECALL_KS,
        rank_cutoff=RANK_CUTOFF,
    )
    per_query = {query_id: {**figures, "documents": rankings[query_id]} for query_id, figures in report["per_query"].items()}
    return _Scored(metrics={"queries": report["queries"], **report["mean"]}, per_query=per_query)


# --- generator ------------------------------------------------------------------------------


def answer_passages(example: SnapshotExample) -> list[ContextPassage]:
    """What both generators are given for an example (see the module docstring)."""
    passages = example.retrieved or example.relevant
    return [
        ContextPassage(text=p["text"], title=p.get("title") or "", source_id=p.get("document_id") or "")
        for p in passages[:ANSWER_PASSAGES]
    ]


def _gold_answer_log_likelihood(
    generator, *, query: str, history, passages: list[ContextPassage], answer: str
) -> float | None:
    score = getattr(generator, "answer_log_likelihood", None)
    if score is None:
        return None  # the backend cannot score text (extractive, OpenAI chat)
    try:
        values = [
            score(query=query, passage=passage, answer=answer, history=history) for passage in (passages or [None])
        ]
    except ValueError:
        return None  # the answer has no tokens for this model
    return sum(values) / len(values)


def _score_generator(generator: GeneratorUnderTest, examples: list[SnapshotExample]) -> _Scored:
    answers: dict[str, str] = {}
    likelihoods: dict[str, float | None] = {}
    contexts: dict[str, list[str]] = {}
    for example in examples:
        passages = answer_passages(example)
        contexts[example.example_id] = [f"{p.title}\n{p.text}" if p.title else p.text for p in passages]
        # As serving asks: the user's own question after the conversation so far.
        question, history = example.question or example.query, history_as_served(example.history)
        try:
            answers[example.example_id] = generator.generator.generate(
                query=question, passages=passages, history=history
            ).text
            likelihoods[example.example_id] = _gold_answer_log_likelihood(
                generator.generator, query=question, history=history, passages=passages,
                answer=example.gold_answer.strip(),
            )  # fmt: skip
        except (GeneratorError, ValueError) as error:
            raise UpstreamError(f"The generator {generator.name!r} failed on {example.example_id}: {error}") from error
    report = answer_report(
        predictions={query_id: " ".join(_CITATION.sub(" ", answer).split()) for query_id, answer in answers.items()},
        golds={example.example_id: [example.gold_answer] for example in examples},
        passages=contexts,
    )
    scored = [value for value in likelihoods.values() if value is not None]
    metrics = {
        "queries": report["queries"],
        **report["mean"],
        "answer_log_likelihood": sum(scored) / len(scored) if scored else None,
    }
    per_query = {
        query_id: {**figures, "answer_log_likelihood": likelihoods[query_id], "answer": answers[query_id]}
        for query_id, figures in report["per_query"].items()
    }
    return _Scored(metrics=metrics, per_query=per_query)


# --- the service ----------------------------------------------------------------------------


LINEAGE_OVERLAP_SHOWN = 3


def lineage_training_queries(*, version: ModelVersion) -> dict[str, str]:
    """{normalised query: name of the version that trained on it} over the version's lineage:
    the train split of its snapshot, its parent's, and so on up."""
    trained: dict[str, str] = {}
    seen: set[int] = set()
    current: ModelVersion | None = version
    while current is not None and current.pk not in seen:
        seen.add(current.pk)
        if current.snapshot_id is not None:
            queries = SnapshotExample.objects.filter(
                snapshot_id=current.snapshot_id, split=SnapshotExample.Split.TRAIN
            ).values_list("query", flat=True)
            for query in queries:
                trained.setdefault(split_key(query), current.name)
        current = current.parent
    return trained


def _honest_heldout(
    *, version: ModelVersion, snapshot: DatasetSnapshot, examples: list[SnapshotExample], named: bool
) -> tuple[list[SnapshotExample], int]:
    """The held-out examples no version in the lineage trained on, and how many were left out."""
    trained = lineage_training_queries(version=version)
    overlap = [e for e in examples if split_key(e.query) in trained]
    if overlap and named:
        versions = sorted({trained[split_key(e.query)] for e in overlap})
        shown = ", ".join(repr(e.query) for e in overlap[:LINEAGE_OVERLAP_SHOWN])
        raise InvalidInput(
            f"Snapshot {snapshot.pk}'s held-out part overlaps what {', '.join(versions)} trained on: "
            f"{len(overlap)} of its {len(examples)} held-out queries ({shown}"
            f"{', ...' if len(overlap) > LINEAGE_OVERLAP_SHOWN else ''}). Evaluate {version.name!r} on a snapshot "
            "whose held-out queries no version in its lineage trained on."
        )
    kept = [e for e in examples if split_key(e.query) not in trained]
    if not kept:
        raise InvalidInput(
            f"Every held-out query of snapshot {snapshot.pk} was trained on by {version.name!r} or its lineage; "
            "there is nothing honest to evaluate on."
        )
    return kept, len(overlap)


def _intervals(candidate: _Scored, baseline: _Scored, metric_names) -> dict[str, dict]:
    intervals = {}
    for name in metric_names:
        interval = paired_bootstrap_interval(
            {q: figures.get(name) for q, figures in candidate.per_query.items()},
            {q: figures.get(name) for q, figures in baseline.per_query.items()},
        )
        if interval is not None:
            intervals[name] = interval
    return intervals


def _delta(candidate: dict, baseline: dict, metric: str) -> float:
    return (candidate.get(metric) or 0.0) - (baseline.get(metric) or 0.0)


def model_version_evaluate(*, version: ModelVersion, snapshot: DatasetSnapshot | None = None) -> Evaluation:
    """Score `version` and the baseline on the held-out split of `snapshot` (default: the
    knowledge base's pinned evaluation set, else the version's training snapshot, else the
    knowledge base's latest) and store the result; the
    candidate's figures are also copied into `version.metrics`."""
    given = version
    version = ModelVersion.objects.select_related("knowledge_base", "embedding_space", "snapshot").get(pk=version.pk)
    if version.status == ModelVersion.Status.FAILED:
        raise Conflict(f"Model version {version.name!r} failed; there is nothing to evaluate.")
    named = snapshot is not None
    snapshot = _snapshot_for(version=version, snapshot=snapshot)
    examples = list(snapshot.examples.filter(split=SnapshotExample.Split.HELDOUT).order_by("pk"))
    if not examples:
        raise InvalidInput(f"Snapshot {snapshot.pk} has no held-out examples to evaluate on.")
    examples, left_out = _honest_heldout(version=version, snapshot=snapshot, examples=examples, named=named)
    model_version_verify(version=version)  # a tampered artifact is refused before it is loaded

    headline = HEADLINE_METRIC[version.component]
    if version.component == Component.RETRIEVER:
        candidate = _candidate_retriever(version)
        baseline = _baseline_retriever(version)
        qrels = retrieval_qrels(examples)
        if not qrels:
            raise InvalidInput(
                f"None of the {len(examples)} held-out examples of snapshot {snapshot.pk} has a relevant passage from a known document."
            )
        scored_examples = [e for e in examples if e.example_id in qrels]
        candidate_scores = _score_retriever(candidate, scored_examples, qrels)
        baseline_scores = _score_retriever(baseline, scored_examples, qrels)
        metric_names = RETRIEVER_METRICS
    elif version.component == Component.RERANKER:
        qrels = retrieval_qrels(examples)
        if not qrels:
            raise InvalidInput(
                f"None of the {len(examples)} held-out examples of snapshot {snapshot.pk} has a relevant passage from a known document."
            )
        scored_examples = [e for e in examples if e.example_id in qrels]
        candidate = _reranker_of(version)
        first_stage_version, candidates = first_stage_candidates(knowledge_base=version.knowledge_base, examples=scored_examples)
        baseline = _baseline_reranker(version, first_stage_version=first_stage_version)
        candidate_scores = _score_reranker(candidate, scored_examples, qrels, candidates)
        baseline_scores = _score_reranker(baseline, scored_examples, qrels, candidates)
        metric_names = RETRIEVER_METRICS
    else:
        scored_examples = [e for e in examples if e.gold_answer.strip()]
        if not scored_examples:
            raise InvalidInput(f"None of the {len(examples)} held-out examples of snapshot {snapshot.pk} has a gold answer.")
        candidate = _candidate_generator(version)
        baseline = _baseline_generator(version)
        candidate_scores = _score_generator(candidate, scored_examples)
        baseline_scores = _score_generator(baseline, scored_examples)
        metric_names = GENERATOR_METRICS

    with transaction.atomic():
        evaluation = Evaluation.objects.create(
            knowledge_base_id=version.knowledge_base_id,
            component=version.component,
            snapshot=snapshot,
            candidate=version,
            baseline=baseline.version,
            baseline_name=baseline.name,
            candidate_metrics=candidate_scores.metrics,
            baseline_metrics=baseline_scores.metrics,
            delta_intervals=_intervals(candidate_scores, baseline_scores, metric_names),
            heldout_left_out=left_out,
        )
        EvaluationQueryResult.objects.bulk_create(
            EvaluationQueryResult(
                evaluation=evaluation,
                example=example,
                candidate=candidate_scores.per_query[example.example_id],
                baseline=baseline_scores.per_query[example.example_id],
                delta=_delta(
                    candidate_scores.per_query[example.example_id], baseline_scores.per_query[example.example_id], headline
                ),
            )
            for example in scored_examples
            if example.example_id in candidate_scores.per_query
        )
        # Locked so that a concurrent write to the version's metrics (the training run adding
        # its own figures) is merged with, not overwritten.
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        metrics = {
            **locked.metrics,
            **{name: candidate_scores.metrics.get(name) for name in metric_names},
            "heldout_queries": candidate_scores.metrics["queries"],
        }
        ModelVersion.objects.filter(pk=version.pk).update(metrics=metrics)
    given.metrics = metrics
    return evaluation
