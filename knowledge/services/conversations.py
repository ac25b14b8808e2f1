"""Conversations: continuing one with a served answer (the REST `ask` and the OpenAI-compatible
chat endpoint), and ingesting whole conversations logged by an external RAG app.

How a request finds its conversation (docs/conversations.md):
1. by ragloop's conversation id, or by the app's external id (an unknown external id starts a
   conversation with that id);
2. for the chat endpoint without either, by the hash of the messages before the question: a
   client that resends the whole history continues the conversation whose last turn ended
   with exactly those messages (rag.conversation.messages_hash), among the conversations of
   the request's end user when it names one (`user`);
3. otherwise a new conversation starts, with an external id ragloop makes ("c-<hex>").

The answer is composed outside any transaction (a generator may take seconds); the turn is
then stored under the conversation's row lock, which is what gives two concurrent requests
of one conversation distinct positions.
"""

import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from knowledge.errors import Conflict, InvalidInput, NotFound
from knowledge.models import Conversation, KnowledgeBase, Turn
from knowledge.selectors import conversation_messages
from knowledge.services.personal_data import (
    PersonalDataScrubber,
    composed_answer_scrubbed,
    end_user_reference_stored,
    metadata_scrubbed,
    personal_data_check_written,
)
from knowledge.services.turns import PassageRecord, answer_compose, ingested_passages_store, turn_served_store
from knowledge.signals import turns_stored_send_on_commit
from rag.conversation import ChatMessage, ConversationError, messages_hash, messages_parse, split_conversation
from rag.queue_priority import turn_queue_position

MAX_EXTERNAL_ID_CHARS = 255


def _new_external_id() -> str:
    return f"c-{secrets.token_hex(8)}"


def _check_size(messages: list[ChatMessage]) -> None:
    total = sum(len(m.content) for m in messages)
    if total > settings.RAGLOOP_MAX_CONVERSATION_CHARS:
        raise InvalidInput(
            f"The conversation holds {total} characters; the limit is {settings.RAGLOOP_MAX_CONVERSATION_CHARS}. "
            "Start a new conversation."
        )


def conversation_get_or_create(
    *, knowledge_base: KnowledgeBase, external_id: str | None, end_user: str = "", system_prompt: str = ""
) -> tuple[Conversation, bool]:
    """The conversation with this external id (made with a new id when `external_id` is None)."""
    if external_id is not None:
        external_id = external_id.strip()
        if not external_id or len(external_id) > MAX_EXTERNAL_ID_CHARS or "\x00" in external_id:
            raise InvalidInput(f"A conversation id must be 1 to {MAX_EXTERNAL_ID_CHARS} characters without NUL.")
    if len(end_user) > 255 or "\x00" in end_user:
        raise InvalidInput("The end-user reference must be at most 255 characters without NUL.")
    end_user = end_user_reference_stored(knowledge_base=knowledge_base, end_user=end_user)
    defaults = {"end_user": end_user, "system_prompt": system_prompt}
    try:
        return Conversation.objects.get_or_create(
            knowledge_base=knowledge_base, external_id=external_id or _new_external_id(), defaults=defaults
        )
    except IntegrityError:  # a concurrent request created it between the get and the create
        return Conversation.objects.get(knowledge_base=knowledge_base, external_id=external_id), False


def _store_in_conversation(
    *, conversation: Conversation, composed, history: list[ChatMessage]
) -> Turn:
    # Redacted before the hash: the next request of a client finds the turn by what was stored.
    composed = composed_answer_scrubbed(knowledge_base=conversation.knowledge_base, composed=composed)
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
        last = conversation.turns.aggregate(last=Max("position"))["last"]
        position = 0 if last is None else last + 1
        ended_with = [*history, ChatMessage("user", composed.question), ChatMessage("assistant", composed.text)]
        turn = turn_served_store(
            knowledge_base=conversation.knowledge_base,
            composed=composed,
            conversation=conversation,
            position=position,
            history=history,
            continuation_hash=messages_hash(ended_with),
        )
        Conversation.objects.filter(pk=conversation.pk).update(
            turn_count=conversation.turn_count + 1, last_activity_at=turn.created_at
        )
    return turn


