"""The continuous loop on BEIR SciFact: curator labels arrive in batches, a retraining policy
with a label-count trigger retrains the retriever after each one, and the gate decides on a
pinned held-out set whether the candidate goes live.

In a database of its own: ingest the SciFact abstracts (every document the train qrels cite,
plus a seeded sample of the others up to --max-docs) and embed them in this process. The
train-qrels queries are split by the product's own rule (`rag.datasets.split_for` of the
query's `split_key`, share --heldout-share): the held-out ones are imported first
(`manage.py import_labels --beir-queries --beir-qrels`), frozen in a snapshot and pinned as the
evaluation set; the others are cut into --batches seeded batches that arrive one after another.
After each batch, `loop_policies_check()` starts a cycle and this process plays the workers
(training run, embedding of a full-mode candidate's space, evaluation job, cycle advances)
until the cycle ends: promoted, refused or failed. The 300 BEIR test queries are never read.

--noise-batch is a negative control: one more batch, of train-side queries judged relevant to
random wrong documents, arrives before the last good batch; its cycle should be refused.

    python bench/loop.py                     # 600 abstracts, 4 batches, contrastive_query_only
    python bench/loop.py --noise-batch       # with the negative control
    python bench/loop.py --quick             # a smoke run: 200 queries, 250 abstracts, 2 batches, 1 epoch
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from bench.harness import SCIFACT, STARTED, RunWatcher, SciFact, clock, embed_space, say  # noqa: E402

CURATOR = "bench-scifact"
SLUG = "scifact-loop"
QUICK = {"queries": 200, "max_docs": 250, "batches": 2, "epochs": 1}
# Parameters a flag may set; unset ones are left to the training service's defaults.
TRAINING_FLAGS = ("epochs", "batch_size", "learning_rate", "mined_negatives", "top_k")
STAGES = ("snapshot", "train", "embed", "evaluate", "gate")  # a cycle's stages, in order


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SCIFACT, help="BEIR SciFact folder (default: %(default)s)")
    parser.add_argument("--max-docs", type=int, default=None,
                        help="documents to ingest: every document the used queries cite, then a seeded sample of the "
                             "others; 0 = the whole corpus (default: 600)")
    parser.add_argument("--queries", type=int, default=None,
                        help="use only a seeded sample of this many train-qrels queries (default: all 809)")
    parser.add_argument("--heldout-share", type=float, default=0.2,
                        help="the policy's and the pinned set's held-out share (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=None, help="label batches of train-side queries (default: 4)")
    parser.add_argument("--min-new-labels", type=int, default=None,
                        help="the policy's label trigger (default: the smallest batch's size)")
    parser.add_argument("--mode", default="contrastive_query_only", choices=("contrastive_query_only", "contrastive"))
    parser.add_argument("--epochs", type=int, default=None, help="(default: the service's)")
    parser.add_argument("--batch-size", type=int, default=None, help="(default: the service's)")
    parser.add_argument("--learning-rate", type=float, default=None, help="(default: the service's)")
    parser.add_argument("--mined-negatives", type=int, default=None, help="(default: the service's)")
    parser.add_argument("--top-k", type=int, default=None, help="chunks the miner looks at per query (default: the service's)")
    parser.add_argument("--margin", type=float, default=0.005, help="the gate's margin on nDCG@10 (default: %(default)s)")
    parser.add_argument("--min-queries", type=int, default=30, help="the gate's least held-out queries (default: %(default)s)")
    parser.add_argument("--noise-batch", action="store_true",
                        help="a batch of labels on random wrong documents arrives before the last good batch")
    quick = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in QUICK.items())
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {quick} unless given")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: %(default)s, as bench/retriever_quality.py on 2 shared cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the per-cycle figures here")
    parser.add_argument("--database", default="ragloop_bench_loop",
                        help="database created on the embedded server (ignored when DATABASE_URL is set)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database and the trained models afterwards")
    args = parser.parse_args()
    defaults = {"queries": 0, "max_docs": 600, "batches": 4, "epochs": None}
    for name, default in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick else default)
    if args.batches < 1:
        parser.error("--batches must be at least 1")
    return args


# --- the label batches --------------------------------------------------------------------


@dataclass
class Batch:
    name: str  # "batch 2", "noise"
    query_ids: list[str]
    qrels: dict[str, dict[str, int]]
    noise: bool = False


def sample_queries(data: SciFact, *, count: int, seed: int) -> SciFact:
    """The data with only a seeded sample of the train-qrels queries (all when count is 0)."""
    if count <= 0 or count >= len(data.qrels):
        return data
    kept = random.Random(seed).sample(sorted(data.qrels, key=int), count)
    return SciFact(documents=data.documents, queries=data.queries, qrels={q: data.qrels[q] for q in sorted(kept, key=int)})


def heldout_and_train(data: SciFact, *, heldout_share: float) -> tuple[list[str], list[str]]:
    """The train-qrels queries on each side of the product's split (as a snapshot splits them)."""
    from rag.datasets import SPLIT_HELDOUT, split_for, split_key

    heldout, train = [], []
    for query_id in sorted(data.qrels, key=int):
        side = split_for(split_key(data.queries[query_id]["text"]), heldout_share=heldout_share)
        (heldout if side == SPLIT_HELDOUT else train).append(query_id)
    return heldout, train


