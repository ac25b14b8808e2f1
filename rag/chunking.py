"""Split document text into overlapping chunks that fit the retriever's token window.

Chunks are packed from whole sentences, measured in the retriever tokenizer's tokens, and
keep character offsets into the document so a chunk can always be traced back to its source.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_CHUNK_TOKENS = 200

_WHITESPACE_RUN = re.compile(r"\s+")
_SENTENCE_END = ".!?"
_CLOSING_MARKS = "\"')]}\u201d\u2019"


@dataclass(frozen=True)
class TextChunk:
    """A passage of a document; `text == document_text[start:end]`."""

    order: int
    text: str
    token_count: int
    start: int
    end: int


class TokenCounter(Protocol):
    """Anything that can say where the tokens of a text are."""

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of `text`, without special tokens."""
        ...


class HFTokenCounter:
    """Counts tokens with a Hugging Face fast tokenizer, e.g. the retriever's own."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        # verbose=False: whole documents are longer than the model window on purpose, and
        # the "sequence length is longer than the maximum" warning would only be noise.
        encoding = self.tokenizer(
            text,
            add_special_tokens=False,
            return_offsets_mapping=True,
            verbose=False,
        )
        return [(int(start), int(end)) for start, end in encoding["offset_mapping"]]


class WhitespaceTokenCounter:
    """Treats each whitespace-separated word as a token; for tests and when no model is at hand."""

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [(match.start(), match.end()) for match in re.finditer(r"\S+", text)]


def chunk_budget(model_max_tokens: int, *, requested: int | None = None) -> int:
    """Chunk size in tokens for a retriever whose window is `model_max_tokens`.

    The encoder adds [CLS] and [SEP] around every chunk, so two tokens of the window are
    never available to text; anything longer than the window would be silently truncated
    and its tail never retrieved. 200 tokens is the default: long enough to hold an
    answer with its context, short enough that one chunk stays about one topic.
    """
    return min(requested or DEFAULT_CHUNK_TOKENS, model_max_tokens - 2)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text`, without surrounding whitespace.

    A sentence ends at whitespace after ".", "!" or "?" (closing quotes and brackets
    allowed in between) and at every line break, so headings and list items stand alone.
    """
    spans: list[tuple[int, int]] = []
    start = _first_non_space(text, 0)
    for match in _WHITESPACE_RUN.finditer(text, start):
        if match.end() == len(text):
            break
        if "\n" in match.group() or _ends_sentence(text, start=start, end=match.start()):
            spans.append((start, match.start()))
            start = match.end()
    if start < len(text):
        spans.append((start, len(text.rstrip())))
    return spans


