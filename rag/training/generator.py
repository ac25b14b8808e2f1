"""Generator fine-tuning: LoRA adapters for a local Hugging Face causal LM, in RA-DIT or RAFT style.

Training examples are (messages, target) pairs: the chat is built with
rag.generation.chat_messages (system prompt, the conversation's earlier messages, then the
question with its context) and laid out as tokens with rag.generation.prompt_token_ids, the
very functions HFGenerator serves with, so the model learns on exactly what it will be fed.
A conversation's history is bounded by a budget of tokens counted with the model's own
tokenizer, oldest exchanges dropped first. The loss covers only the answer tokens and a
closing EOS.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.conversation import ChatMessage, history_within_budget
from rag.datasets import chat_history
from rag.generation import SYSTEM_PROMPT, ContextPassage, chat_messages, prompt_token_ids
from rag.training import ProgressCallback, StopCheck, pick_device, seed_everything
from rag.training.checkpoints import Checkpointing, inputs_fingerprint
from rag.training.hf_trainer import (
    bf16_available,
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

GENERATOR_DESCRIPTION = "generator.json"
GENERATOR_TRAINING_MODES = ("radit", "raft", "custom")
TRAINING_PAD_TOKEN = "<|pad|>"
IGNORED_LABEL = -100  # the index torch's cross-entropy skips
# Tokens of a conversation's earlier messages a training pair keeps (newest whole exchanges,
# oldest dropped first). With the default max_length of 512 it leaves room for the system
# prompt, a passage or two, the question and the answer; raise both together for long chats.
DEFAULT_MAX_HISTORY_TOKENS = 256

# A chat as rag.generation.chat_messages builds it, and the target the model learns to write.
TrainingPair = tuple[list[dict], str]

# Attention projection names by model family, most specific first: LoRA on the attention
# projections is the usual, cheap choice (the LoRA paper adapts W_q and W_v).
ATTENTION_PROJECTIONS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "v_proj"),  # Llama, Mistral, Qwen, Gemma, OPT, Phi-2
    ("c_attn",),  # GPT-2 (a fused query/key/value Conv1D)
    ("query_key_value",),  # GPT-NeoX, Falcon, BLOOM
    ("qkv_proj",),  # Phi-3
    ("Wqkv",),  # MPT
    ("query", "value"),
    ("q", "v"),  # T5-style
)


@dataclass(frozen=True)
class GeneratorTrainingExample:
    """A curated question with its gold answer and the passages to train with.

    `query` is the question as the user asked it (serving gives the generator the user's words,
    not the self-contained rewrite retrieval used) and `history` the conversation's messages
    before it (ChatMessages or {"role", "content"} dicts; system messages are not part of the
    chat, as in serving), empty for a turn on its own.

    RA-DIT mode: `passages` are the top-k retrieved chunks. RAFT mode: the context documents
    the caller assembled (oracle plus distractors), and `cot_answer` the chain-of-thought
    answer quoting them, when there is one.
    """

    query: str
    answer: str
    passages: list[str]
    cot_answer: str | None = None
    history: Sequence[ChatMessage] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "history", tuple(chat_history(self.history)))


@dataclass
class GeneratorTrainingResult:
    """Where a trained adapter was saved, how its loss went, and what it was trained with."""

    output_path: Path
    training_curve: list[dict[str, float]]
    parameters: dict[str, Any]
    steps: int
    resumed_from_step: int = 0  # > 0: the run went on from a checkpoint saved at that step


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of prompt + target, and labels that are IGNORED_LABEL everywhere but the target."""

    input_ids: list[int]
    labels: list[int]


# --- training pairs --------------------------------------------------------------------


def build_radit_examples(examples: Sequence[GeneratorTrainingExample]) -> list[TrainingPair]:
    """RA-DIT LM-ft pairs: one (messages, answer) per retrieved chunk, the chunk alone as context
    after the conversation's history.

    Seeing each chunk separately, good and bad, teaches the model to use a relevant passage
    and to fall back on what it knows when the passage is not. An example with no chunks
    still yields one pair, with the empty-context prompt.
    """
    pairs = []
    for example in examples:
        contexts = [[ContextPassage(text=chunk)] for chunk in example.passages] or [[]]
        pairs.extend(
            (chat_messages(query=example.query, passages=context, history=example.history), example.answer)
            for context in contexts
        )
    return pairs


def build_raft_examples(examples: Sequence[GeneratorTrainingExample]) -> list[TrainingPair]:
    """RAFT pairs: one per example, all its documents in the prompt after the history, the chain
    of thought as target."""
    return [
        (
            chat_messages(
                query=example.query,
                passages=[ContextPassage(text=text) for text in example.passages],
                history=example.history,
            ),
            example.cot_answer or example.answer,
        )
        for example in examples
    ]