def label_batches(data: SciFact, train_ids: list[str], *, batches: int, noise: bool, documents, seed: int) -> list[Batch]:
    """Seeded batches of the train-side queries in arrival order; with `noise`, one more part of
    them is judged relevant to random wrong documents and arrives before the last good batch."""
    ids = list(train_ids)
    rng = random.Random(seed)
    rng.shuffle(ids)
    parts = batches + (1 if noise else 0)
    cuts = [round(len(ids) * n / parts) for n in range(parts + 1)]
    chunks = [sorted(ids[cuts[n] : cuts[n + 1]], key=int) for n in range(parts)]
    good = [
        Batch(name=f"batch {n + 1}", query_ids=part, qrels={q: data.qrels[q] for q in part})
        for n, part in enumerate(chunks[:batches])
    ]
    if not noise:
        return good
    document_ids = [d.external_id for d in documents]
    wrong = {}
    for query_id in chunks[-1]:
        right = set(data.qrels[query_id])
        # As many wrong documents as the query has right ones, drawn from the ingested ones.
        wrong[query_id] = {d: 1 for d in rng.sample([d for d in document_ids if d not in right], len(right))}
    noise_batch = Batch(name="noise", query_ids=chunks[-1], qrels=wrong, noise=True)
    return [*good[:-1], noise_batch, good[-1]]


def import_batch(data: SciFact, *, query_ids: list[str], qrels: dict, name: str, folder: Path) -> dict:
    """Import the queries' judgments as curator labels, as an admin would (`import_labels`)."""
    from django.core.management import call_command

    queries_path, qrels_path = harness.write_beir_files(data, query_ids, folder, name=name.replace(" ", "-"), qrels=qrels)
    out = io.StringIO()
    call_command("import_labels", SLUG, beir_queries=str(queries_path), beir_qrels=str(qrels_path),
                 curator=CURATOR, create_curators=True, json=True, stdout=out)
    return json.loads(out.getvalue())


# --- playing the workers ------------------------------------------------------------------


class Queued:
    """What the services would send to the workers: collected here and run in this process."""

    def __init__(self) -> None:
        self.runs: list[int] = []
        self.jobs: list[int] = []
        self.advances: list[int] = []

    def install(self) -> None:
        from training.services import evaluation_jobs
        from training.services.loop import cycles
        from training.services.runs import lifecycle

        lifecycle._enqueue_execute = self.runs.append
        evaluation_jobs._enqueue = self.jobs.append
        cycles._enqueue_advance = self.advances.append


