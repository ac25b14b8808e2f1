"""Retriever quality after training on curated labels: dev nDCG@10, recall@10 and MRR@10 of the
base retriever and of each training mode on BEIR SciFact, with training and re-embedding times.

In a database of its own: ingest the SciFact abstracts (all the documents the train qrels cite,
plus a seeded sample of the others up to --max-docs) and embed them in this process with the
embedding services; split the queries of qrels/train.tsv 80/20 into train and dev with a fixed
seed (the 300 BEIR test queries are never read); import the train part as curator labels through
`manage.py import_labels --beir-queries --beir-qrels`; freeze them in a dataset snapshot with no
held-out share; then train each mode with the training-run service (`training_run_start`, then
`training_run_execute` in this process), embed the corpus again for the full-mode candidate, and
score every retriever on the dev queries through `knowledge.selectors.passages_retrieve`, at the
document level (the top 20 chunks, each document at its best chunk's rank, 10 documents).

LSR needs a causal LM and gold answers, and SciFact labels have no answers (the service refuses
such a snapshot). Without --lm the LSR row is an ORACLE check: gold relevance stands in for the
LM's preference over each train query's top-k chunks, so it bounds what the LSR optimiser can do;
it is not an RA-DIT figure. With --lm, each chunk is scored by the LM's likelihood of the claim's
SciFact verdict ("supported" / "contradicted") where the claim has one.

    python bench/retriever_quality.py                      # 600 abstracts, the service's defaults
    python bench/retriever_quality.py --mined-negatives 1  # full mode about twice as fast on a CPU
    python bench/retriever_quality.py --modes contrastive --mined-negatives 1 --full-mined-check 4  # full mode's trade-off
    python bench/retriever_quality.py --max-docs 0 --keep  # the whole corpus
    python bench/retriever_quality.py --modes lexical,hybrid,hybrid-score  # retrieval modes only, no training
    python bench/retriever_quality.py --modes reranker     # base dense + a cross-encoder reranker trained on the labels
    python bench/retriever_quality.py --modes reranker --reranker-parameters loss=lambda,epochs=2,learning_rate=1e-4
    python bench/retriever_quality.py --modes stack        # query-only encoder, + hybrid, + a reranker trained over it
    python bench/retriever_quality.py --modes contrastive_query_only --query-only-variants epochs=5 learning_rate=1e-4

The serving modes (lexical: BM25 in PostgreSQL; hybrid: base dense and BM25 fused by RRF k=60;
hybrid-score: weighted min-max score fusion, alpha 0.5) train nothing: they are scored through
`knowledge.selectors.passages_search` on the same dev queries, with the serving latency per query.

The reranker mode trains a cross-encoder (component "reranker", mode "cross_encoder", the
service's defaults: 1 epoch, batch 16, lr 5e-5, 4 mined negatives from the first stage's top 20,
from the packaged MiniLM with a fresh head) through the training-run service on the same
snapshot, promotes it, and scores base dense + the live reranker (the first stage's top 50
chunks reranked, 20 kept) through `passages_search`, dev queries only: reranking every train
query's 50 candidates would cost as much again.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from bench.harness import (  # noqa: E402
    SCIFACT,
    STARTED,
    RunWatcher,
    SciFact,
    clock,
    embed_space,
    load_scifact,
    pick_documents,
    say,
    write_beir_files,
)

CURATOR = "bench-scifact"
SLUG = "scifact-quality"
CHUNKS_PER_QUERY = 20  # as training.services.evaluation: enough chunks to fill 10 documents
RANK_CUTOFF = 10
SERVICE_MODES = ("contrastive", "contrastive_query_only")
# Retrieval modes over the base retriever (docs/retrieval.md): label -> (mode, fusion).
SERVING_MODES = {"lexical": ("lexical", "rrf"), "hybrid": ("hybrid", "rrf"), "hybrid-score": ("hybrid", "score")}
# "stack": the best mode put together - the query-only encoder trained and promoted, hybrid over
# it, and a reranker trained with it as the first stage, each row scored on its own.
MODES = (*SERVICE_MODES, "lsr", *SERVING_MODES, "reranker", "stack")
# SciFact's evidence labels, as the answer an LM is asked to produce with --lm.
VERDICT_ANSWERS = {"SUPPORT": "The claim is supported.", "CONTRADICT": "The claim is contradicted."}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SCIFACT, help="BEIR SciFact folder (default: %(default)s)")
    parser.add_argument("--max-docs", type=int, default=600,
                        help="documents to ingest: every document the train qrels cite, then a seeded sample of the "
                             "others; 0 = the whole corpus (5,183) (default: %(default)s)")
    parser.add_argument("--train-queries", type=int, default=0,
                        help="import only this many of the train queries (a seeded sample; 0 = all), for quick runs")
    parser.add_argument("--dev-share", type=float, default=0.2, help="share of the train-qrels queries held out as dev (default: %(default)s)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, from %(default)s")
    parser.add_argument("--epochs", type=int, default=None,
                        help="contrastive epochs (default: the service's, 3); LSR always uses the service's (1)")
    parser.add_argument("--batch-size", type=int, default=None, help="contrastive batch size (default: the service's, 16)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="contrastive learning rate (default: the service's, 5e-5)")
    parser.add_argument("--mined-negatives", type=int, default=None,
                        help="mined negatives per query for the contrastive modes: the base retriever's top --top-k "
                             "chunks outside the documents judged relevant (default: the service's, 4). In full mode "
                             "each one costs a chunk's forward and backward pass per pair")
    parser.add_argument("--mined-check", type=int, default=0,
                        help="also train contrastive_query_only through the service with this many mined negatives "
                             "per query (4 is the service's default), to compare; 0 = skip (default: %(default)s)")
    parser.add_argument("--full-mined-check", type=int, default=0,
                        help="also train contrastive (full mode) through the service with this many mined negatives "
                             "per query, to weigh full mode's speed against its quality; 0 = skip (default: %(default)s)")
    parser.add_argument("--query-only-variants", nargs="*", default=[], metavar="NAME=VALUE[,NAME=VALUE]",
                        help="extra contrastive_query_only rows, trained first, each with these run parameters over the "
                             "others (e.g. epochs=5 learning_rate=1e-4): cheap, as the frozen side is read, not encoded")
    parser.add_argument("--reranker-parameters", type=run_parameters_from_text, default={}, metavar="NAME=VALUE[,NAME=VALUE]",
                        help="run parameters of the reranker (modes reranker and stack) over the service's defaults, "
                             "e.g. loss=lambda,epochs=2")
    parser.add_argument("--top-k", type=int, default=None, help="chunks the miner looks at per query (default: the service's, 10)")
    parser.add_argument("--lsr-top-k", type=int, default=5, help="chunks per query for LSR, as the service (default: %(default)s)")
    parser.add_argument("--lsr-batch-size", type=int, default=8, help="(default: %(default)s, as the service)")
    parser.add_argument("--lsr-learning-rate", type=float, default=2e-5, help="(default: %(default)s, as the service)")
    parser.add_argument("--lsr-epochs", type=int, default=1, help="(default: %(default)s, as the service)")
    parser.add_argument("--lm", type=Path, default=None,
                        help="a local Hugging Face causal LM folder to score chunks for LSR; without it the LSR row is "
                             "the oracle check described above")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: %(default)s: on 2 cores shared with other work, one thread "
                             "encodes a single query ~10x faster than two and batches about as fast)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures (and per-query nDCG@10) here")
    parser.add_argument("--database", default="ragloop_bench_quality",
                        help="database created on the embedded server (ignored when DATABASE_URL is set)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database and the trained models afterwards")
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if args.lm is not None and not args.lm.is_dir():
        parser.error(f"--lm {args.lm}: no such folder")
    return args


# --- output -------------------------------------------------------------------------------

def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


# --- the data -----------------------------------------------------------------------------


def split_queries(qrels: dict, *, dev_share: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, dev) query ids: a seeded shuffle of the train-qrels queries, the first share is dev."""
    ids = sorted(qrels, key=lambda q: (len(q), q))
    random.Random(seed).shuffle(ids)
    dev_count = round(len(ids) * dev_share)
    return sorted(ids[dev_count:], key=int), sorted(ids[:dev_count], key=int)


