"""Tests for the prompt, the three generator backends and the backend factory."""

import json
import math
import socket
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rag.conversation import ChatMessage, condense_heuristic, condense_prompt
from rag.generation import (
    NO_ANSWER_TEXT,
    SYSTEM_PROMPT,
    ContextPassage,
    ExtractiveGenerator,
    GeneratorError,
    HFGenerator,
    OpenAIChatGenerator,
    build_prompt,
    chat_messages,
    make_generator,
    prompt_text,
    prompt_token_ids,
)
from tests.rag.conftest import JsonReplyHandler, reference_mean_log_prob, tiny_tokenizer

PASSAGES = [
    ContextPassage(
        title="Store hours",
        text="Our stores open at 9 am on weekdays. Parking is free for customers.",
        source_id="hours.md",
    ),
    ContextPassage(
        title="Returns",
        text="Shipping is free on orders over 50 euros. Refunds are issued within 14 days of receiving the return. "
        "Gift cards cannot be refunded.",
        source_id="returns.md",
    ),
    ContextPassage(title="Careers", text="We are hiring engineers in Berlin.", source_id="jobs.md"),
]


# --- prompt -------------------------------------------------------------------------------


def test_prompt_puts_numbered_context_before_the_query():
    prompt = build_prompt(
        query="When do stores open?",
        passages=[ContextPassage(title="Hours", text="Stores open at 9."), ContextPassage(text="No title here.")],
    )

    assert prompt == (
        "Context information is below.\n"
        "---------------------\n"
        "[1] Hours\n"
        "Stores open at 9.\n"
        "\n"
        "[2] No title here.\n"
        "---------------------\n"
        "Given the context information and not prior knowledge, answer the query.\n"
        "Query: When do stores open?\n"
        "Answer: "
    )


# --- extractive ---------------------------------------------------------------------------


def test_extractive_picks_the_answering_sentence_and_cites_its_passage():
    answer = ExtractiveGenerator().generate(query="How long do refunds take?", passages=PASSAGES)

    assert answer.text == "Refunds are issued within 14 days of receiving the return. [2]"
    assert answer.cited_passages == [2]
    assert (answer.backend, answer.model, answer.log_likelihood) == ("extractive", "extractive-v1", None)


def test_extractive_keeps_passage_order_when_two_sentences_answer():
    answer = ExtractiveGenerator().generate(query="Is parking or shipping free?", passages=PASSAGES)

    assert answer.text == "Parking is free for customers. [1] Shipping is free on orders over 50 euros. [2]"
    assert answer.cited_passages == [1, 2]


def test_extractive_leaves_out_weakly_matching_sentences():
    passages = [
        ContextPassage(text="Gift card refunds are not possible."),
        ContextPassage(text="Refunds are issued within 14 days."),
        ContextPassage(text="Returns are accepted in all stores."),
    ]

    answer = ExtractiveGenerator().generate(query="When are refunds issued?", passages=passages)

    assert answer.text == "Refunds are issued within 14 days. [2]"
    assert answer.cited_passages == [2]


def test_extractive_rank_only_breaks_ties():
    weak_first = [
        ContextPassage(text="Refunds exist."),
        ContextPassage(text="Nothing relevant here."),
        ContextPassage(text="Refunds are issued within 14 days."),
    ]
    identical = [ContextPassage(text="Refunds are issued within 14 days.")] * 2
    generator = ExtractiveGenerator(max_sentences=1)

    assert generator.generate(query="When are refunds issued?", passages=weak_first).cited_passages == [3]
    assert generator.generate(query="When are refunds issued?", passages=identical).cited_passages == [1]


def test_extractive_without_supporting_sentence_says_so():
    generator = ExtractiveGenerator()

    unrelated = generator.generate(query="What is the capital of Peru?", passages=PASSAGES)
    no_passages = generator.generate(query="How long do refunds take?", passages=[])
    only_stopwords = generator.generate(query="what is it?", passages=PASSAGES)

    for answer in (unrelated, no_passages, only_stopwords):
        assert answer.text == NO_ANSWER_TEXT
        assert answer.cited_passages == []


def test_extractive_reads_only_the_top_passages():
    answer = ExtractiveGenerator(max_passages=2).generate(query="Are you hiring engineers?", passages=PASSAGES)

    assert answer.text == NO_ANSWER_TEXT


# --- OpenAI-compatible --------------------------------------------------------------------


