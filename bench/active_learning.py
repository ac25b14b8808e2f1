"""Active-learning queue vs random order: does labelling the turns the re-scored queue puts first
teach the retriever more per label than labelling turns in a random order? A simulation on
SciFact train (the BEIR test qrels are never read).

The train-qrels queries are split 80/20 into a pool and dev with the seed of
bench/retriever_quality.py. The corpus is every document the train qrels cite plus a seeded
sample of the others up to --max-docs, one passage per document (title and abstract; the
encoder reads its first 256 tokens), embedded once by the base retriever. Every pool query is
a turn "served" by the base retriever: its top --passages documents are its stored passages,
and its place at ingest is rag.queue_priority.turn_queue_position of their scores (what the
product stores today).

Each order then takes --rounds rounds of --batch labels (the same budget for every order):
  random   the stable random order alone (a random sample of the turns);
  ingest   today's queue: the place at ingest (low margin at ingest first, then random);
  active   the shipped re-scoring rule: before each round every open turn is placed again by
           rag.queue_priority.turn_queue_rescore (the function the re-scoring task calls)
           with the live retriever's and the newest candidate's top documents, and the
           first --batch turns in (tier, order, id) are labelled.
A label reveals the qrels: the cited documents are the relevant passages and the turn's
stored passages that are not cited are curator hard negatives. After each round the retriever
is trained again from the base model on every label so far with rag.training.retriever's
train_contrastive, as the product's `contrastive_query_only` mode does (query encoder only,
so the document vectors stay valid; --mined-negatives of the live retriever's top --top-k
outside the relevant documents per query, as training.services.runs.inputs.mine_negatives),
for --epochs epochs with fixed seeds, and scored on dev (nDCG@10, documents).

Who is live and who is the candidate: the model trained after round r is the newest candidate
when round r + 1 is chosen, and the one trained after round r - 1 is live (it was promoted;
the base model before that), as a loop whose gate promotes each candidate one cycle later.

    python bench/active_learning.py                              # 2,000 documents, 4 rounds of 50, 3 random orders
    python bench/active_learning.py --orders random,active --rounds 2   # a quicker look

No database, no worker: pure rag code on plain data, so it measures the rule, not the plumbing.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import SCIFACT, STARTED, clock, load_scifact, pick_documents, say, table  # noqa: E402
from bench.retriever_quality import split_queries  # noqa: E402

ORDERS = ("random", "ingest", "active")
RANK_CUTOFF = 10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SCIFACT, help="BEIR SciFact folder (default: %(default)s)")
    parser.add_argument("--max-docs", type=int, default=2000, help="documents: every cited one plus distractors (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=4, help="(default: %(default)s)")
    parser.add_argument("--batch", type=int, default=50, help="labels per round (default: %(default)s)")
    parser.add_argument("--orders", default=",".join(ORDERS), help="comma-separated, from %(default)s")
    parser.add_argument("--passages", type=int, default=5, help="passages stored per turn at ingest (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="(default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=5e-5, help="(default: %(default)s, the service's)")
    parser.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s, the service's)")
    parser.add_argument("--mined-negatives", type=int, default=4, help="(default: %(default)s, the service's)")
    parser.add_argument("--top-k", type=int, default=10, help="chunks the miner looks at (default: %(default)s, the service's)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--random-repeats", type=int, default=3,
                        help="random orders drawn (each a different sample), to show the spread chance alone gives "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.orders = [o.strip() for o in args.orders.split(",") if o.strip()]
    unknown = [o for o in args.orders if o not in ORDERS]
    if unknown:
        parser.error(f"unknown order(s) {', '.join(unknown)}; choose from {', '.join(ORDERS)}")
    return args


# --- retrieval on plain arrays --------------------------------------------------------------


@dataclass
class Corpus:
    ids: list[str]
    texts: list[str]
    vectors: np.ndarray  # unit rows, the base model's (query-only training keeps them valid)

    def rank(self, query_vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """(document id, cosine) of the k best documents per query, best first (ties by corpus order)."""
        scores = query_vectors @ self.vectors.T
        rankings = []
        for row in scores:
            top = np.argsort(-row, kind="stable")[:k]
            rankings.append([(self.ids[i], float(row[i])) for i in top])
        return rankings


@dataclass
class Model:
    name: str
    embedder: object  # rag.embedding.Embedder
    path: Path | None = None

    def rank(self, corpus: Corpus, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        return corpus.rank(self.embedder.encode_queries(queries), k)


@dataclass
class Turn:
    index: int  # stands in for the turn id
    query_id: str
    query: str
    passages: list[tuple[str, float]]  # stored at ingest: the base retriever's top documents
    tier: int = 2
    order: float = 0.0
    reason: str = ""


@dataclass
class OrderRun:
    order: str
    ndcg: list[float] = field(default_factory=list)
    last_per_query: dict[str, float] = field(default_factory=dict)  # nDCG@10 per dev query after the last round  # after each round (index 0: the base model)
    reasons: list[dict[str, int]] = field(default_factory=list)  # why each round's labels were picked
    seconds: float = 0.0


def ndcg_at_10(model: Model, corpus: Corpus, queries: dict[str, str], qrels: dict, per_query: dict | None = None) -> float:
    from rag.metrics import retrieval_report

    ids = list(queries)
    rankings = model.rank(corpus, [queries[q] for q in ids], RANK_CUTOFF)
    runs = {q: [d for d, _ in ranking] for q, ranking in zip(ids, rankings)}
    report = retrieval_report(runs=runs, qrels={q: qrels[q] for q in ids}, ks=(RANK_CUTOFF,), rank_cutoff=RANK_CUTOFF)
    if per_query is not None:
        per_query.update({q: figures[f"ndcg@{RANK_CUTOFF}"] for q, figures in report["per_query"].items()})
    return float(report["mean"][f"ndcg@{RANK_CUTOFF}"])


# --- the orders -----------------------------------------------------------------------------


def pick(order: str, open_turns: list[Turn], *, live: Model, candidate: Model | None, corpus: Corpus, batch: int) -> list[Turn]:
    """The next `batch` turns the order labels."""
    from rag.queue_priority import RANDOM_TIER, RESCORE_DEPTH, stable_random_order, turn_queue_rescore

    if order.startswith("random"):  # "random", "random#2", ...: a different sample each
        salt = order.partition("#")[2]
        return sorted(open_turns, key=lambda t: (stable_random_order(f"{salt}:{t.index}" if salt else t.index), t.index))[:batch]
    if order == "active":
        queries = [t.query for t in open_turns]
        # Two chunks per document in the product; one passage per document here.
        live_rankings = live.rank(corpus, queries, RESCORE_DEPTH * 2)
        candidate_rankings = candidate.rank(corpus, queries, RESCORE_DEPTH * 2) if candidate else [None] * len(open_turns)
        for turn, live_ranking, candidate_ranking in zip(open_turns, live_rankings, candidate_rankings):
            position = turn_queue_rescore(
                feedback=None, created=None, live_ranking=live_ranking,
                candidate_ranking=[d for d, _ in candidate_ranking] if candidate_ranking is not None else None,
                current=(turn.tier, turn.order), random_order=stable_random_order(turn.index),
            )
            turn.tier, turn.order, turn.reason = position.tier, position.order, position.reason
    # "ingest" keeps the places stored at ingest; "active" the ones just written.
    chosen = sorted(open_turns, key=lambda t: (t.tier, t.order, t.index))[:batch]
    for turn in chosen:
        if order == "ingest":
            turn.reason = "ingest margin" if turn.tier != RANDOM_TIER else ""
    return chosen


def label_examples(turns: list[Turn], *, documents: dict[str, str], qrels: dict):
    """What a curator's label of each turn becomes: the cited documents relevant, the stored
    passages that are not cited irrelevant (hard negatives)."""
    from rag.training.retriever import RetrievalTrainingExample

    examples = []
    for turn in turns:
        relevant = [d for d, grade in qrels[turn.query_id].items() if grade > 0 and d in documents]
        negatives = [documents[d] for d, _ in turn.passages if d not in qrels[turn.query_id]]
        examples.append(RetrievalTrainingExample(query=turn.query, positives=[documents[d] for d in relevant],
                                                 hard_negatives=negatives))
    return [e for e in examples if e.positives]


def mined_negatives(examples, *, live: Model, corpus: Corpus, qrels_of_query: dict, documents: dict, top_k: int, limit: int):
    """As training.services.runs.inputs.mine_negatives: the live retriever's top-k outside the relevant documents."""
    if limit == 0:
        return {}
    queries = list(dict.fromkeys(e.query for e in examples))
    rankings = live.rank(corpus, queries, top_k)
    return {
        query: [documents[d] for d, _ in ranking if d not in qrels_of_query[query]][:limit]
        for query, ranking in zip(queries, rankings)
    }