# --- evaluation ---------------------------------------------------------------------------


@dataclass
class Scores:
    mean: dict[str, float]
    per_query: dict[str, float]  # nDCG@10 by query id
    latencies_ms: list[float] = field(default_factory=list)  # per query, the selector call (encoding included)

    def latency(self) -> str:
        if not self.latencies_ms:
            return "-"
        return f"{np.median(self.latencies_ms):.1f} / {np.percentile(self.latencies_ms, 95):.1f} ms"


def evaluate(
    *, space, query_model_reference: str | None, data: SciFact, query_ids: list[str], label: str, search=None
) -> Scores:
    """Document-level figures on the given queries through the real retrieval selector (or
    `search(text, k)`, a retrieval mode's), timing each query."""
    from knowledge.selectors import passages_retrieve
    from rag.metrics import retrieval_report

    if search is None:
        def search(text: str, k: int):
            return passages_retrieve(space=space, query=text, k=k, query_model_reference=query_model_reference)

    runs, latencies = {}, []
    started = time.perf_counter()
    for query_id in query_ids:
        asked = time.perf_counter()
        chunks = search(data.queries[query_id]["text"], CHUNKS_PER_QUERY)
        latencies.append((time.perf_counter() - asked) * 1000)
        # rag.metrics counts a repeated id once, at its first (best) rank.
        runs[query_id] = [chunk.document_external_id for chunk in chunks]
    report = retrieval_report(
        runs=runs, qrels={q: data.qrels[q] for q in query_ids}, ks=(1, 5, RANK_CUTOFF), rank_cutoff=RANK_CUTOFF
    )
    say(f"  {label}: nDCG@10 {report['mean']['ndcg@10']:.4f} on {report['queries']} queries "
        f"({time.perf_counter() - started:.0f} s)")
    return Scores(
        mean=report["mean"], per_query={q: f["ndcg@10"] for q, f in report["per_query"].items()}, latencies_ms=latencies
    )