# --- tokenisation ----------------------------------------------------------------------


def ensure_distinct_pad_token(tokenizer: Any) -> bool:
    """Give the tokenizer a padding token that is not EOS; True if one had to be added.

    With pad == EOS, a collator that masks padding by token id also masks the EOS that
    ends each answer, and the model never learns to stop.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the generator's tokenizer has no EOS token, so it cannot learn where answers end")
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    tokenizer.add_special_tokens({"pad_token": TRAINING_PAD_TOKEN})
    return True


def chat_of(prompt: str | Sequence[dict]) -> list[dict]:
    """A pair's chat: `prompt` as it is when it is one, else a plain prompt string as the single
    user message after the system prompt (what HFGenerator sends for a turn on its own)."""
    if isinstance(prompt, str):
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    return list(prompt)


def history_within_token_budget(tokenizer: Any, messages: Sequence[dict], *, max_tokens: int) -> list[dict]:
    """`messages` (a chat_messages chat) with its earlier user/assistant messages cut to the
    newest whole exchanges whose tokens, counted with `tokenizer`, fit `max_tokens`
    (rag.conversation.history_within_budget); the system prompt and the final question stay."""
    *earlier, question = messages
    system = [m for m in earlier if m["role"] == "system"]
    history = chat_history([m for m in earlier if m["role"] != "system"])
    if not history:
        return list(messages)
    kept = history_within_budget(
        history,
        max_tokens=max_tokens,
        count_tokens=lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
    )
    return [*system, *(m.as_dict() for m in kept), question]


def tokenize_pair(
    tokenizer: Any,
    *,
    messages: str | Sequence[dict],
    target: str,
    max_length: int,
    max_history_tokens: int | None = None,
) -> TokenizedPair:
    """Prompt and target ids, EOS after the target, cut to max_length.

    The prompt is the chat `messages` (see `chat_of`) laid out by rag.generation.prompt_token_ids,
    as HFGenerator serves it, after its history is cut to `max_history_tokens` (None: kept
    whole). The target is tokenised on its own, as HFGenerator.answer_log_likelihood does, so
    the training loss and the evaluation score read the same tokens. A prompt still too long
    loses its beginning (the oldest context), never the question at its end.
    """
    if max_length < 2:
        raise ValueError("max_length must leave room for at least one prompt and one target token")
    chat = chat_of(messages)
    if max_history_tokens is not None:
        chat = history_within_token_budget(tokenizer, chat, max_tokens=max_history_tokens)
    prompt_ids = prompt_token_ids(tokenizer, chat)
    target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    # An answer longer than the window is cut, EOS included: it did not end there.
    target_ids = target_ids[: max_length - 1]
    prompt_ids = prompt_ids[-(max_length - len(target_ids)) :]
    return TokenizedPair(
        input_ids=prompt_ids + target_ids,
        labels=[IGNORED_LABEL] * len(prompt_ids) + target_ids,
    )


def collate_pairs(pairs: Sequence[TokenizedPair], *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch: input_ids, attention_mask, and labels with padding ignored.

    Right padding keeps every real token before the padding, so under causal attention no
    real position ever sees a pad token.
    """
    import torch

    width = max(len(pair.input_ids) for pair in pairs)
    input_ids, attention_mask, labels = [], [], []
    for pair in pairs:
        padding = width - len(pair.input_ids)
        input_ids.append(pair.input_ids + [pad_token_id] * padding)
        attention_mask.append([1] * len(pair.input_ids) + [0] * padding)
        labels.append(pair.labels + [IGNORED_LABEL] * padding)
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def answer_token_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, vocabulary_size: int, total_tokens: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy of the labelled (answer) tokens; the logits at i predict token i + 1.

    Only the first `vocabulary_size` logits count: a pad row added for training is not part
    of the vocabulary the model answers with, so it must not take probability mass here.
    With `total_tokens` the sum is divided by it instead of by this batch's own count: the
    answer tokens of every batch one optimiser step accumulates.
    """
    import torch

    predictions = logits[:, :-1, :vocabulary_size].float()
    if total_tokens is None:
        return torch.nn.functional.cross_entropy(
            predictions.reshape(-1, vocabulary_size), labels[:, 1:].reshape(-1), ignore_index=IGNORED_LABEL
        )
    summed = torch.nn.functional.cross_entropy(
        predictions.reshape(-1, vocabulary_size), labels[:, 1:].reshape(-1), ignore_index=IGNORED_LABEL, reduction="sum"
    )
    return summed / torch.as_tensor(total_tokens, device=summed.device, dtype=summed.dtype)


# --- model -----------------------------------------------------------------------------


def attention_projection_names(language_model: Any) -> list[str]:
    """The attention projection module names of a model's family, for LoRA to adapt."""
    import torch
    from transformers.pytorch_utils import Conv1D

    present = {
        name.rsplit(".", 1)[-1]
        for name, module in language_model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D)
    }
    for candidates in ATTENTION_PROJECTIONS:
        if all(name in present for name in candidates):
            return list(candidates)
    raise ValueError(
        "could not find the attention projections of this model; pass target_modules, "
        f"choosing from its linear layers: {', '.join(sorted(present))}"
    )


