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

from django.utils.crypto import salted_hmac

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


# An end-user reference is the app's id for a person, and apps often use an e-mail address for
# it. Under redact and reject such a reference is stored as a keyed digest instead of a
# placeholder: one person's conversations must stay linked (the chat endpoint continues a
# conversation by it, erasure finds a person's data by it), which `<EMAIL>` for everyone would
# break. The key is SECRET_KEY (salted_hmac): the digest cannot be reversed by hashing a list of
# addresses without it. Rotating SECRET_KEY changes the digests of new conversations; erasure
# also takes the stored digest itself (docs/erasure.md).
END_USER_DIGEST_PREFIX = "pd-"
_END_USER_SALT = "ragloop.personal_data.end_user"


def end_user_digest(end_user: str) -> str:
    """The keyed digest an end-user reference holding personal data is stored as ("pd-<hex>")."""
    return END_USER_DIGEST_PREFIX + salted_hmac(_END_USER_SALT, end_user, algorithm="sha256").hexdigest()[:40]


def end_user_reference_stored(*, knowledge_base: KnowledgeBase, end_user: str) -> str:
    """The end-user reference as it is stored under the knowledge base's personal-data mode: as
    sent under "off" or when it holds no personal data, else its keyed digest (under both redact
    and reject: the app chose the reference, the person did not write it)."""
    if not end_user or knowledge_base.personal_data_mode == PersonalDataMode.OFF or end_user.startswith(END_USER_DIGEST_PREFIX):
        return end_user
    return end_user_digest(end_user) if redact(end_user, PersonalDataMode.REDACT).found else end_user


def end_user_references(end_user: str) -> list[str]:
    """Every form in which a reference may be stored: as sent and as its digest."""
    if end_user.startswith(END_USER_DIGEST_PREFIX):
        return [end_user]
    return [end_user, end_user_digest(end_user)]


def metadata_scrubbed(scrubber: PersonalDataScrubber, metadata):
    """A turn's or conversation's `metadata` with every string value (at any depth, keys kept)
    redacted as produced text: the app attached it, the person did not type it, so it is never
    a reason to refuse the turn."""
    if isinstance(metadata, str):
        return scrubber.produced(metadata)
    if isinstance(metadata, dict):
        return {key: metadata_scrubbed(scrubber, value) for key, value in metadata.items()}
    if isinstance(metadata, list):
        return [metadata_scrubbed(scrubber, value) for value in metadata]
    return metadata