class FakeChatServer(JsonReplyHandler):
    """Answers /ok/v1, /unauthorized/v1 and /malformed/v1 chat completions like a real server."""

    requests: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeChatServer.requests.append(
            {"path": self.path, "authorization": self.headers.get("Authorization"), "body": body}
        )
        if self.path.startswith("/unauthorized/"):
            self.reply_raw(401, json.dumps({"error": {"message": "Incorrect API key provided"}}).encode())
        elif self.path.startswith("/malformed/"):
            self.reply_raw(200, b"<html>not json</html>")
        else:
            completion = {"choices": [{"message": {"role": "assistant", "content": " Within 14 days [2], see [9]. "}}]}
            self.reply_raw(200, json.dumps(completion).encode())


@pytest.fixture(scope="module")
def chat_server_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_openai_backend_sends_chat_request_and_parses_answer(chat_server_url: str):
    FakeChatServer.requests.clear()
    generator = OpenAIChatGenerator(base_url=f"{chat_server_url}/ok/v1/", model="llama-3-8b", api_key="sk-test")

    answer = generator.generate(query="How long do refunds take?", passages=PASSAGES)

    assert answer.text == "Within 14 days [2], see [9]."
    assert answer.cited_passages == [2]  # [9] is not a passage
    assert (answer.backend, answer.model) == ("openai", "llama-3-8b")
    [request] = FakeChatServer.requests
    assert request["path"] == "/ok/v1/chat/completions"
    assert request["authorization"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "llama-3-8b"
    assert body["temperature"] == 0
    assert [message["role"] for message in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"] == SYSTEM_PROMPT
    assert body["messages"][1]["content"] == build_prompt(query="How long do refunds take?", passages=PASSAGES)


def test_openai_backend_without_key_sends_no_authorization(chat_server_url: str):
    FakeChatServer.requests.clear()

    OpenAIChatGenerator(base_url=f"{chat_server_url}/ok/v1", model="m").generate(query="q", passages=[])

    assert FakeChatServer.requests[0]["authorization"] is None


def test_openai_backend_reports_http_errors(chat_server_url: str):
    generator = OpenAIChatGenerator(base_url=f"{chat_server_url}/unauthorized/v1", model="m", api_key="sk-secret")

    with pytest.raises(GeneratorError, match=r"/unauthorized/v1/chat/completions returned 401: Incorrect API key") as raised:
        generator.generate(query="q", passages=PASSAGES)
    assert "sk-secret" not in str(raised.value)


def test_openai_backend_reports_malformed_responses(chat_server_url: str):
    generator = OpenAIChatGenerator(base_url=f"{chat_server_url}/malformed/v1", model="m")

    with pytest.raises(GeneratorError, match="returned a response that is not a chat completion"):
        generator.generate(query="q", passages=PASSAGES)


def test_openai_backend_reports_unreachable_endpoints():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    generator = OpenAIChatGenerator(base_url=f"http://127.0.0.1:{closed_port}/v1", model="m", timeout=5)

    with pytest.raises(GeneratorError, match=r"could not reach OpenAI-compatible endpoint http://127\.0\.0\.1"):
        generator.generate(query="q", passages=PASSAGES)


def test_openai_backend_refuses_non_http_urls():
    with pytest.raises(ValueError, match="must start with http"):
        OpenAIChatGenerator(base_url="file:///etc", model="m")


# --- local Hugging Face model -------------------------------------------------------------

QUERY = "What is the capital of France?"
PASSAGE = ContextPassage(title="France", text="Paris is the capital of France.")
TRAINED_ANSWER = "Paris is the capital"
OTHER_ANSWER = "Berlin hiring engineers"


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory) -> Path:
    """A 2-layer GPT-2 that has briefly learnt to answer QUERY with TRAINED_ANSWER."""
    prompt = build_prompt(query=QUERY, passages=[PASSAGE])
    tokenizer = tiny_tokenizer([prompt, build_prompt(query=QUERY, passages=[]), TRAINED_ANSWER, OTHER_ANSWER])
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=len(tokenizer),
        bos_token_id=eos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)

    example = torch.tensor([tokenizer(prompt + TRAINED_ANSWER)["input_ids"]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        optimizer.zero_grad()
        model(input_ids=example, labels=example).loss.backward()
        optimizer.step()
    model.eval()

    path = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_hf_answer_log_likelihood_matches_hand_computation(tiny_model_path: Path):
    generator = HFGenerator(model_path=tiny_model_path, device="cpu")

    score = generator.answer_log_likelihood(query=QUERY, passage=PASSAGE, answer=TRAINED_ANSWER)

    expected = reference_mean_log_prob(
        tiny_model_path, prompt=build_prompt(query=QUERY, passages=[PASSAGE]), answer=TRAINED_ANSWER
    )
    assert score == pytest.approx(expected, abs=1e-5)
    assert math.isfinite(score) and score < 0


def test_hf_answer_log_likelihood_after_a_conversation_reads_the_history_as_generate_would(tiny_model_path: Path):
    from rag.conversation import ChatMessage
    from rag.generation import chat_messages, prompt_text

    generator = HFGenerator(model_path=tiny_model_path, device="cpu")
    history = [ChatMessage("user", "When do stores open?"), ChatMessage("assistant", "At 9 am.")]

    score = generator.answer_log_likelihood(query=QUERY, passage=PASSAGE, answer=TRAINED_ANSWER, history=history)

    prompt = prompt_text(chat_messages(query=QUERY, passages=[PASSAGE], history=history))
    assert prompt.startswith("User: When do stores open?\nAssistant: At 9 am.\nContext information")
    expected = reference_mean_log_prob(tiny_model_path, prompt=prompt, answer=TRAINED_ANSWER)
    assert score == pytest.approx(expected, abs=1e-5)
    assert score != pytest.approx(generator.answer_log_likelihood(query=QUERY, passage=PASSAGE, answer=TRAINED_ANSWER))


def test_hf_trained_answer_is_more_likely_than_another(tiny_model_path: Path):
    generator = HFGenerator(model_path=tiny_model_path, device="cpu")

    trained = generator.answer_log_likelihood(query=QUERY, passage=PASSAGE, answer=TRAINED_ANSWER)
    other = generator.answer_log_likelihood(query=QUERY, passage=PASSAGE, answer=OTHER_ANSWER)
    without_passage = generator.answer_log_likelihood(query=QUERY, passage=None, answer=TRAINED_ANSWER)

    assert trained > other + 1.0
    assert math.isfinite(without_passage) and without_passage != pytest.approx(trained)


def test_hf_generate_continues_the_prompt(tiny_model_path: Path):
    generator = HFGenerator(model_path=tiny_model_path, max_new_tokens=6, device="cpu")

    answer = generator.generate(query=QUERY, passages=[PASSAGE])

    # The model has memorised the answer, so greedy decoding starts with it.
    assert answer.text.startswith("Paris is")
    assert (answer.backend, answer.model) == ("hf", str(tiny_model_path))
    assert answer.log_likelihood is not None and math.isfinite(answer.log_likelihood)
    assert answer.log_likelihood <= 0


def test_hf_adapter_is_applied(tiny_model_path: Path, tmp_path: Path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    base = GPT2LMHeadModel.from_pretrained(tiny_model_path)
    adapted = get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    # A fresh LoRA adapter is a no-op (B = 0); give it weights so it changes the output.
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    adapted.save_pretrained(tmp_path / "adapter")

    base_score = HFGenerator(model_path=tiny_model_path).answer_log_likelihood(
        query=QUERY, passage=PASSAGE, answer=TRAINED_ANSWER
    )
    adapted_score = HFGenerator(model_path=tiny_model_path, adapter_path=tmp_path / "adapter").answer_log_likelihood(
        query=QUERY, passage=PASSAGE, answer=TRAINED_ANSWER
    )

    assert math.isfinite(adapted_score)
    assert abs(adapted_score - base_score) > 1e-3


def test_hf_missing_model_is_a_generator_error(tmp_path: Path):
    generator = HFGenerator(model_path=tmp_path / "missing")

    with pytest.raises(GeneratorError, match="generator model directory not found"):
        generator.generate(query="q", passages=[])


# --- factory ------------------------------------------------------------------------------


def test_make_generator_builds_each_backend(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://llm.internal:8000/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    monkeypatch.setenv("OPENAI_MODEL", "env-model")

    extractive = make_generator(backend="extractive")
    from_env = make_generator(backend="openai")
    from_options = make_generator(
        backend="openai", model="gpt-4o-mini", options={"base_url": "https://example.test/v1", "api_key": "opt-key"}
    )
    local = make_generator(backend="hf", model="/models/qwen", options={"adapter_path": "/adapters/v3"})

    assert isinstance(extractive, ExtractiveGenerator)
    assert isinstance(from_env, OpenAIChatGenerator)
    assert (from_env.base_url, from_env.model, from_env.api_key) == ("http://llm.internal:8000/v1", "env-model", "env-key")
    assert (from_options.base_url, from_options.model, from_options.api_key) == (
        "https://example.test/v1",
        "gpt-4o-mini",
        "opt-key",
    )
    assert isinstance(local, HFGenerator)
    assert (local.model_path, local.adapter_path) == (Path("/models/qwen"), Path("/adapters/v3"))


def test_make_generator_defaults_to_openai_url(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)

    generator = make_generator(backend="openai", model="gpt-4o-mini")

    assert generator.base_url == "https://api.openai.com/v1"


def test_make_generator_errors(monkeypatch):
    monkeypatch.delenv("OPENAI_MODEL", raising=False)

    with pytest.raises(ValueError, match="unknown generator backend 'gpt'; valid backends: extractive, openai, hf"):
        make_generator(backend="gpt")
    with pytest.raises(ValueError, match="needs a model name"):
        make_generator(backend="openai")
    with pytest.raises(ValueError, match="needs a model directory"):
        make_generator(backend="hf")


def test_extractive_does_not_repeat_a_sentence_shared_by_overlapping_chunks():
    from rag.generation import ContextPassage, ExtractiveGenerator

    shared = "Statins inhibit HMG-CoA reductase in the liver."
    passages = [
        ContextPassage(text=f"Cholesterol is made in the liver. {shared}"),
        ContextPassage(text=f"{shared} Muscle pain is a side effect."),
    ]
    answer = ExtractiveGenerator().generate(query="Which enzyme do statins inhibit?", passages=passages)
    assert answer.text.count(shared) == 1
    assert answer.text == f"{shared} [1]"
    assert answer.cited_passages == [1]


# --- conversations ------------------------------------------------------------------------

HISTORY = [ChatMessage("user", "Which enzyme do statins inhibit?"), ChatMessage("assistant", "HMG-CoA reductase [1].")]


def test_openai_backend_sends_the_history_between_system_prompt_and_question(chat_server_url: str):
    FakeChatServer.requests.clear()
    generator = OpenAIChatGenerator(base_url=f"{chat_server_url}/ok/v1", model="m")

    generator.generate(query="Does it cause muscle pain?", passages=PASSAGES, history=HISTORY)

    messages = FakeChatServer.requests[0]["body"]["messages"]
    assert messages == chat_messages(query="Does it cause muscle pain?", passages=PASSAGES, history=HISTORY)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1:3] == [m.as_dict() for m in HISTORY]
    assert messages[3]["content"] == build_prompt(query="Does it cause muscle pain?", passages=PASSAGES)


def test_openai_backend_rewrites_a_follow_up_with_the_condense_prompt_and_leaves_a_first_question(chat_server_url: str):
    FakeChatServer.requests.clear()
    generator = OpenAIChatGenerator(base_url=f"{chat_server_url}/ok/v1", model="m")

    assert generator.rewrite_query(question="Is it safe?", history=[]) == "Is it safe?"
    assert FakeChatServer.requests == []  # a first question costs no call

    rewritten = generator.rewrite_query(question="Does it cause muscle pain?", history=HISTORY)

    assert rewritten == "Within 14 days [2], see [9]."  # what the fake model answered
    [request] = FakeChatServer.requests
    [message] = request["body"]["messages"]
    assert message["content"] == condense_prompt(question="Does it cause muscle pain?", history=HISTORY)
    assert "Human: Which enzyme do statins inhibit?" in message["content"]
    assert "<Follow Up Message>\nDoes it cause muscle pain?" in message["content"]


def test_extractive_answers_a_follow_up_from_the_question_it_stands_for():
    passages = [ContextPassage(text="Statins inhibit HMG-CoA reductase. Muscle pain is a known side effect of statins.")]
    generator = ExtractiveGenerator()

    alone = generator.generate(query="Is that common?", passages=passages)
    in_context = generator.generate(query="Is that common?", passages=passages, history=[ChatMessage("user", "Do statins cause muscle pain?")])

    assert alone.text == NO_ANSWER_TEXT
    assert "Muscle pain is a known side effect" in in_context.text
    assert generator.rewrite_query(question="Is that common?", history=[ChatMessage("user", "Do statins cause muscle pain?")]) == condense_heuristic(
        question="Is that common?", history=[ChatMessage("user", "Do statins cause muscle pain?")]
    )


def test_a_chat_without_history_is_laid_out_exactly_as_the_single_prompt_and_history_comes_before_it():
    single = chat_messages(query=QUERY, passages=[PASSAGE])
    assert prompt_text(single) == build_prompt(query=QUERY, passages=[PASSAGE])

    text = prompt_text(chat_messages(query=QUERY, passages=[PASSAGE], history=HISTORY))
    assert text == "User: Which enzyme do statins inhibit?\nAssistant: HMG-CoA reductase [1].\n" + build_prompt(query=QUERY, passages=[PASSAGE])


def test_hf_generate_with_history_feeds_the_history_before_the_question(tiny_model_path: Path):
    generator = HFGenerator(model_path=tiny_model_path, max_new_tokens=4, device="cpu")
    language_model, tokenizer = generator._load()
    messages = chat_messages(query=QUERY, passages=[PASSAGE], history=HISTORY)

    ids = generator._prompt_ids(messages=messages, room_for=4)

    assert ids[0].tolist() == prompt_token_ids(tokenizer, messages)
    assert ids[0].tolist() != prompt_token_ids(tokenizer, chat_messages(query=QUERY, passages=[PASSAGE]))
    assert generator.generate(query=QUERY, passages=[PASSAGE], history=HISTORY).text is not None
