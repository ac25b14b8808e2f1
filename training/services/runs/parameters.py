"""The run parameter schema: which parameters each training mode takes, their bounds and
defaults, and the checks `training_run_start` makes before it queues a run."""

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from knowledge.errors import InvalidInput
from knowledge.models import KnowledgeBase
from rag.corpus_pairs import DEFAULT_MAX_QUERY_WORDS, DEFAULT_MIN_POSITIVE_WORDS, DEFAULT_MIN_QUERY_WORDS
from rag.training.generator import DEFAULT_MAX_HISTORY_TOKENS  # plain constants: no torch is loaded
from rag.training.reranker import RERANKER_LOSSES
from training.models import Component, DatasetSnapshot, SnapshotExample

RETRIEVER_MODES = ("contrastive", "contrastive_query_only", "lsr", "corpus_pairs")
# Modes that learn from the knowledge base's chunks, not from labels: they take no snapshot, and
# a retraining policy (which retrains because labels came in) refuses them.
LABEL_FREE_MODES = ("corpus_pairs",)
GENERATOR_MODES = ("lora_radit", "lora_raft", "openai")
RERANKER_MODES = ("cross_encoder",)
MODES = {Component.RETRIEVER: RETRIEVER_MODES, Component.GENERATOR: GENERATOR_MODES, Component.RERANKER: RERANKER_MODES}


@dataclass(frozen=True)
class _Parameter:
    kind: type
    low: float | None = None
    high: float | None = None
    low_exclusive: bool = False
    high_exclusive: bool = False
    choices: tuple[str, ...] = ()  # a text parameter that takes only these

    def describe(self) -> str:
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a non-empty string"}[self.kind]
        if self.low is None and self.high is None:
            return kind
        low = f"{'>' if self.low_exclusive else '>='} {self.low:g}" if self.low is not None else ""
        high = f"{'<' if self.high_exclusive else '<='} {self.high:g}" if self.high is not None else ""
        return f"{kind} {' and '.join(part for part in (low, high) if part)}"

    def accepts(self, value: Any) -> bool:
        if self.kind is bool:
            return isinstance(value, bool)
        if self.choices:
            return value in self.choices
        if self.kind is str:
            return isinstance(value, str) and bool(value.strip()) and "\x00" not in value and len(value) <= 500
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_exclusive and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_exclusive and value == self.high)):
            return False
        return True


PARAMETERS: dict[str, _Parameter] = {
    "epochs": _Parameter(int, 1, 1000),
    "batch_size": _Parameter(int, 1, 4096),
    "learning_rate": _Parameter(float, 0, 1, low_exclusive=True),
    "warmup_ratio": _Parameter(float, 0, 1),
    "seed": _Parameter(int, 0, 2**31 - 1),
    "heldout_share": _Parameter(float, 0, 1),
    "device": _Parameter(str),  # "cpu", "cuda", "cuda:1"; default: the GPU when there is one
    "top_k": _Parameter(int, 1, 100),
    "mined_negatives": _Parameter(int, 0, 100),
    "mini_batch_size": _Parameter(int, 1, 4096),  # contrastive: GradCache, for batches bigger than memory
    # Query-only contrastive: up to this many of the space's stored vectors are every query's
    # negatives (the whole corpus below it; a seeded sample above); 0: the batch's candidates only.
    "corpus_negatives": _Parameter(int, 0, 10_000_000),
    "query_only": _Parameter(bool),
    "lm_temperature": _Parameter(float, 0, 100, low_exclusive=True),
    "retriever_temperature": _Parameter(float, 0, 100, low_exclusive=True),
    "base_model": _Parameter(str),
    "loss": _Parameter(str, choices=tuple(RERANKER_LOSSES)),  # the reranker's
    "lora_r": _Parameter(int, 1, 1024),
    "lora_alpha": _Parameter(int, 1, 4096),
    "lora_dropout": _Parameter(float, 0, 1, high_exclusive=True),
    "max_length": _Parameter(int, 16, 131072),  # LoRA: tokens of a training sequence; reranker: of a (query, passage) pair
    # A conversation's earlier messages a pair keeps, newest whole exchanges first; 0: none.
    "max_history_tokens": _Parameter(int, 0, 131072),  # LoRA: tokens of the model's tokenizer
    "max_history_words": _Parameter(int, 0, 1_000_000),  # openai: words, default serving's budget
    "distractors": _Parameter(int, 0, 50),
    "oracle_probability": _Parameter(float, 0, 1),
    "model": _Parameter(str),
    "base_url": _Parameter(str),
    "suffix": _Parameter(str),
    "learning_rate_multiplier": _Parameter(float, 0, 100, low_exclusive=True),
    "poll_seconds": _Parameter(float, 0, 3600),
    "timeout_seconds": _Parameter(float, 0, 7 * 24 * 3600, low_exclusive=True),
    "max_passages": _Parameter(int, 1, 50),
    # How many times an example tagged with a failure this component can fix is trained on
    # (docs/failure-tags.md); 1 turns the weighting off.
    "failure_tag_repeats": _Parameter(int, 1, 20),
    # corpus_pairs: how many chunks of the live space to draw, and the words of each half.
    "max_chunks": _Parameter(int, 1, 10_000_000),
    "min_query_words": _Parameter(int, 1, 1000),
    "max_query_words": _Parameter(int, 1, 1000),
    "min_positive_words": _Parameter(int, 1, 1000),
    # Local trainers: a checkpoint every this many steps, which a run whose worker died goes on
    # from (RAGLOOP_TRAINING_RESUME_LIMIT times at most); 0: none, a dead worker fails the run.
    "checkpoint_every": _Parameter(int, 0, 1_000_000),
    # LoRA, contrastive, LSR: batches whose gradients one optimiser step sums, for an effective
    # batch bigger than memory holds (LoRA: the answer tokens of all of them weigh alike;
    # contrastive: each batch is its own softmax, so it does not widen the negatives, which
    # mini_batch_size does).
    "gradient_accumulation_steps": _Parameter(int, 1, 1024),
}