def paired_delta(candidate: Scores, base: Scores, *, seed: int, resamples: int = 10_000) -> tuple[float, float, float, int, int]:
    """Mean nDCG@10 change with a paired bootstrap 95% interval, and queries improved / worse."""
    # The interval the review page shows.
    from rag.metrics import paired_bootstrap_interval

    ids = sorted(base.per_query)
    deltas = np.array([candidate.per_query[q] - base.per_query[q] for q in ids])
    interval = paired_bootstrap_interval(
        {q: candidate.per_query[q] for q in ids}, base.per_query, seed=seed, resamples=resamples
    )
    return interval["delta"], interval["low"], interval["high"], int((deltas > 1e-9).sum()), int((deltas < -1e-9).sum())


# --- training through the service ---------------------------------------------------------


@dataclass
class ModeResult:
    mode: str
    path: str
    scores: Scores | None = None  # dev
    train_scores: Scores | None = None  # the train queries it learned from
    training_seconds: float | None = None
    reembedding_seconds: float | None = None
    reembedded_chunks: int = 0
    examples: int = 0
    steps: int = 0
    note: str = ""
    parameters: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)


def train_with_service(
    *, knowledge_base, snapshot, mode: str, label: str, parameters: dict, data: SciFact, split
) -> ModeResult:
    from training.models import ModelVersion, TrainingRun
    from training.services.runs import training_run_execute, training_run_start

    run = training_run_start(knowledge_base=knowledge_base, component="retriever", mode=mode, parameters=parameters, snapshot=snapshot)
    say(f"{label}: training run #{run.pk} ({mode}) queued with {json.dumps(run.parameters, sort_keys=True)}; "
        "executing it in this process")
    started = time.perf_counter()
    with RunWatcher(run.pk, label=label):
        outcome = training_run_execute(run_id=run.pk)
    seconds = time.perf_counter() - started
    run.refresh_from_db()
    if run.status != TrainingRun.Status.SUCCEEDED:
        raise RuntimeError(f"training run #{run.pk} ({mode}) ended {outcome}: {run.error}\n{run.log[-3000:]}")
    version = ModelVersion.objects.select_related("embedding_space").get(training_run=run)
    trainer = version.parameters.get("trainer", {})
    say(f"{label}: trained in {clock(seconds)} ({len(version.training_curve)} steps, {trainer.get('pairs')} pairs); "
        f"candidate {version.name}, loss {curve_summary(version.training_curve)}")
    result = ModeResult(
        mode=label, path=f"service ({mode})", training_seconds=seconds, examples=trainer.get("pairs") or trainer.get("examples") or 0,
        steps=len(version.training_curve), parameters=version.parameters, curve=version.training_curve,
    )
    space = version.embedding_space
    if mode == "contrastive":
        say(f"{label}: embedding the corpus with the new encoder into space {space.retriever_version}")
        result.reembedded_chunks, result.reembedding_seconds = embed_space(space, label=f"{label} re-embedding")
        space.refresh_from_db()
    return evaluate_both(result, space=space, query_model_reference=version.query_model_reference or None, data=data, split=split)


def evaluate_both(
    result: ModeResult, *, space, query_model_reference: str | None, data: SciFact, split, search=None
) -> ModeResult:
    """Dev figures, and the same figures on the train queries: a mode that does not improve even
    the queries it trained on has an optimisation problem, not a generalisation one."""
    result.scores = evaluate(space=space, query_model_reference=query_model_reference, data=data,
                             query_ids=split.dev, label=f"{result.mode} dev", search=search)
    result.train_scores = evaluate(space=space, query_model_reference=query_model_reference, data=data,
                                   query_ids=split.train, label=f"{result.mode} train", search=search)
    return result


