"""Reads of the curator workbench around one turn: the turn a curator judged before this one
(the "back" key), a label's history in words, and the turns that repeat this one's query
with the same passages (judged once, applied to all on request).

Kept apart from curation.selectors for size; each function runs a fixed number of queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import F, Func, Q, Value
from django.db.models.functions import Lower, Trim

from curation.models import FailureTag, Label, LabelRevision
from knowledge.models import KnowledgeBase, Turn

# What a stored value reads as on a page ("not relevant", not `not_relevant`).
READABLE_VALUES = {
    "relevant": "relevant",
    "partly": "partly",
    "not_relevant": "not relevant",
    "correct": "correct",
    "wrong": "wrong",
    "": "—",
    None: "—",
}


def readable(value) -> str:
    return READABLE_VALUES.get(value, str(value).replace("_", " "))


# --- the turn before -------------------------------------------------------------------------


def curator_previous_turn(*, knowledge_base: KnowledgeBase, curator, current: Turn | None = None) -> Turn | None:
    """The turn this curator labelled (or skipped) last in the knowledge base, before the one
    on screen: when the curator already labelled `current`, the one labelled before it, so
    pressing "back" again walks further back through their own work."""
    labels = Label.objects.filter(turn__knowledge_base=knowledge_base, curator=curator)
    if current is not None:
        mine = labels.filter(turn=current).values("updated_at", "pk").first()
        labels = labels.exclude(turn=current)
        if mine is not None:
            labels = labels.filter(Q(updated_at__lt=mine["updated_at"]) | Q(updated_at=mine["updated_at"], pk__lt=mine["pk"]))
    label = labels.order_by("-updated_at", "-pk").select_related("turn").first()
    return label.turn if label else None


# --- label history ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelHistoryEntry:
    curator: str  # whose label
    actor: str  # who made the change (the curator, or an import run by someone)
    at: datetime
    version: int  # 1 for the first submit
    changes: list[str]


def _passage_changes(before: dict, after: dict, ranks: dict[str, int]) -> list[str]:
    changes = []
    for passage_id in sorted(set(before) | set(after), key=lambda pid: ranks.get(pid, 10**9)):
        old, new = before.get(passage_id), after.get(passage_id)
        if old != new:
            changes.append(f"passage #{ranks.get(passage_id, '?')}: {readable(old)} → {readable(new)}")
    return changes


def _tag_names(slugs, names: dict[str, str]) -> str:
    return ", ".join(names.get(slug, slug) for slug in slugs)


def label_changes(before: dict | None, after: dict, *, ranks: dict[str, int], tag_names: dict[str, str]) -> list[str]:
    """What a revision changed, in words, from its before and after payloads."""
    before = before or {}
    if after.get("skipped"):
        if before.get("skipped") and before.get("skip_reason") == after.get("skip_reason"):
            return []
        return [f"skipped: {after.get('skip_reason') or '(no reason)'}"]
    changes = []
    if before.get("skipped"):
        changes.append("judged instead of skipped")
    changes += _passage_changes(before.get("passages") or {}, after.get("passages") or {}, ranks)
    if before.get("answer_rating", "") != after.get("answer_rating", ""):
        changes.append(f"answer: {readable(before.get('answer_rating'))} → {readable(after.get('answer_rating'))}")
    old_attached = {item["chunk_id"]: item.get("relevance") for item in before.get("attached") or []}
    new_attached = {item["chunk_id"]: item.get("relevance") for item in after.get("attached") or []}
    added, removed = set(new_attached) - set(old_attached), set(old_attached) - set(new_attached)
    if added:
        changes.append(f"attached {len(added)} passage{'s' if len(added) != 1 else ''}")
    if removed:
        changes.append(f"removed {len(removed)} attached passage{'s' if len(removed) != 1 else ''}")
    old_tags, new_tags = before.get("failure_tags") or [], after.get("failure_tags") or []
    if set(old_tags) != set(new_tags):
        plus = [slug for slug in new_tags if slug not in old_tags]
        minus = [slug for slug in old_tags if slug not in new_tags]
        words = ([f"+{_tag_names(plus, tag_names)}"] if plus else []) + ([f"−{_tag_names(minus, tag_names)}"] if minus else [])
        changes.append("failure tags: " + " ".join(words))
    for name, words in (("gold_answer", "gold answer"), ("rationale", "rationale"), ("comment", "comment"),
                        ("corrected_query", "better query")):
        old, new = (before.get(name) or "").strip(), (after.get(name) or "").strip()
        if old != new:
            changes.append(f"{words} {'written' if not old else 'cleared' if not new else 'edited'}")
    if bool(before.get("has_personal_data")) != bool(after.get("has_personal_data")):
        changes.append("flagged personal data" if after.get("has_personal_data") else "personal data flag removed")
    if bool(before.get("rewrite_wrong")) != bool(after.get("rewrite_wrong")):
        changes.append("rewrite called wrong" if after.get("rewrite_wrong") else "rewrite no longer called wrong")
    return changes or ["submitted again, unchanged"]


def turn_label_history(*, turn: Turn, curator=None) -> list[LabelHistoryEntry]:
    """Every revision of the turn's labels (only `curator`'s, when given), oldest first."""
    revisions = LabelRevision.objects.filter(label__turn=turn).select_related("actor", "label__curator")
    if curator is not None:
        revisions = revisions.filter(label__curator=curator)
    ranks = {str(pk): rank for pk, rank in turn.passages.values_list("pk", "rank")}
    tag_names = dict(FailureTag.objects.filter(knowledge_base_id=turn.knowledge_base_id).values_list("slug", "name"))
    versions: dict[int, int] = {}
    entries = []
    for revision in revisions.order_by("created_at", "pk"):
        versions[revision.label_id] = versions.get(revision.label_id, 0) + 1
        entries.append(LabelHistoryEntry(
            curator=revision.label.curator.get_username(),
            actor=revision.actor.get_username(),
            at=revision.created_at,
            version=versions[revision.label_id],
            changes=label_changes(revision.before, revision.after, ranks=ranks, tag_names=tag_names),
        ))  # fmt: skip
    return entries


# --- repeated queries ------------------------------------------------------------------------


class _CollapseSpaces(Func):
    function = "regexp_replace"
    template = "%(function)s(%(expressions)s, '\\s+', ' ', 'g')"


def normalised_query(query: str) -> str:
    """The query as repeats are matched: case-folded, runs of white space made one space."""
    return " ".join(query.split()).lower()


def _normalised(field: str):
    return Lower(Trim(_CollapseSpaces(F(field))))


def _passage_key(turn: Turn) -> tuple:
    # The same passages: the same chunks (or, without a chunk, the same text) at the same ranks.
    return tuple(
        (rank, chunk_id if chunk_id is not None else text)
        for rank, chunk_id, text in turn.passages.order_by("rank").values_list("rank", "chunk_id", "text")
    )


def turn_identical_turns(*, turn: Turn, limit: int = 200) -> list[Turn]:
    """The other turns of the knowledge base that ask the same query (normalised) and were
    given the same passages, oldest first: one judgment holds for all of them."""
    candidates = list(
        Turn.objects.filter(knowledge_base_id=turn.knowledge_base_id)
        .exclude(pk=turn.pk)
        .annotate(normalised=_normalised("query"))
        .filter(normalised=Value(normalised_query(turn.query)))
        .prefetch_related("passages")
        .order_by("created_at", "pk")[:limit]
    )
    key = _passage_key(turn)
    return [
        candidate for candidate in candidates
        if tuple(
            (p.rank, p.chunk_id if p.chunk_id is not None else p.text) for p in sorted(candidate.passages.all(), key=lambda p: p.rank)
        ) == key
    ]  # fmt: skip
