"""Synthetic questions for a chunk, written by an OpenAI-compatible chat model (GPL, LlamaIndex's
`generate_qa_embedding_pairs`): the prompt, the reading of the reply, and the filter that keeps a
question only when the live retriever finds its source chunk in its top k.

The chat request goes through rag.generation.OpenAIChatGenerator.complete, the client the
generator and the LLM judge already use, so one endpoint configuration serves all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rag.suggestions import JudgeReplyError, json_object_in_reply

SYSTEM_PROMPT = (
    "You write questions that a user of a search system might ask and that the given passage answers. "
    "Each question must make sense on its own, without the passage at hand: no 'according to the passage', "
    "no 'this study'. Reply with JSON only."
)
MAX_QUESTION_CHARACTERS = 500


class QuestionReplyError(ValueError):
    """The model's reply holds no usable question."""


def question_messages(*, passage: str, title: str = "", count: int = 1) -> list[dict]:
    """The chat messages asking for `count` questions about one passage."""
    if count < 1:
        raise ValueError("count must be at least 1")
    heading = f"Title: {title}\n" if title else ""
    user = (
        f"{heading}Passage:\n{passage}\n\n"
        f"Write {count} different question{'s' if count > 1 else ''} this passage answers. "
        f'Reply with exactly this JSON shape: {{"questions": ["...", ...]}}'
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def questions_parse(reply: str, *, count: int) -> list[str]:
    """Up to `count` distinct, non-empty questions of a reply ({"questions": [...]}, fenced or not)."""
    try:
        value = json_object_in_reply(reply)
    except JudgeReplyError as error:
        raise QuestionReplyError(str(error)) from None
    items = value.get("questions")
    if not isinstance(items, list):
        raise QuestionReplyError(f"the reply has no list of questions: {reply[:120]!r}")
    questions: list[str] = []
    for item in items:
        text = " ".join(str(item).split()) if isinstance(item, str) else ""
        if text and len(text) <= MAX_QUESTION_CHARACTERS and text not in questions:
            questions.append(text)
    if not questions:
        raise QuestionReplyError(f"the reply's list of questions is empty: {reply[:120]!r}")
    return questions[:count]


@dataclass(frozen=True)
class RankedChunk:
    """One chunk the retriever returned for a question (rank 1 is the best)."""

    chunk_id: int
    rank: int


def source_rank(ranked: Sequence[RankedChunk], *, source_chunk_id: int, top_k: int) -> int | None:
    """The rank of the source chunk among the retriever's first `top_k`, or None: the question
    is dropped, because the retriever cannot learn from (or be judged on) what it cannot find."""
    for chunk in ranked:
        if chunk.rank <= top_k and chunk.chunk_id == source_chunk_id:
            return chunk.rank
    return None