def evaluate_serving_mode(*, knowledge_base, label: str, data: SciFact, split) -> ModeResult:
    """A retrieval mode over the base retriever, through the selector /retrieve and /ask use."""
    from django.conf import settings

    from knowledge.selectors import passages_search

    mode, fusion = SERVING_MODES[label]
    settings.RAGLOOP_HYBRID_FUSION = fusion

    def search(text: str, k: int):
        return passages_search(knowledge_base=knowledge_base, query=text, k=k, mode=mode).passages

    version = passages_search(knowledge_base=knowledge_base, query="warm-up", k=1, mode=mode).retriever_version
    say(f"{label}: retrieval mode {mode}, retriever version {version!r}")
    result = ModeResult(mode=label, path=f"retrieval mode ({version})")
    return evaluate_both(result, space=None, query_model_reference=None, data=data, split=split, search=search)


def evaluate_stack(*, knowledge_base, snapshot, parameters: dict, args, data: SciFact, split) -> list[ModeResult]:
    """The best mode put together, each layer its own row: a query-only encoder trained through
    the service (contrastive_query_only with the run's parameters) and promoted; hybrid (RRF)
    over it; a reranker trained with it as the live first stage (its mined negatives come from
    it), promoted; then dense + reranker and hybrid + reranker. Dev queries only for the rows
    with a reranker, as the reranker mode."""
    from django.conf import settings

    from knowledge.selectors import passages_search
    from training.models import ModelVersion
    from training.services.versions import model_version_promote

    trained = train_with_service(
        knowledge_base=knowledge_base, snapshot=snapshot, mode="contrastive_query_only", label="stack: query-only",
        parameters=parameters, data=data, split=split,
    )  # fmt: skip
    version = ModelVersion.objects.filter(knowledge_base=knowledge_base, component="retriever",
                                          mode="contrastive_query_only").latest("created_at")  # fmt: skip
    model_version_promote(version=version, reason="bench", actor_name="bench")
    say(f"stack: {version.name} is live")
    settings.RAGLOOP_HYBRID_FUSION = "rrf"

    def searcher(mode: str):
        return lambda text, k: passages_search(knowledge_base=knowledge_base, query=text, k=k, mode=mode).passages

    hybrid = ModeResult(mode="query-only + hybrid (RRF)", path=f"retrieval mode ({version.name})")
    hybrid.scores = evaluate(space=None, query_model_reference=None, data=data, query_ids=split.dev,
                             label=hybrid.mode + " dev", search=searcher("hybrid"))  # fmt: skip
    reranked = train_reranker_with_service(
        knowledge_base=knowledge_base, snapshot=snapshot, args=args, data=data, split=split, label="query-only + reranker"
    )
    both = ModeResult(mode="query-only + hybrid (RRF) + reranker", path="live versions", note=reranked.note)
    both.scores = evaluate(space=None, query_model_reference=None, data=data, query_ids=split.dev,
                           label=both.mode + " dev", search=searcher("hybrid"))  # fmt: skip
    return [trained, hybrid, reranked, both]


def train_reranker_with_service(*, knowledge_base, snapshot, args, data: SciFact, split, label: str = "base + reranker") -> ModeResult:
    """A reranker trained from the snapshot's labels through the service, promoted, then the live
    dense retriever + the live reranker scored on the dev queries through passages_search."""
    from knowledge.selectors import passages_search
    from training.models import ModelVersion, TrainingRun
    from training.services.runs import training_run_execute, training_run_start
    from training.services.versions import model_version_promote

    if args.reranker_parameters:
        label += " (" + ", ".join(f"{name} {value}" for name, value in args.reranker_parameters.items()) + ")"
    run = training_run_start(
        knowledge_base=knowledge_base, component="reranker", mode="cross_encoder",
        parameters={"seed": args.seed, **args.reranker_parameters}, snapshot=snapshot,
    )
    say(f"reranker: training run #{run.pk} queued with {json.dumps(run.parameters, sort_keys=True)}; executing it in this process")
    started = time.perf_counter()
    with RunWatcher(run.pk, label="reranker"):
        outcome = training_run_execute(run_id=run.pk)
    seconds = time.perf_counter() - started
    run.refresh_from_db()
    if run.status != TrainingRun.Status.SUCCEEDED:
        raise RuntimeError(f"training run #{run.pk} (cross_encoder) ended {outcome}: {run.error}\n{run.log[-3000:]}")
    version = ModelVersion.objects.get(training_run=run)
    pairs = version.parameters.get("trainer", {}).get("pairs", {})
    say(f"reranker: trained in {clock(seconds)} ({len(version.training_curve)} steps, pairs {pairs}); candidate {version.name}, "
        f"loss {curve_summary(version.training_curve)}")
    model_version_promote(version=version, reason="bench", actor_name="bench")

    def search(text: str, k: int):
        return passages_search(knowledge_base=knowledge_base, query=text, k=k, mode="dense").passages

    result = ModeResult(
        mode=label, path="service (cross_encoder)", training_seconds=seconds,
        examples=sum(v for key, v in pairs.items() if key != "mined_dropped_as_positive"), steps=len(version.training_curve),
        parameters=version.parameters, curve=version.training_curve,
        note=f"reranker pairs {pairs}; first stage top {knowledge_base.rerank_top_n} chunks reranked",
    )  # fmt: skip
    result.scores = evaluate(space=None, query_model_reference=None, data=data, query_ids=split.dev,
                             label=f"{label} dev", search=search)
    return result