_COMMON = {"seed": 0, "heldout_share": 0.2, "failure_tag_repeats": 2}
# A checkpoint of MiniLM with its optimiser state is about 270 MB written in a second or so; every
# 50 steps that is minutes of query-only training (tens of minutes of full mode on 2 CPU cores).
_CHECKPOINTS = {"checkpoint_every": 50}
_RETRIEVER = {**_COMMON, "epochs": 1, "batch_size": 16, "learning_rate": 2e-5, "warmup_ratio": 0.1}
_LORA = {
    **_COMMON, **_CHECKPOINTS, "epochs": 1, "batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 1e-4,
    "warmup_ratio": 0.0, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "max_length": 512,
    "max_history_tokens": DEFAULT_MAX_HISTORY_TOKENS,
}  # fmt: skip
# Each mode's parameters with their defaults; None: optional, no default ("device", "base_url").
# Contrastive runs learn from a few hundred curated queries, not the millions of pairs that
# one epoch at 2e-5 suits. Query-only on SciFact's 647 train queries (dev nDCG@10, base 0.813):
# 1 epoch at 2e-5 0.815, 3 epochs at 2e-5 0.824, 3 epochs at 5e-5 0.853 (docs/benchmarks.md).
_CONTRASTIVE = {
    **_RETRIEVER, **_CHECKPOINTS, "epochs": 3, "learning_rate": 5e-5, "top_k": 10, "mined_negatives": 4, "mini_batch_size": None,
    "gradient_accumulation_steps": 1, "device": None,
}  # fmt: skip
# Query-only: the frozen side is read from the space, not encoded, so the whole corpus (up to
# 200k stored vectors, 300 MB at 384 dimensions) serves as negatives at the cost of one matrix
# product per step (docs/benchmarks.md has the comparison with in-batch negatives only). Moving
# one side against a fixed corpus wants more steps and a bigger step than full mode: 5 epochs at
# 1e-4 gave 0.776 dev nDCG@10 on the whole of SciFact where full mode's 3 at 5e-5 gave 0.725
# (docs/benchmarks.md, "Query-only with more steps and a higher learning rate").
_QUERY_ONLY = {**_CONTRASTIVE, "epochs": 5, "learning_rate": 1e-4, "corpus_negatives": 200_000}
# corpus_pairs: no heldout_share (no snapshot); query-only by default, so no re-embedding;
# bigger batches than curated training, as every other pair of the batch is a negative.
_CORPUS_PAIRS = {
    "seed": 0, "epochs": 1, "batch_size": 32, "learning_rate": 2e-5, "warmup_ratio": 0.1, "query_only": True,
    "max_chunks": 5000, "min_query_words": DEFAULT_MIN_QUERY_WORDS, "max_query_words": DEFAULT_MAX_QUERY_WORDS,
    "min_positive_words": DEFAULT_MIN_POSITIVE_WORDS, "mini_batch_size": None, "device": None, **_CHECKPOINTS,
}  # fmt: skip
# The reranker: a cross-encoder from the packaged MiniLM (a fresh classification head), trained
# on graded pairs plus up to `mined_negatives` of the live first stage's top `top_k` chunks per
# query that no curator judged relevant or partly relevant. `loss`: "bce" (pointwise, a batch
# of `batch_size` pairs) or "lambda" (listwise over each query's passages, `batch_size` queries).
_CROSS_ENCODER = {
    **_RETRIEVER, **_CHECKPOINTS, "learning_rate": 5e-5, "top_k": 20, "mined_negatives": 4, "max_length": 256, "device": None,
    "loss": "bce",
}  # fmt: skip
MODE_PARAMETERS: dict[str, dict[str, Any]] = {
    "cross_encoder": _CROSS_ENCODER,
    "corpus_pairs": _CORPUS_PAIRS,
    "contrastive": _CONTRASTIVE,
    "contrastive_query_only": _QUERY_ONLY,
    "lsr": {
        **_RETRIEVER, "batch_size": 8, "gradient_accumulation_steps": 1, "top_k": 5, "lm_temperature": 0.01,
        "retriever_temperature": 1.0, "query_only": True, "base_model": None, "device": None, **_CHECKPOINTS,
    },  # fmt: skip
    "lora_radit": {**_LORA, "top_k": 5, "base_model": None, "device": None},
    "lora_raft": {**_LORA, "distractors": 4, "oracle_probability": 0.8, "base_model": None, "device": None},
    "openai": {
        **_COMMON, "model": None, "base_url": None, "suffix": None, "epochs": None, "batch_size": None,
        "learning_rate_multiplier": None, "poll_seconds": 30.0, "timeout_seconds": None, "max_passages": 5,
        "max_history_words": None,  # RAGLOOP_CHAT_HISTORY_TOKENS, filled in below
    },  # fmt: skip
}