def train(examples, *, args, base_path: Path, output: Path, live: Model, corpus, qrels_of_query, documents, name: str) -> Model:
    from rag.embedding import Embedder
    from rag.training.retriever import load_trained_retriever, train_contrastive

    mined = mined_negatives(examples, live=live, corpus=corpus, qrels_of_query=qrels_of_query, documents=documents,
                            top_k=args.top_k, limit=args.mined_negatives)
    result = train_contrastive(
        base_model_path=base_path, examples=examples, output_path=output, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, query_only=True, mined_negatives=mined,
    )
    query_encoder, _ = load_trained_retriever(result.output_path)
    return Model(name=name, embedder=Embedder(query_encoder), path=output)


def run_order(order: str, *, args, pool: list[Turn], base: Model, base_path: Path, corpus: Corpus, dev: dict, data,
              documents: dict, qrels_of_query: dict, work: Path, base_ndcg: float) -> OrderRun:
    started = time.perf_counter()
    # Every order starts from the places stored at ingest.
    turns = [Turn(t.index, t.query_id, t.query, t.passages, t.tier, t.order) for t in pool]
    result = OrderRun(order=order, ndcg=[base_ndcg])
    labelled: list[Turn] = []
    live, candidate = base, None
    for round_number in range(1, args.rounds + 1):
        open_turns = [t for t in turns if t not in labelled]
        chosen = pick(order, open_turns, live=live, candidate=candidate, corpus=corpus, batch=args.batch)
        reasons: dict[str, int] = {}
        for turn in chosen:
            reasons[turn.reason or "random"] = reasons.get(turn.reason or "random", 0) + 1
        result.reasons.append(reasons)
        labelled.extend(chosen)
        examples = label_examples(labelled, documents=documents, qrels=data.qrels)
        trained = train(examples, args=args, base_path=base_path, output=work / f"{order}-{round_number}", live=live,
                        corpus=corpus, qrels_of_query=qrels_of_query, documents=documents, name=f"{order}-r{round_number}")
        result.last_per_query = {}
        score = ndcg_at_10(trained, corpus, dev, data.qrels, per_query=result.last_per_query)
        result.ndcg.append(score)
        say(f"{order} round {round_number}: {len(labelled)} labels ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))}), "
            f"dev nDCG@10 {score:.4f}")
        # The model trained one round earlier was promoted; the new one is the newest candidate.
        live = candidate or base
        candidate = trained
    result.seconds = time.perf_counter() - started
    return result