def run_parameters_from_text(text: str) -> dict:
    """`name=value,name=value` as run parameters: a value is JSON where it reads as JSON
    (numbers, true/false), else text (loss=lambda)."""

    def value(raw: str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    return {name: value(raw) for name, raw in (item.split("=", 1) for item in text.split(",") if item)}


def curve_summary(curve: list[dict]) -> str:
    if not curve:
        return "-"
    losses = [point["loss"] for point in curve]
    tenth = max(1, len(losses) // 10)
    return f"{np.mean(losses[:tenth]):.3f} (first tenth) -> {np.mean(losses[-tenth:]):.3f} (last tenth)"


# --- mined negatives: what the service's miner hands the trainer --------------------------


class _QuietReporter:
    def raise_if_stopped(self) -> None:
        pass

    def tick(self, done: int, total: int) -> None:
        pass


def mined_negative_check(*, knowledge_base, snapshot, top_k: int, limit: int) -> dict:
    """Runs the service's miner on the snapshot's train examples and counts the mined negatives
    that are chunks of a document the query's labels judged relevant (false negatives)."""
    from knowledge.models import Chunk
    from knowledge.selectors import retriever_for
    from training.services.runs import inputs
    from training.services.snapshots import snapshot_dataset_examples

    examples = [e for e in snapshot_dataset_examples(snapshot=snapshot, split="train") if e.relevant]
    live = retriever_for(knowledge_base=knowledge_base)
    mined = inputs.mine_negatives(examples=examples, live=live, top_k=top_k, limit=limit, reporter=_QuietReporter())
    documents_of_text: dict[str, set[str]] = {}
    for text, document in Chunk.objects.filter(knowledge_base=knowledge_base).values_list("text", "document__external_id"):
        documents_of_text.setdefault(text, set()).add(document)
    relevant_documents = {}
    for example in examples:
        relevant_documents.setdefault(example.query, set()).update(p.document_id for p in example.relevant)
    total = false = queries_hit = 0
    for query, negatives in mined.items():
        bad = [text for text in negatives if documents_of_text.get(text, set()) & relevant_documents[query]]
        total += len(negatives)
        false += len(bad)
        queries_hit += bool(bad)
    return {"limit": limit, "queries": len(mined), "negatives": total, "from_relevant_documents": false, "queries_affected": queries_hit}


# --- LSR ----------------------------------------------------------------------------------


def train_lsr_direct(*, knowledge_base, snapshot, args, data: SciFact, split, output: Path) -> ModeResult:
    """LSR with the rag trainer called directly, inputs built as train_lsr in
    training.services.runs.trainers.retriever builds them (the live retriever's top-k chunks per
    train query), scored by --lm or the oracle."""
    from knowledge.selectors import passages_retrieve, retriever_for
    from knowledge.services.knowledge_bases import retriever_model_path
    from rag.training import retriever as retriever_training
    from training.services.snapshots import snapshot_dataset_examples

    live = retriever_for(knowledge_base=knowledge_base)
    base_model = retriever_model_path(live.space.model_reference)
    examples = [e for e in snapshot_dataset_examples(snapshot=snapshot, split="train") if e.relevant]
    verdicts = {row["text"]: verdict_answer(row) for row in data.queries.values()}
    started = time.perf_counter()
    lsr_examples, scores, dropped = [], [], 0
    if args.lm is not None:
        from rag.generation import ContextPassage, HFGenerator

        language_model = HFGenerator(model_path=args.lm)
    for done, example in enumerate(examples, start=1):
        chunks = passages_retrieve(space=live.space, query=example.query, k=args.lsr_top_k, query_model_reference=live.query_model_reference)
        if args.lm is None:
            relevant = {p.document_id for p in example.relevant}
            row = [0.0 if chunk.document_external_id in relevant else -1.0 for chunk in chunks]
            if len(set(row)) < 2:  # all or none relevant: the oracle prefers nothing
                dropped += 1
                continue
            answer = ""
        else:
            answer = verdicts.get(example.query, "")
            if not answer:
                dropped += 1
                continue
            row = [
                language_model.answer_log_likelihood(query=example.query, passage=ContextPassage(text=c.text), answer=answer)
                for c in chunks
            ]
        lsr_examples.append(retriever_training.LsrTrainingExample(query=example.query, chunks=[c.text for c in chunks], answer=answer))
        scores.append(row)
        if done % 100 == 0:
            say(f"  lsr: prepared {done}/{len(examples)} train queries")
    scorer = f"LM {args.lm}" if args.lm else "oracle (gold relevance)"
    why = "no single SciFact verdict" if args.lm else "all or none of their top chunks relevant"
    say(f"lsr: {len(lsr_examples)} train queries scored by the {scorer}, {dropped} left out ({why}); "
        "training the query encoder")
    if not lsr_examples:
        raise RuntimeError(f"LSR has no train query to learn from: all {dropped} were left out ({why})")
    progress = step_printer("lsr")
    result = retriever_training.train_lsr(
        base_model_path=base_model,
        examples=lsr_examples,
        lm_log_likelihoods=scores,
        output_path=output,
        query_only=True,
        epochs=args.lsr_epochs,
        batch_size=args.lsr_batch_size,
        learning_rate=args.lsr_learning_rate,
        seed=args.seed,
        progress=progress,
    )
    seconds = time.perf_counter() - started
    query_encoder, _ = retriever_training.load_trained_retriever(output)
    say(f"lsr: trained in {clock(seconds)} ({result.steps} steps), loss {curve_summary(result.training_curve)}")
    result = ModeResult(
        mode="lsr" if args.lm else "lsr (oracle LM)", path=f"direct (rag.training.retriever.train_lsr), {scorer}",
        training_seconds=seconds, examples=len(lsr_examples), steps=result.steps, parameters=result.parameters,
        curve=result.training_curve,
        note="" if args.lm else "gold relevance stands in for the LM: a check of the LSR optimiser, not an RA-DIT figure",
    )
    return evaluate_both(result, space=live.space, query_model_reference=str(query_encoder), data=data, split=split)


def verdict_answer(query_row: dict) -> str:
    """The claim's SciFact verdict as a sentence ({document id: [{"sentences", "label"}]} in its
    metadata); "" when it has none or its evidence disagrees."""
    labels = {
        evidence.get("label")
        for evidences in (query_row.get("metadata") or {}).values()
        for evidence in (evidences if isinstance(evidences, list) else [evidences])
        if isinstance(evidence, dict)
    }
    return VERDICT_ANSWERS.get(labels.pop(), "") if len(labels) == 1 else ""


def step_printer(label: str, every: float = 20.0):
    state = {"last": -math.inf, "started": time.perf_counter()}

    def progress(fraction: float, metrics: dict) -> None:
        now = time.perf_counter()
        if now - state["last"] >= every or fraction >= 1.0:
            state["last"] = now
            elapsed = now - state["started"]
            left = elapsed / fraction * (1 - fraction) if fraction > 0 else 0
            say(f"  {label}: step {metrics.get('step')}, loss {metrics.get('loss', float('nan')):.4f}, "
                f"{fraction:.0%}, about {clock(left)} left")

    return progress


# --- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    train: list[str]
    dev: list[str]


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="ragloop-bench-quality-"))
    # Trained models go to a folder of this run: run ids restart at 1 in a fresh database, and
    # the service refuses to write into an existing run folder of another database.
    os.environ["RAGLOOP_ARTIFACTS_DIR"] = str(work / "artifacts")
    database = harness.django_setup(database_name=args.database)

    harness.broker_in_memory()  # no worker runs here

    import torch
    from django.core.management import call_command

    from knowledge.services.documents import documents_ingest
    from knowledge.services.knowledge_bases import knowledge_base_create
    from training.services.runs import MODE_PARAMETERS
    from training.services.snapshots import dataset_snapshot_create

    # Settings given on the command line apply to every contrastive mode; the others are each
    # mode's own service defaults (query-only's differ from full mode's), shown as full mode's.
    given = {name: getattr(args, name) for name in ("epochs", "batch_size", "learning_rate", "mined_negatives", "top_k")}
    given = {name: value for name, value in given.items() if value is not None}
    args.query_only_settings = {**MODE_PARAMETERS["contrastive_query_only"], **given}
    for name in ("epochs", "batch_size", "learning_rate", "mined_negatives", "top_k"):
        if getattr(args, name) is None:
            setattr(args, name, MODE_PARAMETERS["contrastive"][name])
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(harness.table("Environment", ["", ""], harness.environment()))
    results: list[ModeResult] = []
    try:
        data = load_scifact(args.data)
        train_ids, dev_ids = split_queries(data.qrels, dev_share=args.dev_share, seed=args.seed)
        if 0 < args.train_queries < len(train_ids):
            train_ids = sorted(random.Random(args.seed).sample(train_ids, args.train_queries), key=int)
        split = Split(train=train_ids, dev=dev_ids)
        documents = pick_documents(data, max_docs=args.max_docs, seed=args.seed)
        cited = {d for judged in data.qrels.values() for d in judged}
        say(f"SciFact: {len(data.documents)} abstracts, {len(data.qrels)} train-qrels queries -> {len(train_ids)} train / "
            f"{len(dev_ids)} dev (seed {args.seed}); ingesting {len(documents)} abstracts ({len(cited)} cited by the qrels)")

        knowledge_base = knowledge_base_create(slug=SLUG, name="SciFact retriever quality")
        started = time.perf_counter()
        ingest = documents_ingest(knowledge_base=knowledge_base, documents=documents)
        say(f"ingested: {ingest.created} documents, {ingest.chunks_created} chunks in {time.perf_counter() - started:.0f} s; "
            "embedding them")
        base_space = knowledge_base.live_space
        base_chunks, base_embed_seconds = embed_space(base_space, label="base embedding")
        say(f"base space: {base_chunks} chunks in {clock(base_embed_seconds)} ({base_chunks / base_embed_seconds:.1f} chunks/s)")

        queries_path, qrels_path = write_beir_files(data, train_ids, work)
        out = io.StringIO()
        started = time.perf_counter()
        call_command("import_labels", SLUG, beir_queries=str(queries_path), beir_qrels=str(qrels_path),
                     curator=CURATOR, create_curators=True, json=True, stdout=out)
        imported = json.loads(out.getvalue())
        say(f"labels imported in {time.perf_counter() - started:.0f} s: {imported['labels_created']} labels on "
            f"{imported['turns_created']} turns ({imported['passages_added']} judged passages)")
        snapshot = dataset_snapshot_create(knowledge_base=knowledge_base, heldout_share=0.0)
        say(f"snapshot #{snapshot.pk}: {snapshot.train_count} train / {snapshot.heldout_count} held-out examples")

        base = evaluate_both(ModeResult(mode="base", path="-"), space=base_space, query_model_reference=None, data=data, split=split)
        results.append(base)

        negatives_check = None
        if any(m in args.modes for m in SERVICE_MODES) or args.mined_check:
            # What the service's miner hands the trainer, at its default count or the one asked for.
            limit = max(args.mined_negatives, args.mined_check, MODE_PARAMETERS["contrastive"]["mined_negatives"])
            negatives_check = mined_negative_check(knowledge_base=knowledge_base, snapshot=snapshot, top_k=args.top_k, limit=limit)
            say(f"the service's miner (top {args.top_k}, up to {limit} per query): "
                f"{negatives_check['from_relevant_documents']} of {negatives_check['negatives']} mined negatives are chunks "
                f"of a document judged relevant for their query ({negatives_check['queries_affected']} of "
                f"{negatives_check['queries']} queries)")

        parameters = {**given, "seed": args.seed}
        planned = [(mode, mode, parameters) for mode in args.modes]
        for variant in reversed(args.query_only_variants):
            overrides = run_parameters_from_text(variant)
            planned.insert(0, (f"contrastive_query_only, {variant}", "contrastive_query_only", {**parameters, **overrides}))
        if args.mined_check:
            label = f"contrastive_query_only, {args.mined_check} mined"
            planned.append((label, "contrastive_query_only", {**parameters, "mined_negatives": args.mined_check}))
        if args.full_mined_check:
            label = f"contrastive (full), {args.full_mined_check} mined"
            planned.append((label, "contrastive", {**parameters, "mined_negatives": args.full_mined_check}))
        for label, mode, run_parameters in planned:
            if mode == "reranker":
                results.append(train_reranker_with_service(
                    knowledge_base=knowledge_base, snapshot=snapshot, args=args, data=data, split=split
                ))
            elif mode == "stack":
                results.extend(evaluate_stack(
                    knowledge_base=knowledge_base, snapshot=snapshot, parameters=run_parameters, args=args, data=data,
                    split=split,
                ))
            elif mode in SERVING_MODES:
                results.append(evaluate_serving_mode(knowledge_base=knowledge_base, label=mode, data=data, split=split))
            elif mode in SERVICE_MODES:
                results.append(train_with_service(
                    knowledge_base=knowledge_base, snapshot=snapshot, mode=mode, label=label, parameters=run_parameters,
                    data=data, split=split,
                ))
            else:
                results.append(train_lsr_direct(
                    knowledge_base=knowledge_base, snapshot=snapshot, args=args, data=data, split=split, output=work / "lsr"
                ))

        total = time.perf_counter() - STARTED
        print_report(args=args, split=split, documents=documents, base_chunks=base_chunks,
                     base_embed_seconds=base_embed_seconds, total=total, results=results, negatives_check=negatives_check)
        if args.json:
            figures = {
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "documents": len(documents), "chunks": base_chunks, "train_queries": len(train_ids),
                "dev_queries": len(dev_ids), "base_embedding_seconds": base_embed_seconds, "whole_run_seconds": total,
                "mined_negative_check": negatives_check,
                "modes": [
                    {"mode": r.mode, "path": r.path, "dev": r.scores.mean, "train": r.train_scores.mean if r.train_scores else None,
                     "training_seconds": r.training_seconds, "reembedding_seconds": r.reembedding_seconds,
                     "examples": r.examples, "steps": r.steps, "note": r.note, "parameters": r.parameters,
                     "dev_latency_ms": r.scores.latencies_ms,
                     "curve": r.curve, "dev_ndcg@10_per_query": r.scores.per_query}
                    for r in results
                ],
            }  # fmt: skip
            args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
            print(f"figures written to {args.json}")
    finally:
        if args.keep:
            print(f"\nKept database {database.name!r} (knowledge base {SLUG!r}) and the models in {work}.")
        else:
            shutil.rmtree(work, ignore_errors=True)
            if database.created:
                database.drop()
            else:
                from knowledge.models import KnowledgeBase

                KnowledgeBase.objects.filter(slug=SLUG).delete()


