"""Write an answer to a question from retrieved passages, behind one Generator interface.

Three backends: an offline extractive one that needs no model, any OpenAI-compatible chat
endpoint, and a local Hugging Face causal language model (optionally with a LoRA adapter).

One module (~410 lines): the backends share the prompt (`build_prompt`) and the citation
format, so what every generator sees and writes is defined in one place.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from rag.chunking import sentence_spans
from rag.conversation import ChatMessage, condense_heuristic, condense_prompt
from rag.http_errors import body_snippet, http_error_detail

NO_ANSWER_TEXT = "I could not find an answer in the knowledge base."

SYSTEM_PROMPT = (
    "You are a helpful assistant that answers questions using only the context passages "
    "you are given. Cite the passages you use by their number in square brackets, like [1]. "
    "If the context does not contain the answer, say that you could not find it."
)

GENERATOR_BACKENDS = ("extractive", "openai", "hf")


@dataclass(frozen=True)
class ContextPassage:
    """A retrieved chunk handed to a generator; its position in the list is its rank."""

    text: str
    title: str = ""
    source_id: str = ""


@dataclass(frozen=True)
class GeneratedAnswer:
    """An answer and which of the numbered passages (1-based) it cites."""

    text: str
    backend: str
    model: str
    cited_passages: list[int] = field(default_factory=list)
    log_likelihood: float | None = None


class GeneratorError(RuntimeError):
    """A generator could not produce an answer; the message is safe to show a user."""


class Generator(Protocol):
    """What every backend offers: its name, the model it runs, an answer for a query (after
    the conversation's earlier messages, if any), and a follow-up made self-contained."""

    backend: str
    model: str

    def generate(
        self, *, query: str, passages: list[ContextPassage], history: Sequence[ChatMessage] = ()
    ) -> GeneratedAnswer: ...

    def rewrite_query(self, *, question: str, history: Sequence[ChatMessage]) -> str: ...


def chat_messages(
    *, query: str, passages: list[ContextPassage], history: Sequence[ChatMessage] = (), system_prompt: str = SYSTEM_PROMPT
) -> list[dict]:
    """The chat a generator is given: the system prompt, the conversation's earlier messages,
    then the question with its numbered context (`build_prompt`). Serving, generator training
    and the fine-tuning export all build it here, so a model is trained on what it will see."""
    return [
        {"role": "system", "content": system_prompt},
        *({"role": m.role, "content": m.content} for m in history if m.role != "system"),
        {"role": "user", "content": build_prompt(query=query, passages=passages)},
    ]


def build_prompt(*, query: str, passages: list[ContextPassage]) -> str:
    """The question-answering prompt: numbered context first, then the query.

    The wording is LlamaIndex's default text QA template, which the article ragloop is
    built from uses; the numbers let a model cite passages as [n].
    """
    if passages:
        context = "\n\n".join(
            f"[{number}] {passage.title}\n{passage.text}" if passage.title else f"[{number}] {passage.text}"
            for number, passage in enumerate(passages, start=1)
        )
    else:
        context = "(no context passages)"
    return (
        "Context information is below.\n"
        "---------------------\n"
        f"{context}\n"
        "---------------------\n"
        "Given the context information and not prior knowledge, answer the query.\n"
        f"Query: {query}\n"
        "Answer: "
    )


def cited_passage_numbers(answer: str, *, passage_count: int) -> list[int]:
    """Passage numbers cited as [n] or [n, m] in `answer` that refer to real passages."""
    numbers: set[int] = set()
    for group in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", answer):
        for number in re.findall(r"\d+", group):
            if 1 <= int(number) <= passage_count:
                numbers.add(int(number))
    return sorted(numbers)


def prompt_text(messages: list[dict]) -> str:
    """A chat as plain text, for a model without a chat template: the earlier messages as
    "User:"/"Assistant:" lines, then the last message (the question with its context). A
    chat with no earlier messages is exactly `build_prompt`'s text."""
    *earlier, last = [m for m in messages if m["role"] != "system"]
    lines = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in earlier]
    return "\n".join([*lines, last["content"]]) if lines else last["content"]