# --- the run --------------------------------------------------------------------------------


def environment(args) -> list[tuple[str, str]]:
    import sentence_transformers
    import torch

    return [
        ("CPUs (os.cpu_count / usable)", f"{os.cpu_count()} / {len(os.sched_getaffinity(0))}"),
        ("load average at start (1, 5, 15 min)", ", ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("torch threads", str(torch.get_num_threads())),
        ("GPU", "yes" if torch.cuda.is_available() else "none"),
        ("Python", platform.python_version()),
        ("torch / sentence-transformers", f"{torch.__version__} / {sentence_transformers.__version__}"),
        ("seed", str(args.seed)),
    ]


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from rag.embedding import Embedder, base_retriever_path
    from rag.queue_priority import turn_queue_position

    env = environment(args)
    data = load_scifact(args.data)
    pool_ids, dev_ids = split_queries(data.qrels, dev_share=0.2, seed=args.seed)
    picked = pick_documents(data, max_docs=args.max_docs, seed=args.seed)
    documents = {d.external_id: f"{d.title}. {d.text}".strip() if d.title else d.text for d in picked}
    say(f"{len(picked)} documents, {len(pool_ids)} pool turns, {len(dev_ids)} dev queries")
    base_path = base_retriever_path()
    base = Model(name="base", embedder=Embedder(base_path))
    embed_started = time.perf_counter()
    ids = list(documents)
    corpus = Corpus(ids=ids, texts=[documents[i] for i in ids], vectors=base.embedder.encode_documents([documents[i] for i in ids]))
    say(f"corpus embedded in {clock(time.perf_counter() - embed_started)}")
    queries = {q: data.queries[q]["text"] for q in pool_ids + dev_ids}
    qrels_of_query = {queries[q]: data.qrels[q] for q in pool_ids}
    dev = {q: queries[q] for q in dev_ids}
    # Ingest: the base retriever serves every pool query; its place is today's rule, the random
    # tier's draw seeded as bench/curation.py seeds it.
    random.seed(args.seed)
    served = base.rank(corpus, [queries[q] for q in pool_ids], args.passages)
    pool = []
    for index, (query_id, passages) in enumerate(zip(pool_ids, served), start=1):
        tier, order = turn_queue_position(feedback=None, scores=[s for _, s in passages])
        pool.append(Turn(index, query_id, queries[query_id], passages, tier, order))
    say(f"at ingest: {sum(t.tier == 1 for t in pool)} of {len(pool)} turns in the low-margin tier")
    base_ndcg = ndcg_at_10(base, corpus, dev, data.qrels)
    say(f"base dev nDCG@10 {base_ndcg:.4f}")
    work = Path(tempfile.mkdtemp(prefix="ragloop-bench-active-"))
    runs = []
    orders = [o for o in args.orders if o != "random"]
    if "random" in args.orders:
        orders = ["random", *[f"random#{n}" for n in range(2, args.random_repeats + 1)], *orders]
    try:
        for order in orders:
            runs.append(run_order(order, args=args, pool=pool, base=base, base_path=base_path, corpus=corpus, dev=dev,
                                  data=data, documents=documents, qrels_of_query=qrels_of_query, work=work,
                                  base_ndcg=base_ndcg))
            for path in work.glob(f"{order}-*"):
                shutil.rmtree(path, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(table("Environment", ["", ""], [list(row) for row in env]))
    header = ["order", *[f"{r * args.batch} labels" for r in range(0, args.rounds + 1)], "time"]
    print(table(f"Dev nDCG@10 after each round ({len(dev_ids)} dev queries, {len(documents)} documents, "
                f"{args.epochs} epoch per round)", header,
                [[run.order, *[f"{x:.4f}" for x in run.ndcg], clock(run.seconds)] for run in runs]))
    by_order = {run.order: run for run in runs}
    randoms = [run for run in runs if run.order.startswith("random")]
    if randoms:
        from rag.metrics import paired_bootstrap_interval

        spread = [[f"{min(r.ndcg[i] for r in randoms):.4f} .. {max(r.ndcg[i] for r in randoms):.4f}"
                   for i in range(args.rounds + 1)]]
        rows = []
        random_mean = [float(np.mean([r.ndcg[i] for r in randoms])) for i in range(args.rounds + 1)]
        for run in runs:
            if run.order.startswith("random"):
                continue
            deltas = [a - b for a, b in zip(run.ndcg, random_mean)]
            interval = paired_bootstrap_interval(run.last_per_query, by_order["random"].last_per_query, seed=args.seed)
            rows.append([f"{run.order} - mean of random", *[f"{d:+.4f}" for d in deltas], f"{np.mean(deltas[1:]):+.4f}",
                         f"{interval['delta']:+.4f} [{interval['low']:+.4f}, {interval['high']:+.4f}]"])
        print(table(f"Random orders: lowest .. highest of {len(randoms)}", ["", *header[1:-1]], [["random", *spread[0]]]))
        if rows:
            print(table("Difference to random order", ["", *header[1:-1], "mean over rounds",
                                                       "last round vs random (paired bootstrap 95%)"], rows))
    print(table("Why each round's labels were picked", ["order", *[f"round {r}" for r in range(1, args.rounds + 1)]],
                [[run.order, *[", ".join(f"{k} {v}" for k, v in sorted(r.items())) for r in run.reasons]] for run in runs]))
    print(f"\nload average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"total {clock(time.perf_counter() - STARTED)}")


if __name__ == "__main__":
    main()
