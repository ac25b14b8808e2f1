"""Conversations as plain data: chat messages, their validation, a follow-up question made
self-contained before retrieval, and the history a generator sees within a budget.

Two ways to make a follow-up self-contained ("and for children?" after "does vitamin D
prevent fractures?"):
- an LLM generator rewrites it with `condense_prompt` (the wording of LlamaIndex's
  CondenseQuestionChatEngine template), see `Generator.rewrite_query` in rag.generation;
- the offline default, `condense_heuristic`, leaves a complete question alone and weighs a
  follow-up with the names of the previous user question that it lacks. bench/followup.py
  measures it (docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from rag.text_checks import text_problem

ROLES = ("system", "user", "assistant")
# OpenAI's newer name for a system message; stored as "system".
ROLE_ALIASES = {"developer": "system"}
MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 100_000


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system", "user" or "assistant"
    content: str

    def as_dict(self) -> dict:
        return {"role": self.role, "content": self.content}


class ConversationError(ValueError):
    """A message list that cannot be served; the message says which message and why."""


def message_content_text(content, *, where: str) -> str:
    """The text of a message's content: a string, or OpenAI content parts of type "text"
    (joined with newlines). Images, audio and files are refused: no generator here reads them."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ConversationError(f"{where}.content[{index}]: only text content parts are supported, not {kind!r}.")
            texts.append(part["text"])
        return "\n".join(texts)
    if content is None:
        raise ConversationError(f"{where}.content: a message needs text content.")
    raise ConversationError(f"{where}.content: must be a string or a list of text parts, not {type(content).__name__}.")


def messages_parse(raw: Sequence[dict], *, field: str = "messages") -> list[ChatMessage]:
    """Validate a Chat Completions message list into ChatMessages.

    The rules (docs/conversations.md): system (or developer) messages only before the first
    user message; then user and assistant alternate, starting with a user message; no tool
    or function messages and no tool calls; every message has non-empty text; at most
    MAX_MESSAGES messages of at most MAX_MESSAGE_CHARS characters each.
    """
    if not isinstance(raw, (list, tuple)):
        raise ConversationError(f"{field}: must be a list of messages.")
    if not raw:
        raise ConversationError(f"{field}: must hold at least one message.")
    if len(raw) > MAX_MESSAGES:
        raise ConversationError(f"{field}: {len(raw)} messages; the limit is {MAX_MESSAGES}.")
    messages: list[ChatMessage] = []
    for index, item in enumerate(raw):
        where = f"{field}[{index}]"
        if not isinstance(item, dict):
            raise ConversationError(f"{where}: must be an object with a role and content.")
        role = item.get("role")
        role = ROLE_ALIASES.get(role, role)
        if role in ("tool", "function") or item.get("tool_calls") or item.get("function_call"):
            raise ConversationError(f"{where}: tool and function messages are not supported.")
        if role not in ROLES:
            raise ConversationError(f"{where}.role: must be one of system, user, assistant (or developer), not {role!r}.")
        text = message_content_text(item.get("content"), where=where)
        if not text.strip():
            raise ConversationError(f"{where}.content: must not be empty.")
        if len(text) > MAX_MESSAGE_CHARS:
            raise ConversationError(f"{where}.content: {len(text)} characters; the limit is {MAX_MESSAGE_CHARS}.")
        problem = text_problem(text)
        if problem:
            raise ConversationError(f"{where}.content: {problem}.")
        previous = next((m.role for m in reversed(messages) if m.role != "system"), None)
        if role == "system":
            if previous is not None:
                raise ConversationError(f"{where}: system messages must come before the first user message.")
        elif role == "user" and previous == "user":
            raise ConversationError(f"{where}: two user messages in a row; user and assistant messages must alternate.")
        elif role == "assistant" and previous != "user":
            raise ConversationError(
                f"{where}: an assistant message must follow a user message (roles must alternate, starting with user)."
            )
        messages.append(ChatMessage(role=role, content=text))
    return messages


def history_parse(raw: Sequence[dict], *, field: str = "history") -> list[ChatMessage]:
    """The messages before a question: empty, or a valid message list that does not end with
    a user message (the question itself is sent apart)."""
    if not raw:
        return []
    messages = messages_parse(raw, field=field)
    if messages[-1].role == "user":
        raise ConversationError(f"{field}: must end with an assistant message; the question is sent on its own.")
    return messages


def split_conversation(messages: Sequence[ChatMessage]) -> tuple[str, list[ChatMessage], str]:
    """(system prompt, history, question) of a message list that ends with a user message."""
    if not messages or messages[-1].role != "user":
        raise ConversationError("messages: the last message must be a user message (the question to answer).")
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    history = [m for m in messages[:-1] if m.role != "system"]
    return system, history, messages[-1].content


def messages_hash(messages: Iterable[ChatMessage]) -> str:
    """A stable hash of a message list (roles and whitespace-normalised text): a client that
    resends the history continues the conversation whose messages hash the same."""
    canonical = [[m.role, " ".join(m.content.split())] for m in messages]
    return hashlib.sha256(json.dumps(canonical, ensure_ascii=False).encode("utf-8")).hexdigest()