def cycle_run(cycle_id: int, queued: Queued, *, label: str, max_steps: int = 50):
    """Play the workers until the cycle ends, in the order they would run: each training run and
    evaluation job is followed by an advance of the cycle (as training.tasks does after either),
    a full-mode candidate's space is embedded when the cycle waits for it, and the advances the
    services queue themselves are made too. The stage times are then what a deployment's
    would be with an idle worker, save the loop tick, which never fires here."""
    from knowledge.models import EmbeddingSpace
    from training.models import LoopCycle
    from training.services.evaluation_jobs import evaluation_job_execute
    from training.services.loop import loop_cycle_advance
    from training.services.runs import training_run_execute

    def advance():
        queued.advances.clear()
        return loop_cycle_advance(cycle_id=cycle_id)

    cycle = LoopCycle.objects.get(pk=cycle_id)
    for _ in range(max_steps):
        if cycle.is_finished:
            return cycle
        if queued.runs:
            run_id = queued.runs.pop(0)
            say(f"  {label}: executing training run #{run_id}")
            with RunWatcher(run_id, label=f"{label} run #{run_id}"):
                training_run_execute(run_id=run_id)
            cycle = advance()
            continue
        if cycle.stage == LoopCycle.Stage.EMBED:
            space = EmbeddingSpace.objects.get(pk=cycle.candidate.embedding_space_id)
            if space.status == EmbeddingSpace.Status.BUILDING:
                say(f"  {label}: embedding the corpus into the candidate's space {space.retriever_version}")
                embed_space(space, label=f"{label} embedding")
                continue  # the space's readiness queues the evaluation; nothing advances the cycle
        if queued.jobs:
            job_id = queued.jobs.pop(0)
            say(f"  {label}: executing evaluation job #{job_id}")
            evaluation_job_execute(job_id=job_id)
            cycle = advance()
            continue
        if not queued.advances:
            break
        cycle = advance()
    raise RuntimeError(f"cycle #{cycle_id} stopped moving in stage {cycle.stage}:\n{cycle.log[-3000:]}")


# --- the report ---------------------------------------------------------------------------


@dataclass
class CycleRow:
    batch: str
    labels_so_far: int  # train-side labels imported (noise included)
    cycle: int | None = None
    status: str = "no cycle started"
    snapshot: str = "-"
    candidate: str = "-"
    candidate_ndcg: float | None = None
    live: str = "-"
    live_ndcg: float | None = None
    gate: dict = field(default_factory=dict)
    stage_seconds: dict = field(default_factory=dict)
    wall_seconds: float = 0.0
    live_after: str = "-"


def cycle_row(cycle, *, batch: Batch, labels_so_far: int, wall_seconds: float) -> CycleRow:
    from training.models import ModelVersion

    row = CycleRow(batch=batch.name, labels_so_far=labels_so_far, cycle=cycle.pk, status=cycle.status,
                   gate=cycle.gate_outcome or {}, stage_seconds=cycle.stage_seconds, wall_seconds=wall_seconds)
    if cycle.snapshot_id:
        row.snapshot = f"{cycle.snapshot.train_count} / {cycle.snapshot.heldout_count}"
    if cycle.candidate_id:
        row.candidate = cycle.candidate.name
    job = cycle.evaluation_job
    if job is not None and job.evaluation is not None:
        evaluation = job.evaluation
        row.candidate_ndcg = evaluation.candidate_metrics.get("ndcg@10")
        row.live, row.live_ndcg = evaluation.baseline_name, evaluation.baseline_metrics.get("ndcg@10")
    live = ModelVersion.objects.filter(knowledge_base=cycle.knowledge_base, component="retriever", status="live").first()
    row.live_after = live.name if live else "base"
    if cycle.error and not row.gate:
        row.gate = {"reasons": [cycle.error]}
    return row


def outcome_text(row: CycleRow) -> str:
    if row.cycle is None:
        return row.status
    reasons = "; ".join(row.gate.get("reasons") or [])
    return f"{row.status}" + (f": {reasons}" if reasons and row.status != "promoted" else "")


def figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_report(*, args, rows: list[CycleRow], heldout: int, documents: int, chunks: int, base_seconds: float,
                 parameters: dict, total: float, contention: str, load_start: str) -> None:
    table_rows = []
    for row in rows:
        gate = row.gate
        delta = "-"
        if gate.get("delta") is not None:
            delta = f"{gate['delta']:+.4f} [{gate['low']:+.4f}, {gate['high']:+.4f}] ({gate['queries']} q)"
        stages = ", ".join(f"{stage} {clock(row.stage_seconds[stage])}" for stage in STAGES if stage in row.stage_seconds)
        table_rows.append([
            row.cycle or "-", row.batch, row.labels_so_far, row.snapshot, row.candidate, figure(row.candidate_ndcg),
            f"{row.live} {figure(row.live_ndcg)}" if row.live != "-" else "-", delta, outcome_text(row), row.live_after,
            stages or "-", clock(row.wall_seconds),
        ])
    command = " ".join(shlex.quote(a) for a in ["python", "bench/loop.py", *sys.argv[1:]])
    print(f"\nCommand: {command}")
    print(f"SciFact: {documents} abstracts, {chunks} chunks (base embedding {clock(base_seconds)}); {heldout} held-out queries "
          f"pinned (share {args.heldout_share:g}); policy: {args.mode} {json.dumps(parameters, sort_keys=True)}, "
          f"min_new_labels {args.min_new_labels}, gate nDCG@10 margin {args.margin:g}, lower 95% bound > 0, "
          f"at least {args.min_queries} queries, auto-promote; torch threads {args.threads}; seed {args.seed}")
    print(f"Whole run {clock(total)}; 1-minute load {load_start} at the start, {harness.load_average()} at the end, on "
          f"{len(os.sched_getaffinity(0))} CPUs; other programs' running threads (mean of samples): {contention}")
    print(harness.table(
        "The loop, one row per label batch: nDCG@10 on the pinned held-out set, candidate vs the live version it is "
        "compared with; change with its paired bootstrap 95% interval",
        ["cycle", "batch", "train labels so far", "snapshot train / held-out", "candidate", "candidate nDCG@10",
         "live nDCG@10", "change [95% CI] (queries)", "gate", "live after", "stage times", "cycle wall"],
        table_rows,
    ))