def prompt_token_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """Token ids of a chat (`chat_messages`) as a local model is fed it: in the model's chat
    format when it has one, else `prompt_text`. HFGenerator serves with it and generator
    training (rag.training.generator) trains with it."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The chat template already holds any BOS token.
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt_text(messages))["input_ids"])


# --- Extractive -------------------------------------------------------------------------

_STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only or
    other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your
    yours yourself yourselves tell know please
    """.split()
)


def _content_words(text: str) -> list[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    # Stripping a plural "s" lets "vaccines" match "vaccine" without a real stemmer.
    return [
        word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word
        for word in words
        if word not in _STOPWORDS
    ]


class ExtractiveGenerator:
    """Answers with the passage sentences that best match the question; offline and deterministic.

    It needs no model, so a new knowledge base answers (and can collect feedback) from day one.
    """

    backend = "extractive"
    model = "extractive-v1"

    def __init__(self, *, max_passages: int = 5, max_sentences: int = 2) -> None:
        self.max_passages = max_passages
        self.max_sentences = max_sentences

    def rewrite_query(self, *, question: str, history: Sequence[ChatMessage]) -> str:
        return condense_heuristic(question=question, history=history)

    def generate(
        self, *, query: str, passages: list[ContextPassage], history: Sequence[ChatMessage] = ()
    ) -> GeneratedAnswer:
        # Sentences are matched against the question made self-contained: "and for children?"
        # alone matches nothing.
        query_words = set(_content_words(self.rewrite_query(question=query, history=history) if history else query))
        candidates: list[tuple[int, int, str, set[str]]] = []  # passage no., position, sentence, words
        for number, passage in enumerate(passages[: self.max_passages], start=1):
            for position, (start, end) in enumerate(sentence_spans(passage.text)):
                sentence = passage.text[start:end]
                candidates.append((number, position, sentence, set(_content_words(sentence))))
        if not query_words or not candidates:
            return self._no_answer()

        # IDF over the candidate sentences: a query word found everywhere says little.
        document_frequency = Counter(word for *_, words in candidates for word in words)
        sentence_count = len(candidates)
        passage_count = min(len(passages), self.max_passages)
        scored: list[tuple[float, int, int, str]] = []
        for number, position, sentence, words in candidates:
            overlap = query_words & words
            if not overlap:
                continue
            score = sum(math.log(1 + sentence_count / document_frequency[word]) for word in overlap)
            # A small tie-breaker for the retriever's ranking, too small to beat a better match.
            score += 0.1 * (passage_count - number + 1) / passage_count
            scored.append((score, number, position, sentence))
        if not scored:
            return self._no_answer()

        scored.sort(key=lambda item: (-item[0], item[1], item[2]))
        # Overlapping chunks of one document repeat sentences: keep each sentence once, cited
        # by the best-ranked passage that holds it.
        distinct: list[tuple[float, int, int, str]] = []
        seen: set[str] = set()
        for item in scored:
            key = " ".join(item[3].split()).lower()
            if key not in seen:
                seen.add(key)
                distinct.append(item)
        best_score = distinct[0][0]
        # Later sentences must be nearly as good as the best, or they only add noise.
        chosen = [item for item in distinct[: self.max_sentences] if item[0] >= best_score / 2]
        chosen.sort(key=lambda item: (item[1], item[2]))
        text = " ".join(f"{sentence} [{number}]" for _, number, _, sentence in chosen)
        return GeneratedAnswer(
            text=text,
            backend=self.backend,
            model=self.model,
            cited_passages=sorted({number for _, number, _, _ in chosen}),
        )

    def _no_answer(self) -> GeneratedAnswer:
        return GeneratedAnswer(text=NO_ANSWER_TEXT, backend=self.backend, model=self.model, cited_passages=[])


# --- OpenAI-compatible chat endpoint ---------------------------------------------------


class OpenAIChatGenerator:
    """Answers through any OpenAI-compatible /chat/completions endpoint (OpenAI, vLLM, Ollama...)."""

    backend = "openai"

    def __init__(self, *, base_url: str, model: str, api_key: str = "", timeout: float = 60) -> None:
        if not base_url.startswith(("http://", "https://")):
            # urllib would also open file:// and ftp:// URLs, which must never be reachable here.
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not model:
            raise ValueError("an OpenAI-compatible generator needs a model name")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout

    def generate(
        self, *, query: str, passages: list[ContextPassage], history: Sequence[ChatMessage] = ()
    ) -> GeneratedAnswer:
        answer = self.complete(chat_messages(query=query, passages=passages, history=history))
        return GeneratedAnswer(
            text=answer,
            backend=self.backend,
            model=self.model,
            cited_passages=cited_passage_numbers(answer, passage_count=len(passages)),
        )

    def rewrite_query(self, *, question: str, history: Sequence[ChatMessage]) -> str:
        if not any(m.role == "user" for m in history):
            return question
        rewritten = self.complete([{"role": "user", "content": condense_prompt(question=question, history=history)}])
        return rewritten or question

    def complete(self, messages: list[dict]) -> str:
        """The text of one chat completion of `messages` (temperature 0); GeneratorError when the
        endpoint fails or answers something that is not a chat completion. Also what the LLM
        judge (rag.suggestions) sends its prompt through."""
        url = f"{self.base_url}/chat/completions"
        body = {"model": self.model, "messages": messages, "temperature": 0}
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")

        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw_body = response.read()
        except urllib.error.HTTPError as error:
            raise GeneratorError(
                f"OpenAI-compatible endpoint {url} returned {error.code}: {http_error_detail(error)}"
            ) from None
        except (OSError, http.client.HTTPException) as error:  # URLError and timeouts are OSErrors
            reason = getattr(error, "reason", error)
            raise GeneratorError(f"could not reach OpenAI-compatible endpoint {url}: {reason}") from None

        try:
            completion = json.loads(raw_body)
            content = completion["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise GeneratorError(
                f"OpenAI-compatible endpoint {url} returned a response that is not a chat completion: "
                f"{body_snippet(raw_body)}"
            ) from None
        if not isinstance(content, str):
            raise GeneratorError(f"OpenAI-compatible endpoint {url} returned a completion with no text content")
        return content.strip()


# --- Local Hugging Face causal LM -------------------------------------------------------


class HFGenerator:
    """Answers with a local Hugging Face causal language model, optionally with a peft adapter.

    The model is loaded on first use and kept by the instance.
    """

    backend = "hf"

    def __init__(
        self,
        *,
        model_path: str | Path,
        adapter_path: str | Path | None = None,
        max_new_tokens: int = 128,
        device: str | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.adapter_path = Path(adapter_path) if adapter_path else None
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.model = str(model_path)
        self._language_model: Any = None
        self._tokenizer: Any = None

    def generate(
        self, *, query: str, passages: list[ContextPassage], history: Sequence[ChatMessage] = ()
    ) -> GeneratedAnswer:
        text, log_likelihood = self._complete(chat_messages(query=query, passages=passages, history=history))
        return GeneratedAnswer(
            text=text,
            backend=self.backend,
            model=self.model,
            cited_passages=cited_passage_numbers(text, passage_count=len(passages)),
            log_likelihood=log_likelihood,
        )

    def rewrite_query(self, *, question: str, history: Sequence[ChatMessage]) -> str:
        if not any(m.role == "user" for m in history):
            return question
        text, _ = self._complete([{"role": "user", "content": condense_prompt(question=question, history=history)}])
        # A small model may run on past the question; its first line is the rewrite.
        first_line = text.strip().splitlines()[0].strip() if text.strip() else ""
        return first_line or question

    def _complete(self, messages: list[dict]) -> tuple[str, float | None]:
        import torch

        language_model, tokenizer = self._load()
        prompt_ids = self._prompt_ids(messages=messages, room_for=self.max_new_tokens)
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.inference_mode():
            sequences = language_model.generate(
                input_ids=prompt_ids,
                attention_mask=torch.ones_like(prompt_ids),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=pad_token_id,
            )
        new_ids = sequences[:, prompt_ids.shape[1] :]
        text = tokenizer.decode(new_ids[0], skip_special_tokens=True).strip()
        log_likelihood = self._mean_log_prob(prompt_ids=prompt_ids, answer_ids=new_ids) if new_ids.shape[1] else None
        return text, log_likelihood

    def answer_log_likelihood(
        self, *, query: str, passage: ContextPassage | None, answer: str, history: Sequence[ChatMessage] = ()
    ) -> float:
        """Mean log-probability per token of `answer` given the chat built from one passage
        (after the conversation's earlier messages, if any, as `generate` would be given them).

        Length-normalised so answers of different lengths compare; RA-DIT's LM-supervised
        retrieval uses it to score how much a passage helps the model produce the answer.
        """
        _, tokenizer = self._load()
        answer_ids = tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if answer_ids.shape[1] == 0:
            raise ValueError("answer must contain at least one token")
        messages = chat_messages(query=query, passages=[passage] if passage is not None else [], history=history)
        prompt_ids = self._prompt_ids(messages=messages, room_for=answer_ids.shape[1])
        return self._mean_log_prob(prompt_ids=prompt_ids, answer_ids=answer_ids.to(prompt_ids.device))

    def _load(self) -> tuple[Any, Any]:
        if self._language_model is not None:
            return self._language_model, self._tokenizer
        # Imported here so the extractive and OpenAI backends never pay for loading torch.
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not self.model_path.is_dir():
            raise GeneratorError(f"generator model directory not found: {self.model_path}")
        if self.adapter_path is not None and not self.adapter_path.is_dir():
            raise GeneratorError(f"generator adapter directory not found: {self.adapter_path}")
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
            language_model = AutoModelForCausalLM.from_pretrained(self.model_path, local_files_only=True)
            if self.adapter_path is not None:
                from peft import PeftModel

                language_model = PeftModel.from_pretrained(language_model, self.adapter_path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise GeneratorError(f"could not load generator model from {self.model_path}: {error}") from None
        language_model.to(device).eval()
        self._language_model, self._tokenizer = language_model, tokenizer
        return language_model, tokenizer

    def _prompt_ids(self, *, messages: list[dict], room_for: int) -> Any:
        """Token ids (1, n) of the chat, as `prompt_token_ids` lays it out."""
        import torch

        language_model, tokenizer = self._load()
        prompt_ids = torch.tensor([prompt_token_ids(tokenizer, messages)])
        # Keep the end of an over-long prompt: the query sits there, the oldest context does not.
        window = getattr(language_model.config, "max_position_embeddings", None)
        if window and prompt_ids.shape[1] + room_for > window:
            prompt_ids = prompt_ids[:, -max(window - room_for, 1) :]
        return prompt_ids.to(language_model.device)

    def _mean_log_prob(self, *, prompt_ids: Any, answer_ids: Any) -> float:
        import torch

        language_model, _ = self._load()
        input_ids = torch.cat([prompt_ids, answer_ids], dim=1)
        with torch.inference_mode():
            logits = language_model(input_ids=input_ids).logits
        # The logits at position i predict token i + 1, so the answer is predicted from the
        # last prompt position up to the second-to-last position.
        answer_logits = logits[0, prompt_ids.shape[1] - 1 : -1].float()
        log_probs = torch.log_softmax(answer_logits, dim=-1)
        token_log_probs = log_probs.gather(1, answer_ids[0].unsqueeze(1)).squeeze(1)
        return float(token_log_probs.mean())


def make_generator(*, backend: str, model: str = "", options: dict | None = None) -> Generator:
    """Build the generator a knowledge base is configured with.

    Options: openai takes base_url, api_key and timeout (falling back to the
    OPENAI_BASE_URL, OPENAI_API_KEY and OPENAI_MODEL environment variables); hf takes
    adapter_path and max_new_tokens.
    """
    options = options or {}
    if backend == "extractive":
        return ExtractiveGenerator()
    if backend == "openai":
        model = model or os.environ.get("OPENAI_MODEL", "")
        if not model:
            raise ValueError("the openai generator needs a model name (or OPENAI_MODEL set)")
        return OpenAIChatGenerator(
            base_url=options.get("base_url") or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1",
            model=model,
            api_key=options.get("api_key") or os.environ.get("OPENAI_API_KEY", ""),
            timeout=float(options.get("timeout", 60)),
        )
    if backend == "hf":
        if not model:
            raise ValueError("the hf generator needs a model directory")
        return HFGenerator(
            model_path=model,
            adapter_path=options.get("adapter_path"),
            max_new_tokens=int(options.get("max_new_tokens", 128)),
        )
    raise ValueError(f"unknown generator backend {backend!r}; valid backends: {', '.join(GENERATOR_BACKENDS)}")