def validated_parameters(
    *, knowledge_base: KnowledgeBase, component: str, mode: str, parameters: dict | None, snapshot
) -> dict[str, Any]:
    """The run's effective parameters (defaults filled in); InvalidInput names the first problem."""
    if component not in Component.values:
        raise InvalidInput(f"Component {component!r} is unknown; choose one of {', '.join(Component.values)}.")
    if mode not in MODES[component]:
        raise InvalidInput(f"Mode {mode!r} is not a {component} training mode; choose one of {', '.join(MODES[component])}.")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise InvalidInput("Parameters must be a mapping of names to values.")
    if "api_key" in parameters:
        raise InvalidInput(
            "api_key is not a run parameter: run parameters are stored and shown with the run. "
            "Set OPENAI_API_KEY in the training worker's environment instead."
        )
    allowed = MODE_PARAMETERS[mode]
    unknown = sorted(str(name) for name in parameters if name not in allowed)
    if unknown:
        raise InvalidInput(
            f"Unknown parameter(s) for mode {mode!r}: {', '.join(unknown)}. Known: {', '.join(sorted(allowed))}."
        )
    for name, value in parameters.items():
        spec = PARAMETERS[name]
        if not spec.accepts(value):
            raise InvalidInput(f"Parameter {name!r} must be {spec.describe()}, got {value!r}.")
    if mode == "openai" and "base_url" in parameters and not parameters["base_url"].startswith(("http://", "https://")):
        raise InvalidInput(f"Parameter 'base_url' must start with http:// or https://, got {parameters['base_url']!r}.")
    if mode in LABEL_FREE_MODES and snapshot is not None:
        raise InvalidInput(f"Mode {mode!r} trains on the knowledge base's chunks, not on labels: it takes no snapshot.")
    if "min_query_words" in allowed:
        low = parameters.get("min_query_words", allowed["min_query_words"])
        high = parameters.get("max_query_words", allowed["max_query_words"])
        if high < low:
            raise InvalidInput(f"max_query_words ({high}) must be at least min_query_words ({low}).")
    if snapshot is not None and "heldout_share" in parameters and parameters["heldout_share"] != snapshot.heldout_share:
        raise InvalidInput(
            f"heldout_share applies only to a snapshot the run takes itself; snapshot {snapshot.pk} "
            f"holds out {snapshot.heldout_share:g}."
        )
    effective = {name: value for name, value in {**allowed, **parameters}.items() if value is not None}
    if mode == "openai" and "max_history_words" not in effective:
        # What serving shows the generator now; recorded with the run, so a later change of the
        # setting does not change what the run meant.
        effective["max_history_words"] = settings.RAGLOOP_CHAT_HISTORY_TOKENS
    if mode == "lsr" and "query_only" not in parameters:
        effective["query_only"] = True
    if "base_model" in allowed and "base_model" not in effective:
        if knowledge_base.generator_backend == KnowledgeBase.GeneratorBackend.HF and knowledge_base.generator_model:
            effective["base_model"] = knowledge_base.generator_model
        else:
            need = "scores chunks with" if mode == "lsr" else "trains an adapter for"
            raise InvalidInput(
                f"Mode {mode!r} {need} a local Hugging Face causal LM: pass base_model (its folder); the "
                f"knowledge base's generator is {knowledge_base.generator_backend!r}, not 'hf'."
            )
    if mode == "openai" and "model" not in effective:
        if knowledge_base.generator_backend == KnowledgeBase.GeneratorBackend.OPENAI and knowledge_base.generator_model:
            effective["model"] = knowledge_base.generator_model
        elif os.environ.get("OPENAI_MODEL"):
            effective["model"] = os.environ["OPENAI_MODEL"]
        else:
            raise InvalidInput("Mode 'openai' needs model: the name of the model to fine-tune (or OPENAI_MODEL set).")
    return effective


