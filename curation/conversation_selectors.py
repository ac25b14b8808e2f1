"""Reads for the judging page's conversation: the questions and answers before the judged turn
(from the stored turns of its conversation, or from the turn's own `history`), what the user did
after it, and which of them the page folds away.

Two queries at most whatever the conversation's length (`turn_conversation`).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Exists, OuterRef

from curation.models import Label
from knowledge.models import Conversation, KnowledgeBase, Turn

# The judging page shows this many of the latest earlier messages; older ones are folded.
RECENT_MESSAGES = 4


@dataclass(frozen=True)
class ConversationExchange:
    """One question and its answer before (or after) the judged turn.

    `turn` is the stored turn they belong to, with its feedback and `labelled_by_me`; None for
    messages known only from the judged turn's `history`, or for a position of the
    conversation that is not stored (`missing`).
    """

    position: int | None
    question: str = ""
    answer: str = ""
    turn: Turn | None = None
    missing: int = 0  # > 0: this many positions from `position` on are not stored

    @property
    def number(self) -> int | None:
        """The 1-based place in the conversation, as the page shows it ("2/5")."""
        return None if self.position is None else self.position + 1

    @property
    def last_missing_number(self) -> int | None:
        return self.position + self.missing if self.missing and self.position is not None else None

    @property
    def message_count(self) -> int:
        return 0 if self.missing else int(bool(self.question)) + int(bool(self.answer))


@dataclass(frozen=True)
class TurnConversation:
    """What a curator needs to read a follow-up: the conversation up to the judged turn, and
    what the user did after its answer. `source` says where the earlier messages come from:
    "turns" (the stored turns of the conversation, each with its feedback), "history" (the
    judged turn's `history`, as the generator saw it: a logged turn whose conversation is not
    stored) or "none" (the first question, or a turn on its own)."""

    conversation: Conversation | None
    system_prompt: str
    source: str
    older: list[ConversationExchange]  # folded on the page
    recent: list[ConversationExchange]  # the last RECENT_MESSAGES messages or so, shown
    later: list[ConversationExchange]  # the next turn, and every later one with feedback
    total: int = 0  # turns in the conversation (0 for a turn on its own)

    @property
    def older_message_count(self) -> int:
        return sum(exchange.message_count for exchange in self.older)


def _history_exchanges(history: list) -> list[ConversationExchange]:
    """The user/assistant messages of a stored history as exchanges (system messages left out;
    anything that is not a {role, content} message is skipped rather than trusted)."""
    exchanges: list[ConversationExchange] = []
    for message in history if isinstance(history, list) else []:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            continue
        role, content = message.get("role"), message["content"]
        if role == "user":
            exchanges.append(ConversationExchange(position=None, question=content))
        elif role == "assistant":
            if exchanges and not exchanges[-1].answer:
                exchanges[-1] = ConversationExchange(position=None, question=exchanges[-1].question, answer=content)
            else:
                exchanges.append(ConversationExchange(position=None, answer=content))
    return exchanges


def _history_system_prompt(history: list) -> str:
    if not isinstance(history, list):
        return ""
    return "\n\n".join(
        m["content"] for m in history if isinstance(m, dict) and m.get("role") == "system" and isinstance(m.get("content"), str)
    )


def _fold(exchanges: list[ConversationExchange], recent_messages: int) -> tuple[list, list]:
    """(older, recent): recent is the latest whole exchanges within `recent_messages` messages
    (at least one), so a question is never folded away from its answer."""
    shown = 0
    split = len(exchanges)
    while split > 0:
        count = max(exchanges[split - 1].message_count, 1)
        if split < len(exchanges) and shown + count > recent_messages:
            break
        shown += count
        split -= 1
    return exchanges[:split], exchanges[split:]


def knowledge_base_conversation(*, knowledge_base: KnowledgeBase, conversation_id: int) -> Conversation | None:
    """The knowledge base's conversation of that id; None for another knowledge base's."""
    return Conversation.objects.filter(pk=conversation_id, knowledge_base=knowledge_base).first()


def turn_conversation(*, turn: Turn, curator, recent_messages: int = RECENT_MESSAGES) -> TurnConversation:
    """The conversation around `turn` for its judging page, in at most two queries (the
    conversation, and its other turns with their feedback) whatever its length.

    Only turns of the judged turn's knowledge base are read, so a conversation never shows a
    turn its curator may not see.
    """
    conversation = None
    others: list[Turn] = []
    if turn.conversation_id is not None:
        conversation = Conversation.objects.filter(pk=turn.conversation_id, knowledge_base_id=turn.knowledge_base_id).first()
        others = list(
            Turn.objects.filter(conversation_id=turn.conversation_id, knowledge_base_id=turn.knowledge_base_id)
            .exclude(pk=turn.pk)
            .only("id", "knowledge_base_id", "conversation_id", "position", "query", "answer", "feedback",
                  "feedback_comment", "label_count")
            .annotate(labelled_by_me=Exists(Label.objects.filter(turn=OuterRef("pk"), curator=curator, skipped=False)))
            .order_by("position", "id")
        )
    position = turn.position if turn.position is not None else -1
    earlier = [other for other in others if other.position is not None and other.position < position]
    if earlier:
        source = "turns"
        exchanges = []
        expected = 0
        for other in earlier:
            if other.position > expected:  # a gap: say so once, however long
                exchanges.append(ConversationExchange(position=expected, missing=other.position - expected))
            exchanges.append(
                ConversationExchange(position=other.position, question=other.query, answer=other.answer, turn=other)
            )
            expected = other.position + 1
        if expected < position:
            exchanges.append(ConversationExchange(position=expected, missing=position - expected))
    else:
        exchanges = _history_exchanges(turn.history)
        source = "history" if exchanges else "none"
    later_turns = [other for other in others if other.position is not None and other.position > position]
    later = [
        ConversationExchange(position=other.position, question=other.query, answer=other.answer, turn=other)
        for index, other in enumerate(later_turns)
        if index == 0 or other.feedback is not None or other.feedback_comment.strip()
    ]
    system_prompt = (conversation.system_prompt if conversation else "") or _history_system_prompt(turn.history)
    older, recent = _fold(exchanges, recent_messages)
    total = 0
    if conversation is not None:
        # turn_count is kept by the services that add turns; never show "6/5" if it lags.
        stored = [other.position + 1 for other in others if other.position is not None]
        total = max([conversation.turn_count, position + 1, *stored])
    return TurnConversation(
        conversation=conversation, system_prompt=system_prompt, source=source, older=older, recent=recent, later=later,
        total=total,
    )
