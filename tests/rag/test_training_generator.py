"""Tests for generator fine-tuning: RA-DIT and RAFT pairs, answer-only labels, the pad token, and LoRA
training of a tiny GPT-2 that HFGenerator then serves with its adapter."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from rag.conversation import ChatMessage
from rag.generation import SYSTEM_PROMPT, ContextPassage, HFGenerator, build_prompt, chat_messages, prompt_token_ids
from rag.training import TrainingCancelled
from rag.training.generator import (
    DEFAULT_MAX_HISTORY_TOKENS,
    IGNORED_LABEL,
    TRAINING_PAD_TOKEN,
    GeneratorTrainingExample,
    TokenizedPair,
    attention_projection_names,
    build_radit_examples,
    build_raft_examples,
    collate_pairs,
    ensure_distinct_pad_token,
    history_within_token_budget,
    load_trained_generator,
    tokenize_pair,
    train_lora,
)
from tests.rag.conftest import word_tokenizer

EXAMPLES = [
    GeneratorTrainingExample(
        query="When do refunds arrive?",
        answer="Refunds arrive within 14 days.",
        passages=["Refunds arrive within 14 days of the return.", "Our stores open at 9 am."],
    ),
    GeneratorTrainingExample(
        query="Is parking free?",
        answer="Parking is free for customers.",
        passages=["Parking is free for customers.", "We are hiring engineers in Berlin."],
    ),
    GeneratorTrainingExample(
        query="Where are engineers hired?",
        answer="Engineers are hired in Berlin.",
        passages=["We are hiring engineers in Berlin.", "Gift cards cannot be refunded."],
    ),
    GeneratorTrainingExample(
        query="Can gift cards be refunded?",
        answer="No, gift cards cannot be refunded.",
        passages=["Gift cards cannot be refunded.", "Refunds arrive within 14 days of the return."],
    ),
]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A random 2-layer GPT-2 whose tokenizer, like GPT-2's own, has no pad token."""
    texts = [
        " ".join(m["content"] for m in messages) + " " + target
        for messages, target in build_radit_examples(EXAMPLES) + build_raft_examples(EXAMPLES)
    ]
    tokenizer = word_tokenizer(texts, with_pad=False)
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=64, n_positions=256, vocab_size=len(tokenizer),
        bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def mean_answer_log_likelihood(generator: HFGenerator) -> float:
    scores = [
        generator.answer_log_likelihood(query=example.query, passage=ContextPassage(text=chunk), answer=example.answer)
        for example in EXAMPLES
        for chunk in example.passages
    ]
    return sum(scores) / len(scores)


# --- training pairs ---------------------------------------------------------------------


def test_radit_builder_makes_one_pair_per_chunk_with_the_chunk_before_the_question():
    pairs = build_radit_examples(EXAMPLES[:2])

    assert len(pairs) == 4
    assert pairs[0] == (
        [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": build_prompt(query="When do refunds arrive?", passages=[ContextPassage(text=EXAMPLES[0].passages[0])])},
        ],
        "Refunds arrive within 14 days.",
    )
    for (messages, answer), (example, chunk) in zip(
        pairs, [(example, chunk) for example in EXAMPLES[:2] for chunk in example.passages]
    ):
        prompt = messages[-1]["content"]
        assert answer == example.answer
        assert f"[1] {chunk}\n" in prompt and "[2]" not in prompt  # one chunk per pair
        assert prompt.index(chunk) < prompt.index(f"Query: {example.query}")


def test_radit_builder_keeps_an_example_without_chunks():
    [(messages, answer)] = build_radit_examples([GeneratorTrainingExample(query="q?", answer="a.", passages=[])])

    assert messages == chat_messages(query="q?", passages=[]) and answer == "a."
    assert messages[-1]["content"] == build_prompt(query="q?", passages=[])


def test_raft_builder_puts_all_documents_in_one_prompt_and_prefers_the_chain_of_thought():
    with_cot = GeneratorTrainingExample(
        query="Is parking free?",
        answer="Yes.",
        passages=["Distractor one.", "Parking is free for customers.", "Distractor two."],
        cot_answer="The context says ##begin_quote##Parking is free for customers.##end_quote## <ANSWER>: Yes.",
    )

    pairs = build_raft_examples([with_cot, EXAMPLES[0]])

    assert pairs[0] == (
        chat_messages(query="Is parking free?", passages=[ContextPassage(text=text) for text in with_cot.passages]),
        with_cot.cot_answer,
    )
    assert pairs[1][1] == EXAMPLES[0].answer
    assert "[3] Distractor two." in pairs[0][0][-1]["content"]