def check_trainable(*, snapshot: DatasetSnapshot, mode: str) -> None:
    """Refuse a snapshot whose train split holds nothing this mode can learn from."""
    train = list(snapshot.examples.filter(split=SnapshotExample.Split.TRAIN).values("relevant", "gold_answer", "retrieved", "partly"))
    if not train:
        raise InvalidInput(
            f"Snapshot {snapshot.pk} has no training examples: all {snapshot.example_count} are held out."
        )
    with_answer = [row for row in train if row["gold_answer"].strip()]
    if mode in ("contrastive", "contrastive_query_only"):
        if not any(row["relevant"] for row in train):
            raise InvalidInput(f"Snapshot {snapshot.pk} has no training example with a passage judged relevant.")
    elif mode == "cross_encoder":
        if not any(row["relevant"] or row["partly"] for row in train):
            raise InvalidInput(
                f"Snapshot {snapshot.pk} has no training example with a passage judged relevant or partly relevant."
            )
    elif mode == "lora_raft":
        if not any(row["relevant"] for row in with_answer):
            raise InvalidInput(
                f"Snapshot {snapshot.pk} has no training example with both a gold answer and a relevant passage."
            )
    elif mode == "openai":
        if not any(row["relevant"] or row["retrieved"] for row in with_answer):
            raise InvalidInput(f"Snapshot {snapshot.pk} has no training example with a gold answer and context.")
    elif not with_answer:  # lsr, lora_radit
        raise InvalidInput(f"Snapshot {snapshot.pk} has no training example with a gold answer.")


def check_corpus_trainable(*, knowledge_base: KnowledgeBase) -> None:
    """Refuse a label-free run on a knowledge base whose live space holds no embedded chunk."""
    from knowledge.models import ChunkEmbedding
    from knowledge.selectors import retriever_for

    live = retriever_for(knowledge_base=knowledge_base)
    if not ChunkEmbedding.objects.filter(space=live.space).exists():
        raise InvalidInput(
            f"Knowledge base {knowledge_base.slug!r} has no embedded chunks in its live space "
            f"({live.space.retriever_version}) to draw corpus pairs from; ingest documents first."
        )


def parameter_value_from_text(raw: str) -> Any:
    """A parameter typed as text (`--param key=value`, a form field): read as JSON when it is a
    number or true/false, else kept as text; `validated_parameters` then checks it."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(value, bool | int | float | str):
        return raw  # objects, lists and null are not parameter values: keep the text
    return value


@dataclass(frozen=True)
class ParameterField:
    """One parameter of a mode as a form shows it: its default (None: optional, no default)
    and what it accepts, in the words of the validation message."""

    name: str
    kind: str  # "int", "float", "bool", "str"
    default: Any
    accepts: str


def mode_parameter_fields(*, mode: str) -> list[ParameterField]:
    """The schema of one mode's parameters, in the order MODE_PARAMETERS lists them."""
    if mode not in MODE_PARAMETERS:
        raise InvalidInput(f"Mode {mode!r} is unknown; choose one of {', '.join(MODE_PARAMETERS)}.")
    return [
        ParameterField(name=name, kind=PARAMETERS[name].kind.__name__, default=default, accepts=PARAMETERS[name].describe())
        for name, default in MODE_PARAMETERS[mode].items()
    ]