# --- the run ------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="ragloop-bench-loop-"))
    # Trained models go to a folder of this run: run ids restart at 1 in a fresh database.
    os.environ["RAGLOOP_ARTIFACTS_DIR"] = str(work / "artifacts")
    database = harness.django_setup(database_name=args.database)
    harness.broker_in_memory()  # no worker runs here: this process plays them

    import torch

    from knowledge.services.documents import documents_ingest
    from knowledge.services.knowledge_bases import knowledge_base_create
    from training.models import LoopCycle
    from training.services.evaluation_sets import evaluation_set_pin
    from training.services.loop import loop_policies_check, retraining_policy_set
    from training.services.snapshots import dataset_snapshot_create

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = harness.load_average()
    print(harness.table("Environment", ["", ""], harness.environment()))
    contention = harness.Contention(database_name=database.name).start()
    rows: list[CycleRow] = []
    try:
        data = sample_queries(harness.load_scifact(args.data), count=args.queries, seed=args.seed)
        documents = harness.pick_documents(data, max_docs=args.max_docs, seed=args.seed)
        heldout_ids, train_ids = heldout_and_train(data, heldout_share=args.heldout_share)
        batches = label_batches(
            data, train_ids, batches=args.batches, noise=args.noise_batch, documents=documents, seed=args.seed
        )
        if args.min_new_labels is None:
            args.min_new_labels = min(len(b.query_ids) for b in batches)
        say(f"SciFact: {len(data.qrels)} train-qrels queries -> {len(heldout_ids)} held-out / {len(train_ids)} train-side "
            f"in {len(batches)} batches ({', '.join(f'{b.name}: {len(b.query_ids)}' for b in batches)}); "
            f"ingesting {len(documents)} abstracts")

        knowledge_base = knowledge_base_create(slug=SLUG, name="SciFact continuous loop")
        ingest = documents_ingest(knowledge_base=knowledge_base, documents=documents)
        say(f"ingested: {ingest.created} documents, {ingest.chunks_created} chunks; embedding them")
        chunks, base_seconds = embed_space(knowledge_base.live_space, label="base embedding")

        imported = import_batch(data, query_ids=heldout_ids, qrels=data.qrels, name="heldout", folder=work)
        frozen = dataset_snapshot_create(knowledge_base=knowledge_base, heldout_share=args.heldout_share)
        if frozen.train_count:
            raise RuntimeError(f"the held-out snapshot has {frozen.train_count} train examples; the split rules disagree")
        evaluation_set_pin(knowledge_base=knowledge_base, snapshot=frozen)
        say(f"held-out labels: {imported['labels_created']} imported, snapshot #{frozen.pk} ({frozen.heldout_count} held-out "
            "examples) pinned as the evaluation set")

        parameters = {"heldout_share": args.heldout_share, "seed": args.seed}
        parameters.update({name: getattr(args, name) for name in TRAINING_FLAGS if getattr(args, name) is not None})
        policy = retraining_policy_set(knowledge_base=knowledge_base, component="retriever", changes={
            "name": "scifact-labels", "mode": args.mode, "parameters": parameters, "min_new_labels": args.min_new_labels,
            "gate_metric": "ndcg@10", "gate_margin": args.margin, "gate_min_queries": args.min_queries, "auto_promote": True,
        })  # fmt: skip
        queued = Queued()
        queued.install()

        labels_so_far = 0
        for batch in batches:
            imported = import_batch(data, query_ids=batch.query_ids, qrels=batch.qrels, name=batch.name, folder=work)
            labels_so_far += imported["labels_created"]
            say(f"{batch.name}: {imported['labels_created']} labels imported ({labels_so_far} train-side so far); "
                "checking the policy")
            started = time.perf_counter()
            cycles = loop_policies_check(knowledge_base_id=knowledge_base.pk)
            if not cycles:
                rows.append(CycleRow(batch=batch.name, labels_so_far=labels_so_far))
                say(f"{batch.name}: no cycle started (policy {policy.name}, threshold {args.min_new_labels})")
                continue
            [cycle] = cycles
            cycle = cycle_run(cycle.pk, queued, label=f"cycle #{cycle.pk}")
            cycle = LoopCycle.objects.select_related("snapshot", "candidate", "evaluation_job__evaluation").get(pk=cycle.pk)
            row = cycle_row(cycle, batch=batch, labels_so_far=labels_so_far, wall_seconds=time.perf_counter() - started)
            rows.append(row)
            say(f"{batch.name}: cycle #{cycle.pk} {outcome_text(row)} ({clock(row.wall_seconds)}); "
                f"gate: {json.dumps({k: row.gate.get(k) for k in ('delta', 'low', 'high', 'queries')})}")

        total = time.perf_counter() - STARTED
        print_report(args=args, rows=rows, heldout=frozen.heldout_count, documents=len(documents), chunks=chunks,
                     base_seconds=base_seconds, parameters=policy.parameters, total=total, contention=contention.stop(),
                     load_start=load_start)
        if args.json:
            figures = {
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "documents": len(documents), "chunks": chunks, "heldout_queries": frozen.heldout_count,
                "whole_run_seconds": total, "cycles": [row.__dict__ for row in rows],
            }  # fmt: skip
            args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
            print(f"figures written to {args.json}")
    finally:
        contention.stop()
        if args.keep:
            print(f"\nKept database {database.name!r} (knowledge base {SLUG!r}) and the models in {work}.")
        else:
            shutil.rmtree(work, ignore_errors=True)
            if database.created:
                database.drop()
            else:
                from knowledge.models import KnowledgeBase

                KnowledgeBase.objects.filter(slug=SLUG).delete()


if __name__ == "__main__":
    main()
