"""A knowledge base's personal-data mode applied to what is about to be stored: turns (query,
rewrite, answer, passage copies, history, feedback comment), conversation messages and, through
curation's label services, label text (docs/personal-data.md; the detection is
rag.personal_data).

The texts of a request are of two kinds. What a person wrote (an end user's question, history
messages and feedback; a curator's gold answer or comment) is checked under "reject": any
personal data in it refuses the whole request (422 naming the types) before anything is
written. What the platform or the app's models produced (an answer, a rewrite, the copy of a
document passage) cannot be refused by the person asking, so under "reject" it is redacted, as
under "redact". Under "off" nothing is looked at.
"""

from dataclasses import replace

from knowledge.errors import InvalidInput, PersonalDataRejected
from knowledge.models import KnowledgeBase, PersonalDataMode
from rag.conversation import ChatMessage
from rag.personal_data import redact


class PersonalDataScrubber:
    """Collects what one request's texts held; `raise_if_rejected` before writing anything."""

    def __init__(self, mode: str):
        if mode not in PersonalDataMode.values:
            raise InvalidInput(f"Personal-data mode {mode!r} is unknown; choose one of {', '.join(PersonalDataMode.values)}.")
        self.mode = mode
        self.rejected_types: set[str] = set()
        self.rejected_places: list[str] = []
        self.redacted_types: set[str] = set()

    @classmethod
    def for_knowledge_base(cls, knowledge_base: KnowledgeBase) -> "PersonalDataScrubber":
        return cls(knowledge_base.personal_data_mode)

    @property
    def active(self) -> bool:
        return self.mode != PersonalDataMode.OFF

    def written(self, text: str, *, where: str) -> str:
        """A text a person wrote: refused under reject, redacted under redact."""
        if not self.active or not text:
            return text
        result = redact(text, self.mode)
        if self.mode == PersonalDataMode.REJECT:
            if result.found:
                self.rejected_types.update(result.entity_types)
                self.rejected_places.append(where)
            return text
        self.redacted_types.update(result.entity_types)
        return result.text

    def produced(self, text: str) -> str:
        """A text a model or a document produced: redacted under both redact and reject."""
        if not self.active or not text:
            return text
        result = redact(text, PersonalDataMode.REDACT)
        self.redacted_types.update(result.entity_types)
        return result.text

    def messages(self, messages, *, where: str) -> list[ChatMessage]:
        """A conversation's messages: the user's and the system prompt as written, the
        assistant's as produced."""
        return [
            ChatMessage(m.role, self.produced(m.content) if m.role == "assistant" else self.written(m.content, where=f"{where}[{i}]"))
            for i, m in enumerate(messages)
        ]

    def raise_if_rejected(self) -> None:
        if self.rejected_types:
            raise PersonalDataRejected(sorted(self.rejected_types), self.rejected_places)


def personal_data_check_written(*, knowledge_base: KnowledgeBase, texts: dict[str, str]) -> dict[str, str]:
    """Apply the knowledge base's mode to texts a person wrote ({place: text}); returns them as
    they are to be stored, or raises PersonalDataRejected under reject."""
    scrubber = PersonalDataScrubber.for_knowledge_base(knowledge_base)
    stored = {where: scrubber.written(text, where=where) for where, text in texts.items()}
    scrubber.raise_if_rejected()
    return stored


def composed_answer_scrubbed(*, knowledge_base: KnowledgeBase, composed):
    """A served answer (knowledge.services.turns.ComposedAnswer) with its answer, rewrite and
    passage copies redacted under redact and reject (they are produced, not written)."""
    scrubber = PersonalDataScrubber.for_knowledge_base(knowledge_base)
    if not scrubber.active or composed.personal_data_scrubbed:
        return composed
    return replace(
        composed,
        question=scrubber.produced(composed.question),
        rewritten_query=scrubber.produced(composed.rewritten_query),
        text=scrubber.produced(composed.text),
        retrieved=[replace(p, text=scrubber.produced(p.text), title=scrubber.produced(p.title)) for p in composed.retrieved],
        personal_data_scrubbed=True,
    )
