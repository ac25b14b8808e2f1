"""Training a cross-encoder reranker from curators' graded judgments, on sentence-transformers'
CrossEncoderTrainer, with one of two of its losses:

- `bce`: BinaryCrossEntropyLoss, pointwise: each (query, passage) pair on its own, its grade as
  a soft target; a batch is `batch_size` pairs.
- `lambda`: LambdaLoss, listwise: each query's passages as one list, ranked against each other
  with the grades as nDCG gains (2^grade - 1), which is what a reranker is judged by; a batch
  is `batch_size` queries. A list needs a graded positive and something to rank it above; a
  query without both teaches nothing and is left out.

Targets are the curators' grades: relevant 1.0, partly 0.5, not relevant 0.0 (the hard
negatives a curator marked), plus negatives mined from the first stage's top candidates
(0.0). A mined negative whose text is a known positive of the same query (judged relevant
or partly, in any example of that query) is dropped: it would teach the model to push down
what a curator said is relevant.

The model starts from a local checkpoint. The packaged base retriever is a bi-encoder (a
sentence-transformers MiniLM): loaded as a CrossEncoder, it keeps its transformer weights and
gets a freshly initialised one-logit classification head, which the training learns. Nothing
is downloaded.

Checkpoints are the library's own (`save_steps`, `resume_from_checkpoint`, rag.training.hf_trainer):
with `Checkpointing`, the trainer saves the model, optimiser, schedule and random states every
`every` steps in the checkpoint folder, keeping the last one, and a run started again on the
same folder with the same pairs and settings goes on from it (a digest beside it says which).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.reranking import DEFAULT_MAX_LENGTH
from rag.training import ProgressCallback, StopCheck, pick_device, seed_everything
from rag.training.checkpoints import Checkpointing, inputs_fingerprint
from rag.training.hf_trainer import (
    checkpoint_arguments,
    checkpoint_to_resume,
    loss_curve,
    quiet,
    remove_checkpoints,
    resumed_step,
    trainer_callback,
    warmup_steps,
)

RELEVANT, PARTLY, NOT_RELEVANT = 1.0, 0.5, 0.0
RERANKER_JSON = "reranker.json"
# The loss names a run parameter takes, and the library's loss class each one is.
RERANKER_LOSSES = {"bce": "BinaryCrossEntropyLoss", "lambda": "LambdaLoss"}


@dataclass(frozen=True)
class RerankerTrainingExample:
    """One curated query and its passages as texts, by grade; `mined` are first-stage candidates
    no one judged (negatives unless they turn out to be a known positive)."""

    query: str
    relevant: list[str] = field(default_factory=list)
    partly: list[str] = field(default_factory=list)
    not_relevant: list[str] = field(default_factory=list)
    mined: list[str] = field(default_factory=list)
    # How many times its pairs are trained on per epoch (rag.datasets.example_repeats).
    repeats: int = 1


@dataclass(frozen=True)
class RerankerPair:
    query: str
    passage: str
    label: float


@dataclass(frozen=True)
class RerankerList:
    """One query's graded passages, for a listwise loss."""

    query: str
    passages: list[str]
    labels: list[float]


@dataclass
class RerankerTrainingResult:
    output_path: Path
    training_curve: list[dict[str, float]]
    parameters: dict[str, Any]
    steps: int
    pair_counts: dict[str, int]


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


def reranker_pairs(examples: list[RerankerTrainingExample]) -> tuple[list[RerankerPair], dict[str, int]]:
    """The (query, passage, target) pairs of the examples, and how many of each kind there are.

    A passage is graded once per query: relevant beats partly beats not relevant when curators
    of two examples of the same query disagree, and mined negatives that are a known positive
    of the query (or repeat a passage already graded) are left out.
    """
    grades: dict[str, dict[str, tuple[float, str]]] = {}
    for example in examples:
        graded = grades.setdefault(_key(example.query), {})
        for label, texts in ((RELEVANT, example.relevant), (PARTLY, example.partly), (NOT_RELEVANT, example.not_relevant)):
            for text in texts:
                if not text.strip():
                    continue
                current = graded.get(_key(text))
                if current is None or label > current[0]:
                    graded[_key(text)] = (label, text)
    counts = {"relevant": 0, "partly": 0, "not_relevant": 0, "mined": 0, "mined_dropped_as_positive": 0}
    pairs: list[RerankerPair] = []
    emitted: set[str] = set()
    for example in examples:
        query_key = _key(example.query)
        graded = grades[query_key]
        own: list[RerankerPair] = []
        if query_key not in emitted:
            emitted.add(query_key)
            for label, text in graded.values():
                own.append(RerankerPair(example.query, text, label))
                counts[{RELEVANT: "relevant", PARTLY: "partly", NOT_RELEVANT: "not_relevant"}[label]] += 1
        seen_mined: set[str] = set()
        for text in example.mined:
            key = _key(text)
            if not text.strip() or key in seen_mined:
                continue
            seen_mined.add(key)
            if key in graded:
                if graded[key][0] > NOT_RELEVANT:
                    counts["mined_dropped_as_positive"] += 1
                continue  # graded by a curator already: their grade stands
            own.append(RerankerPair(example.query, text, NOT_RELEVANT))
            counts["mined"] += 1
        pairs.extend(own * max(1, example.repeats))
    return pairs, counts