def conversation_ask(
    *,
    knowledge_base: KnowledgeBase,
    question: str,
    k: int = 5,
    conversation_id: int | None = None,
    conversation_external_id: str | None = None,
    end_user: str = "",
    mode: str | None = None,
) -> Turn:
    """Answer `question` as the next turn of a conversation (REST `ask`): the history the
    generator sees is the conversation's stored turns, after its system prompt if it has one.
    `mode` overrides the knowledge base's retrieval mode for this turn."""
    question = personal_data_check_written(knowledge_base=knowledge_base, texts={"question": question})["question"]
    if conversation_id is not None:
        conversation = Conversation.objects.filter(pk=conversation_id, knowledge_base=knowledge_base).first()
        if conversation is None:
            raise NotFound(f"Conversation {conversation_id} not found in {knowledge_base.slug!r}.")
    else:
        conversation, _ = conversation_get_or_create(
            knowledge_base=knowledge_base, external_id=conversation_external_id, end_user=end_user
        )
    history = conversation_messages(conversation=conversation)
    _check_size([*history, ChatMessage("user", question)])
    composed = answer_compose(
        knowledge_base=knowledge_base, question=question, k=k, history=[m for m in history if m.role != "system"], mode=mode
    )
    return _store_in_conversation(conversation=conversation, composed=composed, history=history)


def chat_ask(
    *,
    knowledge_base: KnowledgeBase,
    messages: list[ChatMessage],
    k: int = 5,
    conversation_external_id: str | None = None,
    end_user: str = "",
) -> Turn:
    """Answer the last user message of a Chat Completions message list and log it as the next
    turn of its conversation (see the module docstring for how the conversation is found).
    The history stored on the turn is the client's messages before the question, as sent
    (redacted under the knowledge base's personal-data mode, before the continuation hash is
    looked up: what was stored is redacted too)."""
    scrubber = PersonalDataScrubber.for_knowledge_base(knowledge_base)
    if scrubber.active:
        messages = scrubber.messages(messages, where="messages")
        scrubber.raise_if_rejected()
    try:
        system_prompt, _, question = split_conversation(messages)
    except ConversationError as error:
        raise InvalidInput(str(error)) from error
    _check_size(messages)
    prior = list(messages[:-1])
    conversation = None
    if conversation_external_id is None and prior:
        candidates = Turn.objects.filter(knowledge_base=knowledge_base, continuation_hash=messages_hash(prior))
        if end_user:
            # Two end users whose chats began alike ("Hi" / "Hello! How can I help?") must
            # not be merged into one conversation.
            candidates = candidates.filter(
                conversation__end_user=end_user_reference_stored(knowledge_base=knowledge_base, end_user=end_user)
            )
        continued = candidates.select_related("conversation").order_by("-pk").first()
        conversation = continued.conversation if continued else None
    if conversation is None:
        conversation, _ = conversation_get_or_create(
            knowledge_base=knowledge_base,
            external_id=conversation_external_id,
            end_user=end_user,
            system_prompt=system_prompt,
        )
    composed = answer_compose(
        knowledge_base=knowledge_base, question=question, k=k, history=[m for m in prior if m.role != "system"]
    )
    return _store_in_conversation(conversation=conversation, composed=composed, history=prior)


# --- ingest -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConversationMessage:
    """A message of a logged conversation; an assistant message may carry the passages its
    answer was generated from, and the end user's feedback on it."""

    role: str
    content: str
    passages: list[PassageRecord] = field(default_factory=list)
    rewritten_query: str = ""
    feedback: int | None = None
    feedback_comment: str = ""
    created_at: datetime | None = None


@dataclass(frozen=True)
class ConversationRecord:
    external_id: str
    messages: list[ConversationMessage]
    end_user: str = ""
    metadata: dict = field(default_factory=dict)
    retriever_version: str = ""
    generator_version: str = ""


@dataclass
class ConversationIngestResult:
    conversation: Conversation
    created: bool
    turns_created: list[int]
    turns_existing: int


def _exchanges(messages: list[ConversationMessage]) -> tuple[str, list[tuple[int, ConversationMessage, ConversationMessage]]]:
    """(system prompt, [(index of the user message, user message, assistant message)])."""
    try:
        messages_parse([{"role": m.role, "content": m.content} for m in messages])
    except ConversationError as error:
        raise InvalidInput(str(error)) from error
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    exchanges = []
    for index, message in enumerate(messages):
        if message.role == "assistant":
            exchanges.append((index - 1, messages[index - 1], message))
        elif message.passages or message.feedback is not None or message.rewritten_query:
            raise InvalidInput(f"messages[{index}]: passages, feedback and rewritten_query belong on assistant messages.")
    return system, exchanges