# --- follow-up questions ------------------------------------------------------------------

CONDENSE_PROMPT = (
    "Given a conversation (between Human and Assistant) and a follow up message from Human, "
    "rewrite the message to be a standalone question that captures all relevant context "
    "from the conversation.\n\n"
    "<Chat History>\n{history}\n\n"
    "<Follow Up Message>\n{question}\n\n"
    "<Standalone question>\n"
)


def condense_prompt(*, question: str, history: Sequence[ChatMessage], max_messages: int = 6) -> str:
    """The prompt that asks an LLM for a self-contained version of `question`."""
    shown = [m for m in history if m.role != "system"][-max_messages:]
    lines = "\n".join(f"{'Human' if m.role == 'user' else 'Assistant'}: {m.content}" for m in shown)
    return CONDENSE_PROMPT.format(history=lines, question=question)


_STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only or
    other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your
    yours yourself yourselves tell know please also else ok okay thanks thank much many
    """.split()
)


def salient_words(text: str) -> list[str]:
    """Content words of `text` in order, each once, without stopwords."""
    seen: set[str] = set()
    words = []
    for word in re.findall(r"[A-Za-z0-9][A-Za-z0-9'\-]*", text):
        key = word.lower()
        if key in _STOPWORDS or len(key) < 2 or key in seen:
            continue
        seen.add(key)
        words.append(word)
    return words


# Pronouns and demonstratives a follow-up uses for what came before. "that" and "there" are left
# out: in questions they are mostly a conjunction ("the theory that ...") and an existential.
_ANAPHORA = frozenset("it its they them their theirs he him his she her hers this these those".split())
# A question of at most this many salient words leans on what came before ("and for children?").
FOLLOW_UP_MAX_SALIENT_WORDS = 3
# The question is written this many times before the carried words: the retriever mean-pools its
# tokens, so this keeps the question weightier than the words carried in.
CONDENSE_QUESTION_REPEATS = 3


def reads_as_follow_up(question: str) -> bool:
    """Whether `question` seems to lean on an earlier turn: it holds one of the pronouns or
    demonstratives in _ANAPHORA (it, its, they, he, this, ...), or it has at most
    FOLLOW_UP_MAX_SALIENT_WORDS salient words."""
    words = {word.lower() for word in re.findall(r"[A-Za-z]+", question)}
    return bool(words & _ANAPHORA) or len(salient_words(question)) <= FOLLOW_UP_MAX_SALIENT_WORDS


def condense_heuristic(*, question: str, history: Sequence[ChatMessage]) -> str:
    """A retrieval query for the follow-up `question`: what the retriever should search with, not
    a question to show anyone or to hand a generator.

    - `question` unchanged when `history` has no user message, or when the question does not
      read as a follow-up (`reads_as_follow_up`): a complete question after another is most
      likely a change of topic, and carrying the old topic's words in would spoil it.
    - Otherwise the salient words (`salient_words`) of the last user message in `history` that
      the question does not already hold, in their order; of those, only the ones with a capital
      letter or a digit (names, years) where there are any. They are appended to the question
      written CONDENSE_QUESTION_REPEATS times: "<question> <question> <question> <words>"; the
      question unchanged when no word is left to carry.

    Assistant messages are not read: a reply's many words drowned the subject in the benchmark.
    Deterministic and offline. bench/followup.py measured this choice against the plain
    "append every salient word" rule and other variants (docs/benchmarks.md).
    """
    previous = [m.content for m in history if m.role == "user"]
    if not previous or not reads_as_follow_up(question):
        return question
    present = {w.lower() for w in salient_words(question)}
    carried = [w for w in salient_words(previous[-1]) if w.lower() not in present]
    names = [w for w in carried if any(c.isupper() or c.isdigit() for c in w)]
    carried = names or carried
    if not carried:
        return question
    return " ".join([question] * CONDENSE_QUESTION_REPEATS + carried)


def count_tokens(text: str) -> int:
    """A tokenizer-free token estimate: words and punctuation marks (OpenAI-style `usage` of
    backends that share no tokenizer, and history budgets)."""
    return len(re.findall(r"\w+|[^\w\s]", text))


# --- history within a budget --------------------------------------------------------------


def history_within_budget(history: Sequence[ChatMessage], *, max_tokens: int, count_tokens=None) -> list[ChatMessage]:
    """The newest messages of `history` whose token count fits `max_tokens` (oldest dropped
    first, whole user/assistant exchanges at a time so the history still starts with a user
    message). `count_tokens` defaults to a whitespace word count."""
    count = count_tokens or (lambda text: len(text.split()))
    kept: list[ChatMessage] = []
    used = 0
    for message in reversed([m for m in history if m.role != "system"]):
        used += count(message.content)
        if used > max_tokens:
            break
        kept.append(message)
    kept.reverse()
    while kept and kept[0].role != "user":
        kept.pop(0)
    return kept