def print_report(*, args, split: Split, documents, base_chunks: int, base_embed_seconds: float, total: float,
                 results: list[ModeResult], negatives_check: dict | None) -> None:
    base = results[0]
    rows = []
    for result in results:
        mean = result.scores.mean
        delta = "-"
        if result is not base:
            change, low, high, better, worse = paired_delta(result.scores, base.scores, seed=args.seed)
            delta = f"{change:+.4f} [{low:+.4f}, {high:+.4f}] ({better} up / {worse} down)"
        rows.append([
            result.mode, result.path, f"{mean['ndcg@10']:.4f}", f"{mean['recall@10']:.4f}", f"{mean['mrr@10']:.4f}", delta,
            f"{result.train_scores.mean['ndcg@10']:.4f}" if result.train_scores else "-", minutes(result.training_seconds),
            f"{minutes(result.reembedding_seconds)} ({result.reembedded_chunks} chunks)" if result.reembedding_seconds else "-",
            f"{result.examples} / {result.steps}" if result.steps else "-",
            result.scores.latency(),
        ])
    print(f"\nSciFact train qrels split {len(split.train)} train / {len(split.dev)} dev queries (seed {args.seed}); "
          f"{len(documents)} abstracts, {base_chunks} chunks; base embedding {clock(base_embed_seconds)} "
          f"({base_chunks / base_embed_seconds:.1f} chunks/s); full contrastive: {args.epochs} epoch(s), batch {args.batch_size}, "
          f"lr {args.learning_rate:g}, {args.mined_negatives} mined negative(s) from the top {args.top_k}; query-only: "
          f"{args.query_only_settings['epochs']} epoch(s) at lr {args.query_only_settings['learning_rate']:g}; "
          f"LSR: top {args.lsr_top_k}, {args.lsr_epochs} epoch(s), batch {args.lsr_batch_size}, lr {args.lsr_learning_rate:g}; torch threads "
          f"{args.threads}; whole run {clock(total)}; 1-minute load {harness.load_average()} on "
          f"{len(os.sched_getaffinity(0))} CPUs")
    print(harness.table(
        f"Retrieval at the document level (top {CHUNKS_PER_QUERY} chunks -> {RANK_CUTOFF} documents): "
        f"{len(split.dev)} dev queries, and nDCG@10 on the {len(split.train)} train queries",
        ["mode", "trained via", "dev nDCG@10", "dev recall@10", "dev MRR@10", "dev nDCG@10 change [95% CI] (queries)",
         "train nDCG@10", "training", "re-embedding", "train pairs or queries / steps",
         "serving latency per dev query (median / p95)"],
        rows,
    ))
    for result in results:
        if result.note:
            print(f"{result.mode}: {result.note}")
    if negatives_check:
        print(f"service miner check: {negatives_check}")


if __name__ == "__main__":
    main()