def test_radit_and_raft_pairs_carry_the_history_before_the_question():
    history = [
        {"role": "system", "content": "The app's own system message."},
        {"role": "user", "content": "When do refunds arrive?"},
        {"role": "assistant", "content": "Within 14 days."},
    ]
    follow_up = GeneratorTrainingExample(
        query="And for gift cards?",
        answer="Gift cards cannot be refunded.",
        passages=["Gift cards cannot be refunded.", "Our stores open at 9 am."],
        cot_answer="<ANSWER>: Gift cards cannot be refunded.",
        history=history,
    )
    earlier = [
        {"role": "user", "content": "When do refunds arrive?"},
        {"role": "assistant", "content": "Within 14 days."},
    ]

    radit = build_radit_examples([follow_up])
    [(raft_messages, raft_target)] = build_raft_examples([follow_up])

    assert follow_up.history == (ChatMessage("system", history[0]["content"]), *(ChatMessage(**m) for m in earlier))
    assert radit == [
        (
            [
                {"role": "system", "content": SYSTEM_PROMPT},
                *earlier,
                {"role": "user", "content": build_prompt(query="And for gift cards?", passages=[ContextPassage(text=chunk)])},
            ],
            "Gift cards cannot be refunded.",
        )
        for chunk in follow_up.passages
    ]
    assert raft_messages == [
        {"role": "system", "content": SYSTEM_PROMPT},
        *earlier,
        {"role": "user", "content": build_prompt(query="And for gift cards?", passages=[ContextPassage(text=t) for t in follow_up.passages])},
    ]
    assert raft_target == follow_up.cot_answer