def conversation_record_scrubbed(*, knowledge_base: KnowledgeBase, record: ConversationRecord) -> ConversationRecord:
    """The conversation as it is to be stored under the knowledge base's personal-data mode:
    user and system messages and feedback comments as written (refused under reject), assistant
    messages, rewrites and passage copies as produced (redacted)."""
    scrubber = PersonalDataScrubber.for_knowledge_base(knowledge_base)
    if not scrubber.active:
        return record
    messages = []
    for index, m in enumerate(record.messages):
        where = f"messages[{index}]"
        messages.append(
            replace(
                m,
                content=scrubber.produced(m.content) if m.role == "assistant" else scrubber.written(m.content, where=where),
                feedback_comment=scrubber.written(m.feedback_comment, where=f"{where}.feedback_comment"),
                rewritten_query=scrubber.produced(m.rewritten_query),
                passages=[replace(p, text=scrubber.produced(p.text), title=scrubber.produced(p.title)) for p in m.passages],
            )
        )
    scrubber.raise_if_rejected()
    return replace(record, messages=messages, metadata=metadata_scrubbed(scrubber, record.metadata))


def conversation_ingest(*, knowledge_base: KnowledgeBase, record: ConversationRecord) -> ConversationIngestResult:
    """Store a conversation an external app logged, one turn per assistant message.

    Idempotent on the external id: a conversation sent again with more messages gets the new
    turns appended and nothing else changes; one whose stored messages differ from what is
    sent (an edited history) is refused with 409, and nothing is written.
    """
    record = conversation_record_scrubbed(knowledge_base=knowledge_base, record=record)
    system, exchanges = _exchanges(record.messages)
    _check_size([ChatMessage(m.role, m.content) for m in record.messages])
    for _, _, assistant in exchanges:
        if assistant.feedback not in (None, -1, 1):
            raise InvalidInput("feedback must be -1, 1 or null.")
    with transaction.atomic():
        # Serialises ingest per knowledge base, as turns_ingest does.
        KnowledgeBase.objects.select_for_update().get(pk=knowledge_base.pk)
        conversation, created = conversation_get_or_create(
            knowledge_base=knowledge_base, external_id=record.external_id, end_user=record.end_user, system_prompt=system
        )
        conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
        stored = list(conversation.turns.order_by("position").values_list("position", "query", "answer"))
        if created and record.metadata:
            conversation.metadata = record.metadata
        sent = [(position, user.content, assistant.content) for position, (_, user, assistant) in enumerate(exchanges)]
        for (stored_position, query, answer), (position, sent_query, sent_answer) in zip(stored, sent):
            if (stored_position, " ".join(query.split()), " ".join(answer.split())) != (
                position, " ".join(sent_query.split()), " ".join(sent_answer.split())
            ):
                raise Conflict(
                    f"Conversation {record.external_id!r} already holds different messages at turn {position}; "
                    "a conversation can only be extended, not edited."
                )
        if len(stored) > len(sent):
            raise Conflict(
                f"Conversation {record.external_id!r} already holds {len(stored)} turns; this request sends {len(sent)}."
            )
        new = exchanges[len(stored) :]
        now = timezone.now()
        turns = []
        for position, (user_index, user, assistant) in enumerate(new, start=len(stored)):
            history = [ChatMessage(m.role, m.content) for m in record.messages[:user_index]]
            tier, order = turn_queue_position(
                feedback=assistant.feedback,
                scores=[p.score for p in assistant.passages],
                created=assistant.created_at.timestamp() if assistant.created_at else None,
            )
            turns.append(
                Turn(
                    knowledge_base=knowledge_base,
                    source=Turn.Source.INGESTED,
                    conversation=conversation,
                    position=position,
                    query=user.content,
                    rewritten_query="" if assistant.rewritten_query.strip() == user.content.strip() else assistant.rewritten_query.strip(),
                    history=[m.as_dict() for m in history],
                    continuation_hash=messages_hash(
                        [*history, ChatMessage("user", user.content), ChatMessage("assistant", assistant.content)]
                    ),
                    answer=assistant.content,
                    retriever_version=record.retriever_version,
                    generator_version=record.generator_version,
                    feedback=assistant.feedback,
                    feedback_comment=assistant.feedback_comment,
                    queue_tier=tier,
                    queue_order=order,
                    created_at=assistant.created_at or now,
                )
            )
        turns = Turn.objects.bulk_create(turns)
        ingested_passages_store(
            knowledge_base=knowledge_base, passages_by_turn=zip(turns, (assistant.passages for _, _, assistant in new))
        )
        if turns:
            conversation.turn_count = len(stored) + len(turns)
            conversation.last_activity_at = max(t.created_at for t in turns)
            if not stored:
                conversation.started_at = min(t.created_at for t in turns)
        if turns or created:
            conversation.save()
        turns_stored_send_on_commit(knowledge_base_id=knowledge_base.pk, turn_ids=[t.pk for t in turns])
    return ConversationIngestResult(
        conversation=conversation, created=created, turns_created=[t.pk for t in turns], turns_existing=len(stored)
    )