def load_trained_generator(path: str | Path) -> tuple[Path, Path]:
    """(base model directory, adapter directory) of a trained generator, for HFGenerator."""
    path = Path(path)
    description_path = path / GENERATOR_DESCRIPTION
    try:
        description = json.loads(description_path.read_text(encoding="utf-8"))
        return Path(description["base_model_path"]), path
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is not a trained generator: {GENERATOR_DESCRIPTION} is missing") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{description_path} is not a valid generator description: {error}") from None


def train_lora(
    *,
    base_model_path: str | Path,
    pairs: Sequence[tuple[str | Sequence[dict], str]],
    output_path: str | Path,
    mode: str = "custom",
    epochs: int = 1,
    learning_rate: float = 1e-4,
    warmup_ratio: float = 0.0,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    target_modules: list[str] | None = None,
    batch_size: int = 4,
    gradient_accumulation_steps: int = 1,
    max_length: int = 512,
    max_history_tokens: int = DEFAULT_MAX_HISTORY_TOKENS,
    seed: int = 0,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    checkpointing: Checkpointing | None = None,
) -> GeneratorTrainingResult:
    """Train a LoRA adapter on (messages, target) pairs and save it for HFGenerator.

    A pair's messages are a chat as rag.generation.chat_messages builds it (a plain prompt
    string stands for that prompt alone after the system prompt); its history is cut to
    `max_history_tokens` tokens of the model's tokenizer, oldest exchanges first.
    `mode` records how the pairs were built ("radit", "raft" or "custom"). The output folder
    holds the peft adapter, the base model's tokenizer and generator.json; load it with
    HFGenerator(model_path=base_model_path, adapter_path=output_path).

    Padding: when the tokenizer has no pad token distinct from EOS, TRAINING_PAD_TOKEN is
    added and the embeddings grow by a row for training only. The pad row is never read by a
    real position (right padding, causal attention) and is left out of the loss's softmax,
    so the adapter is exact on the unresized base model: only the LoRA weights are saved,
    together with the base's own tokenizer, and the adapter loads on the base as it is.

    Trained on transformers' `Trainer` with a completion-only loss: AdamW (weight decay 0.01),
    linear warm-up and decay, gradients clipped at norm 1, `gradient_accumulation_steps`
    batches per optimiser step, bf16 mixed precision on a GPU that has it, several GPUs when
    launched with `accelerate launch`; `checkpointing` uses the library's checkpoints
    (rag.training.hf_trainer), so a killed run goes on from its last one.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
    from transformers.pytorch_utils import Conv1D

    if mode not in GENERATOR_TRAINING_MODES:
        valid = ", ".join(GENERATOR_TRAINING_MODES)
        raise ValueError(f"unknown generator training mode {mode!r}; valid modes: {valid}")
    if not pairs:
        raise ValueError("LoRA training needs at least one (prompt, target) pair")
    if epochs < 1 or batch_size < 1 or gradient_accumulation_steps < 1:
        raise ValueError("epochs, batch_size and gradient_accumulation_steps must be at least 1")
    if max_history_tokens < 0:
        raise ValueError(f"max_history_tokens must be 0 or more, got {max_history_tokens}")
    base_model_path = Path(base_model_path)
    if not base_model_path.is_dir():
        # Without this check transformers would treat the path as a hub name.
        raise FileNotFoundError(f"generator model directory not found: {base_model_path}")

    device = pick_device(device)
    seed_everything(seed)
    output_path = Path(output_path)
    tokenizer = AutoTokenizer.from_pretrained(base_model_path, local_files_only=True)
    # Weights in float32; on a GPU with bf16 the trainer computes in it (mixed precision).
    mixed_precision = bf16_available(device)
    language_model = AutoModelForCausalLM.from_pretrained(base_model_path, local_files_only=True, dtype=torch.float32)

    vocabulary_size = language_model.get_input_embeddings().weight.shape[0]
    pad_token_added = ensure_distinct_pad_token(tokenizer)
    embeddings_resized = len(tokenizer) > vocabulary_size
    if embeddings_resized:
        # The pad row's values never matter (see the docstring), so skip the costly mean init.
        language_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)

    # GPT-2 style configs map max_position_embeddings to n_positions.
    window = getattr(language_model.config, "max_position_embeddings", None)
    max_length = min(max_length, window) if window else max_length
    tokenized = [
        tokenize_pair(
            tokenizer, messages=messages, target=target, max_length=max_length, max_history_tokens=max_history_tokens
        )
        for messages, target in pairs
    ]

    target_modules = list(target_modules) if target_modules else attention_projection_names(language_model)
    # GPT-2's projections are Conv1D, whose weight is stored transposed.
    fan_in_fan_out = any(
        isinstance(module, Conv1D)
        for name, module in language_model.named_modules()
        if name.rsplit(".", 1)[-1] in target_modules
    )
    lora_config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type="CAUSAL_LM",
    )
    language_model = get_peft_model(language_model, lora_config)
    language_model.to(device)

    def completion_only_loss(outputs, labels, num_items_in_batch=None):
        # Trainer's hook for a custom loss; num_items_in_batch counts the answer tokens of all the
        # batches one optimiser step accumulates, so accumulating gives the whole batch's mean.
        return answer_token_loss(outputs.logits, labels, vocabulary_size=vocabulary_size, total_tokens=num_items_in_batch)

    fingerprint = inputs_fingerprint(
        "lora", str(base_model_path), mode, tokenized, epochs, batch_size, gradient_accumulation_steps, learning_rate,
        warmup_ratio, lora_r, lora_alpha, lora_dropout, target_modules, seed,
    )  # fmt: skip
    resume_from = checkpoint_to_resume(checkpointing, fingerprint)
    scratch = output_path.parent / f".{output_path.name}.trainer"
    arguments = TrainingArguments(
        **checkpoint_arguments(checkpointing, scratch=scratch),
        **optimisation_arguments(
            rows=len(tokenized), epochs=epochs, batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
            learning_rate=learning_rate, warmup_ratio=warmup_ratio, seed=seed, device=device,
        ),
        remove_unused_columns=False,
    )  # fmt: skip
    trainer = Trainer(
        model=language_model, args=arguments, train_dataset=_Pairs(tokenized), compute_loss_func=completion_only_loss,
        data_collator=lambda batch: collate_pairs(batch, pad_token_id=tokenizer.pad_token_id),
        callbacks=[trainer_callback(progress=progress, should_stop=should_stop)],
    )  # fmt: skip
    quiet(trainer)
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    curve = loss_curve(trainer.state)
    language_model.eval()

    output_path.mkdir(parents=True, exist_ok=True)
    # Only the LoRA weights: the training pad row is not part of the served model (see above).
    language_model.save_pretrained(str(output_path), save_embedding_layers=False)
    AutoTokenizer.from_pretrained(base_model_path, local_files_only=True).save_pretrained(output_path)
    parameters = {
        "epochs": epochs,
        "learning_rate": learning_rate,
        "warmup_ratio": warmup_ratio,
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "target_modules": target_modules,
        "batch_size": batch_size,
        "max_length": max_length,
        "max_history_tokens": max_history_tokens,
        "seed": seed,
        "pairs": len(pairs),
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "mixed_precision": "bf16" if mixed_precision else "no",
        "resumed_from_step": resumed_step(resume_from),
    }
    description = {
        "format": "peft-lora",
        "base_model_path": str(base_model_path),
        "mode": mode,
        "parameters": parameters,
        "training_pad_token": TRAINING_PAD_TOKEN if pad_token_added else tokenizer.pad_token,
        "pad_token_added_for_training": pad_token_added,
        "embeddings_resized_for_training": embeddings_resized,
    }
    (output_path / GENERATOR_DESCRIPTION).write_text(
        json.dumps(description, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    remove_checkpoints(checkpointing, scratch=scratch)  # not part of the adapter
    return GeneratorTrainingResult(
        output_path=output_path,
        training_curve=curve,
        parameters=parameters,
        steps=len(curve),
        resumed_from_step=resumed_step(resume_from),
    )


class _Pairs:
    """The tokenized pairs as the map-style dataset Trainer samples from."""

    def __init__(self, pairs: list[TokenizedPair]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> TokenizedPair:
        return self.pairs[index]