# --- tokenisation -----------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}> {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def old_tokenize_pair(tokenizer, *, prompt: str, target: str, max_length: int) -> TokenizedPair:
    """tokenize_pair as it was before conversations, for a single-turn prompt (kept to compare)."""
    if tokenizer.chat_template:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    else:
        prompt_ids = list(tokenizer(prompt)["input_ids"])
    target_ids = (list(tokenizer(target, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id])[: max_length - 1]
    prompt_ids = prompt_ids[-(max_length - len(target_ids)) :]
    return TokenizedPair(input_ids=prompt_ids + target_ids, labels=[IGNORED_LABEL] * len(prompt_ids) + target_ids)


@pytest.mark.parametrize("with_chat_template", [False, True])
@pytest.mark.parametrize("max_length", [512, 24])
def test_a_single_turn_pair_tokenises_exactly_as_before(with_chat_template, max_length):
    texts = [SYSTEM_PROMPT, "<system> <user> <assistant>"]
    texts += [build_prompt(query=e.query, passages=[ContextPassage(text=p) for p in e.passages]) + " " + e.answer for e in EXAMPLES]
    tokenizer = word_tokenizer(texts, with_pad=True)
    if with_chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE

    new = [
        tokenize_pair(tokenizer, messages=messages, target=target, max_length=max_length, max_history_tokens=DEFAULT_MAX_HISTORY_TOKENS)
        for messages, target in build_radit_examples(EXAMPLES) + build_raft_examples(EXAMPLES)
    ]
    old = [
        old_tokenize_pair(tokenizer, prompt=build_prompt(query=e.query, passages=[ContextPassage(text=p)]), target=e.answer, max_length=max_length)
        for e in EXAMPLES
        for p in e.passages
    ] + [
        old_tokenize_pair(tokenizer, prompt=build_prompt(query=e.query, passages=[ContextPassage(text=p) for p in e.passages]), target=e.answer, max_length=max_length)
        for e in EXAMPLES
    ]  # fmt: skip

    assert new == old
    assert tokenizer.unk_token_id not in new[0].input_ids  # the test's vocabulary covers the prompt
    if with_chat_template and max_length == 512:
        assert tokenizer.decode(new[0].input_ids).startswith("< system >")  # the template was used


def test_the_history_budget_counts_the_tokenizers_tokens_and_drops_the_oldest_exchange_first():
    history = [
        ChatMessage("user", "one two"),  # 2 tokens
        ChatMessage("assistant", "three"),  # 1
        ChatMessage("user", "four, five!"),  # 2 words but 4 tokens
        ChatMessage("assistant", "six"),  # 1
    ]
    messages = chat_messages(query="seven?", passages=[ContextPassage(text="eight")], history=history)
    tokenizer = word_tokenizer([" ".join(m["content"] for m in messages)], with_pad=True)

    def kept(max_tokens):
        trimmed = history_within_token_budget(tokenizer, messages, max_tokens=max_tokens)
        assert trimmed[0] == messages[0] and trimmed[-1] == messages[-1]  # the system prompt and the question stay
        return [m["content"] for m in trimmed[1:-1]]

    assert kept(8) == ["one two", "three", "four, five!", "six"]
    assert kept(7) == kept(5) == ["four, five!", "six"]  # whole exchanges go, oldest first
    # 4 tokens hold "six" but not "four, five!" (a word count would have kept both)
    assert kept(4) == [] == kept(0)

    pair = tokenize_pair(tokenizer, messages=messages, target="nine", max_length=512, max_history_tokens=5)
    expected_prompt = prompt_token_ids(
        tokenizer, chat_messages(query="seven?", passages=[ContextPassage(text="eight")], history=history[2:])
    )
    assert pair.input_ids[: len(expected_prompt)] == expected_prompt
    whole = tokenize_pair(tokenizer, messages=messages, target="nine", max_length=512)
    assert whole.input_ids[: -2] == prompt_token_ids(tokenizer, messages)  # None: the history is kept whole


def test_a_training_prompt_is_what_hf_generator_feeds_the_model(tiny_base: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    history = [ChatMessage("user", "When do refunds arrive?"), ChatMessage("assistant", "Refunds arrive within 14 days.")]
    example = GeneratorTrainingExample(query="Is parking free?", answer="Parking is free for customers.", passages=EXAMPLES[1].passages, history=history)
    [(messages, target), _] = build_radit_examples([example])

    pair = tokenize_pair(tokenizer, messages=messages, target=target, max_length=256, max_history_tokens=DEFAULT_MAX_HISTORY_TOKENS)
    served = HFGenerator(model_path=tiny_base, device="cpu")._prompt_ids(
        messages=chat_messages(query="Is parking free?", passages=[ContextPassage(text=EXAMPLES[1].passages[0])], history=history),
        room_for=len(pair.input_ids) - pair.labels.count(IGNORED_LABEL),
    )

    assert pair.input_ids[: pair.labels.count(IGNORED_LABEL)] == served[0].tolist()
    decoded = tokenizer.decode(served[0])
    assert decoded.index("When do refunds arrive") < decoded.index("Context information") < decoded.index("Is parking free")


def test_pad_token_is_added_when_missing_or_equal_to_eos():
    no_pad = word_tokenizer(["a b"], with_pad=False)
    pad_is_eos = word_tokenizer(["a b"], with_pad=False)
    pad_is_eos.pad_token = pad_is_eos.eos_token
    own_pad = word_tokenizer(["a b"], with_pad=True)

    assert ensure_distinct_pad_token(no_pad) and ensure_distinct_pad_token(pad_is_eos)
    assert not ensure_distinct_pad_token(own_pad)
    for tokenizer in (no_pad, pad_is_eos, own_pad):
        assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert no_pad.pad_token == TRAINING_PAD_TOKEN and own_pad.pad_token == "[PAD]"


def test_labels_cover_the_answer_and_eos_but_not_the_prompt_or_padding():
    tokenizer = word_tokenizer(["Query : x Answer : Paris is nice short"], with_pad=False)
    ensure_distinct_pad_token(tokenizer)
    words = ["Query", ":", "x", "Answer", "Paris", "is", "nice", "short"]
    ids = {word: tokenizer.convert_tokens_to_ids(word) for word in words}
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    long = tokenize_pair(tokenizer, messages="Query : x Answer :", target="Paris is nice", max_length=64)
    short = tokenize_pair(tokenizer, messages="Answer :", target="short", max_length=64)
    batch = collate_pairs([long, short], pad_token_id=pad)

    prompt_ids = [ids["Query"], ids[":"], ids["x"], ids["Answer"], ids[":"]]
    assert long == TokenizedPair(
        input_ids=prompt_ids + [ids["Paris"], ids["is"], ids["nice"], eos],
        labels=[IGNORED_LABEL] * 5 + [ids["Paris"], ids["is"], ids["nice"], eos],
    )
    assert batch["input_ids"].tolist() == [long.input_ids, [ids["Answer"], ids[":"], ids["short"], eos] + [pad] * 5]
    assert batch["attention_mask"].tolist() == [[1] * 9, [1] * 4 + [0] * 5]
    assert batch["labels"].tolist() == [long.labels, [IGNORED_LABEL] * 2 + [ids["short"], eos] + [IGNORED_LABEL] * 5]


def test_truncation_keeps_the_end_of_the_prompt():
    tokenizer = word_tokenizer(["a b c d e f"], with_pad=True)

    kept = tokenize_pair(tokenizer, messages="a b c d", target="e", max_length=4)
    cut_answer = tokenize_pair(tokenizer, messages="a b", target="c d e f", max_length=3)

    assert tokenizer.convert_ids_to_tokens(kept.input_ids) == ["c", "d", "e", "[EOS]"]
    # An answer longer than the window keeps one prompt token and loses its EOS: it did not end.
    assert tokenizer.convert_ids_to_tokens(cut_answer.input_ids) == ["b", "c", "d"]
    assert cut_answer.labels[0] == IGNORED_LABEL


def test_attention_projections_are_found_by_model_family(tiny_base: Path):
    assert attention_projection_names(GPT2LMHeadModel.from_pretrained(tiny_base)) == ["c_attn"]
    with pytest.raises(ValueError, match="could not find the attention projections"):
        attention_projection_names(torch.nn.Sequential(torch.nn.Linear(2, 2)))


# --- LoRA training ----------------------------------------------------------------------


@pytest.mark.slow
def test_lora_training_raises_the_answer_likelihood_and_loads_in_hf_generator(tiny_base: Path, tmp_path: Path):
    before = mean_answer_log_likelihood(HFGenerator(model_path=tiny_base, device="cpu"))
    fractions = []

    result = train_lora(
        base_model_path=tiny_base,
        pairs=build_radit_examples(EXAMPLES),
        output_path=tmp_path / "generator",
        mode="radit",
        epochs=10,
        learning_rate=1e-2,
        # A random model's attention barely reaches its output, so adapt the MLP too; the
        # automatic choice (c_attn) is tested on its own above.
        target_modules=["c_attn", "c_proj", "c_fc"],
        batch_size=4,
        device="cpu",
        progress=lambda fraction, metrics: fractions.append(fraction),
    )

    base_path, adapter_path = load_trained_generator(tmp_path / "generator")
    assert (base_path, adapter_path) == (tiny_base, tmp_path / "generator")
    after = mean_answer_log_likelihood(HFGenerator(model_path=base_path, adapter_path=adapter_path, device="cpu"))
    assert after > before + 0.4
    assert result.steps == 20 and fractions == [step / 20 for step in range(1, 21)]
    assert all(math.isfinite(point["loss"]) for point in result.training_curve)
    assert result.training_curve[-1]["loss"] < result.training_curve[0]["loss"]

    description = json.loads((tmp_path / "generator" / "generator.json").read_text())
    assert description["base_model_path"] == str(tiny_base) and description["mode"] == "radit"
    assert description["pad_token_added_for_training"] and description["embeddings_resized_for_training"]
    assert description["parameters"]["target_modules"] == ["c_attn", "c_proj", "c_fc"]
    # The adapter holds only LoRA weights and the base's tokenizer, so it fits the unresized base.
    saved_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "generator")
    assert len(saved_tokenizer) == len(AutoTokenizer.from_pretrained(tiny_base))
    assert (tmp_path / "generator" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_lora_training_can_be_cancelled_and_repeats_with_a_seed(tiny_base: Path, tmp_path: Path):
    def run(seed: int, stop_after: int) -> list[tuple[float, dict]]:
        reported: list[tuple[float, dict]] = []
        with pytest.raises(TrainingCancelled) as cancelled:
            train_lora(
                base_model_path=tiny_base,
                pairs=build_raft_examples(EXAMPLES),
                output_path=tmp_path / "generator",
                batch_size=1,
                seed=seed,
                device="cpu",
                progress=lambda fraction, metrics: reported.append((fraction, metrics)),
                should_stop=lambda: len(reported) >= stop_after,
            )
        assert cancelled.value.step == stop_after + 1
        return reported

    reported = run(seed=5, stop_after=2)

    assert [fraction for fraction, _ in reported] == [0.25, 0.5]
    assert not (tmp_path / "generator").exists()
    assert run(seed=5, stop_after=1)[0][1]["loss"] == reported[0][1]["loss"]


def test_train_lora_rejects_bad_arguments(tiny_base: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="unknown generator training mode 'rlhf'"):
        train_lora(base_model_path=tiny_base, pairs=[("p", "t")], output_path=tmp_path, mode="rlhf")
    with pytest.raises(ValueError, match="at least one"):
        train_lora(base_model_path=tiny_base, pairs=[], output_path=tmp_path)
    with pytest.raises(FileNotFoundError, match="generator model directory not found"):
        train_lora(base_model_path=tmp_path / "missing", pairs=[("p", "t")], output_path=tmp_path)