def reranker_lists(pairs: list[RerankerPair]) -> list[RerankerList]:
    """The pairs grouped by query, in first-seen order, for a listwise loss.

    A query's pairs repeated (an example's `repeats`) give its list that many times over, as
    the pointwise loss sees its pairs that many times. A list without a positive, or with
    nothing to rank below its positives, teaches nothing and is left out.
    """
    grouped: dict[str, list[RerankerList]] = {}
    for pair in pairs:
        lists = grouped.setdefault(_key(pair.query), [])
        current = next((one for one in lists if _key(pair.passage) not in map(_key, one.passages)), None)
        if current is None:
            current = RerankerList(pair.query, [], [])
            lists.append(current)
        current.passages.append(pair.passage)
        current.labels.append(pair.label)
    return [
        one
        for lists in grouped.values()
        for one in lists
        if max(one.labels) > NOT_RELEVANT and min(one.labels) < max(one.labels)
    ]


def _dataset_and_loss(model, pairs: list[RerankerPair], loss: str, batch_size: int):
    """The training dataset (rows of pairs or of lists) and the library loss of `loss`."""
    from datasets import Dataset
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, LambdaLoss

    if loss == "bce":
        dataset = Dataset.from_dict(
            {"query": [p.query for p in pairs], "passage": [p.passage for p in pairs], "label": [p.label for p in pairs]}
        )
        return dataset, BinaryCrossEntropyLoss(model)
    lists = reranker_lists(pairs)
    dataset = Dataset.from_dict(
        {"query": [one.query for one in lists], "docs": [one.passages for one in lists], "labels": [one.labels for one in lists]}
    )
    # All the pairs of a batch's lists in one forward pass (mini_batch_size 0).
    return dataset, LambdaLoss(model, mini_batch_size=0)


def train_reranker(
    *,
    base_model_path: str | Path,
    examples: list[RerankerTrainingExample],
    output_path: str | Path,
    epochs: int = 1,
    batch_size: int = 16,
    learning_rate: float = 2e-5,
    warmup_ratio: float = 0.1,
    seed: int = 0,
    max_length: int = DEFAULT_MAX_LENGTH,
    loss: str = "bce",
    device: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpointing: Checkpointing | None = None,
) -> RerankerTrainingResult:
    """Train a cross-encoder on the examples' graded pairs with `loss` (a RERANKER_LOSSES name)
    and save it in `output_path`.

    Raises ValueError when there is nothing to learn from (no pair with a positive target, or
    for the listwise loss no query with a positive and a passage to rank below it), and
    TrainingCancelled (nothing saved) when `should_stop` says so at a step.
    """
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments

    if loss not in RERANKER_LOSSES:
        raise ValueError(f"Reranker loss {loss!r} is unknown; choose one of {', '.join(RERANKER_LOSSES)}.")
    pairs, counts = reranker_pairs(examples)
    if not any(pair.label > NOT_RELEVANT for pair in pairs):
        raise ValueError("No passage is judged relevant or partly relevant: a reranker has no positive to learn from.")
    if loss == "lambda" and not reranker_lists(pairs):
        raise ValueError("No query has both a passage judged relevant or partly relevant and one to rank below it.")
    output_path = Path(output_path)
    device = pick_device(device)
    seed_everything(seed)
    model = CrossEncoder(str(base_model_path), num_labels=1, max_length=max_length, device=device, local_files_only=True)
    dataset, loss_module = _dataset_and_loss(model, pairs, loss, batch_size)
    fingerprint = inputs_fingerprint(
        "cross_encoder", str(base_model_path), pairs, epochs, batch_size, learning_rate, warmup_ratio, seed, max_length, loss
    )
    resume_from = checkpoint_to_resume(checkpointing, fingerprint)
    scratch = output_path.parent / f".{output_path.name}.trainer"
    arguments = CrossEncoderTrainingArguments(
        **checkpoint_arguments(checkpointing, scratch=scratch),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps(warmup_ratio, total_steps=epochs * math.ceil(len(dataset) / batch_size)),
        seed=seed,
        data_seed=seed,
        logging_steps=1,
        report_to="none",
        use_cpu=device == "cpu",
        disable_tqdm=True,
    )
    trainer = CrossEncoderTrainer(
        model=model, args=arguments, train_dataset=dataset, loss=loss_module,
        callbacks=[trainer_callback(progress=progress, should_stop=should_stop)],
    )  # fmt: skip
    quiet(trainer)
    try:
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    curve = loss_curve(trainer.state)
    output_path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output_path))
    parameters = {
        "base_model_path": str(base_model_path), "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
        "warmup_ratio": warmup_ratio, "seed": seed, "max_length": max_length, "device": device,
        "loss": RERANKER_LOSSES[loss], "targets": {"relevant": RELEVANT, "partly": PARTLY, "not_relevant": NOT_RELEVANT},
        "pairs": counts,
    }  # fmt: skip
    parameters["resumed_from_step"] = resumed_step(resume_from)
    (output_path / RERANKER_JSON).write_text(json.dumps(parameters, indent=2, sort_keys=True))
    remove_checkpoints(checkpointing, scratch=scratch)
    return RerankerTrainingResult(output_path, curve, parameters, int(output.global_step), counts)