def chunk_text(
    text: str,
    *,
    counter: TokenCounter,
    max_tokens: int,
    overlap_tokens: int,
) -> list[TextChunk]:
    """Pack whole sentences into chunks of at most `max_tokens`, repeating about
    `overlap_tokens` of trailing sentences at the start of the next chunk.

    A sentence longer than `max_tokens` is cut into token windows that overlap by
    `overlap_tokens`. Every non-whitespace character of `text` is in at least one chunk.
    """
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be at least 8, got {max_tokens}")
    if not 0 <= overlap_tokens < max_tokens // 2:
        raise ValueError(
            f"overlap_tokens must be at least 0 and below max_tokens // 2 ({max_tokens // 2}), "
            f"got {overlap_tokens}"
        )
    sentences = sentence_spans(text)
    token_spans = counter.token_offsets(text)
    if not sentences or not token_spans:
        return []

    # Tokenise the whole text once and attribute each token to the sentence it starts in;
    # tokenising sentence by sentence would be far slower on long documents.
    sentence_starts = [start for start, _ in sentences]
    tokens_of_sentence: list[list[tuple[int, int]]] = [[] for _ in sentences]
    for token in token_spans:
        index = max(bisect.bisect_right(sentence_starts, token[0]) - 1, 0)
        tokens_of_sentence[index].append(token)

    spans: list[tuple[int, int, int]] = []  # (start, end, token_count) of each chunk
    current: list[int] = []  # sentence indices of the chunk being packed
    current_tokens = 0

    def sentences_span(indices: list[int]) -> tuple[int, int, int]:
        return (
            sentences[indices[0]][0],
            sentences[indices[-1]][1],
            sum(len(tokens_of_sentence[index]) for index in indices),
        )

    for index, sentence_tokens in enumerate(tokens_of_sentence):
        size = len(sentence_tokens)
        if size > max_tokens:
            windows = _token_windows(
                sentence=sentences[index],
                tokens=sentence_tokens,
                max_tokens=max_tokens,
                overlap_tokens=overlap_tokens,
            )
            if current_tokens:
                spans.append(sentences_span(current))
            elif current:
                # Token-less sentences (stray symbols) before it must still be covered.
                windows[0] = (sentences[current[0]][0], windows[0][1], windows[0][2])
            spans.extend(windows)
            current, current_tokens = [], 0
            continue
        if current_tokens + size > max_tokens:
            spans.append(sentences_span(current))
            current = _overlap_tail(
                current,
                tokens_of_sentence=tokens_of_sentence,
                overlap_tokens=overlap_tokens,
                max_tokens=max_tokens,
            )
            current_tokens = sum(len(tokens_of_sentence[kept]) for kept in current)
            # The overlap must leave room for new text, or the chunk would not advance.
            while current and current_tokens + size > max_tokens:
                current_tokens -= len(tokens_of_sentence[current.pop(0)])
        current.append(index)
        current_tokens += size

    if current:
        start, end, count = sentences_span(current)
        if count:
            spans.append((start, end, count))
        elif spans:
            # Trailing token-less text joins the previous chunk so nothing is lost.
            previous_start, _, previous_count = spans[-1]
            spans[-1] = (previous_start, end, previous_count)

    return [
        TextChunk(order=order, text=text[start:end], token_count=count, start=start, end=end)
        for order, (start, end, count) in enumerate(spans)
    ]


def _first_non_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _ends_sentence(text: str, *, start: int, end: int) -> bool:
    # Look back from the end instead of slicing: slicing would be quadratic on long sentences.
    position = end - 1
    while position > start and text[position] in _CLOSING_MARKS:
        position -= 1
    return text[position] in _SENTENCE_END


def _overlap_tail(
    indices: list[int],
    *,
    tokens_of_sentence: list[list[tuple[int, int]]],
    overlap_tokens: int,
    max_tokens: int,
) -> list[int]:
    """Trailing sentences of a finished chunk to repeat at the start of the next one."""
    if overlap_tokens == 0 or len(indices) < 2:
        return []
    tail: list[int] = []
    tail_tokens = 0
    # indices[0] is never repeated: repeating the whole chunk would make no progress.
    for index in reversed(indices[1:]):
        size = len(tokens_of_sentence[index])
        if tail_tokens + size > overlap_tokens:
            break
        tail.insert(0, index)
        tail_tokens += size
    if not tail and len(tokens_of_sentence[indices[-1]]) <= max_tokens // 2:
        # The last sentence alone is over the overlap target; one sentence of context
        # still helps retrieval as long as it leaves half the chunk for new text.
        tail = [indices[-1]]
    return tail


def _token_windows(
    *,
    sentence: tuple[int, int],
    tokens: list[tuple[int, int]],
    max_tokens: int,
    overlap_tokens: int,
) -> list[tuple[int, int, int]]:
    """Overlapping windows of `max_tokens` tokens over one over-long sentence."""
    stride = max_tokens - overlap_tokens
    windows: list[tuple[int, int, int]] = []
    first = 0
    while True:
        last = min(first + max_tokens, len(tokens))
        start = sentence[0] if first == 0 else tokens[first][0]
        end = sentence[1] if last == len(tokens) else tokens[last - 1][1]
        windows.append((start, end, last - first))
        if last == len(tokens):
            return windows
        first += stride
