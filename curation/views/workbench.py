"""The curator workbench: the prioritised queue, "next", the judging page with its autosaved
draft and submit endpoints, the preload of the following turn, and corpus search to attach a
passage the retriever missed. Views check access, call a service, render or answer JSON."""

import json
from datetime import date

from django.core.paginator import Page, Paginator
from django.db.models import Count, Exists, F, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from curation.conversation_selectors import knowledge_base_conversation, turn_conversation
from curation.models import AnswerRating, Label, Relevance, TurnHold
from curation.selectors import curator_progress, guidelines_html, knowledge_base_failure_tags
from curation.services.identical import label_submit_with_identical
from curation.services.labels import (
    LabelInput,
    label_draft_save,
    label_for_editing,
    label_submit,
)
from curation.services.queue import (
    QUEUE_ORDER,
    QueueFilter,
    turn_hold_take,
    turn_next,
    turn_queue_list,
)
from curation.services.search import chunks_search
from curation.suggestion_selectors import turn_suggestions
from curation.views.access import fragment, knowledge_base_page
from curation.workbench_selectors import curator_previous_turn, turn_identical_turns, turn_label_history
from knowledge.errors import InvalidInput, ServiceError
from knowledge.models import Chunk, KnowledgeBase, RetrievedPassage, Turn
from rag.text_checks import unstorable_text_problem

QUEUE_PAGE_SIZE = 50
# Queue tier (see curation.services.queue) -> badge text and CSS class.
QUEUE_TIERS = {
    0: ("negative feedback", "tier-feedback"),
    1: ("low confidence", "tier-confidence"),
    2: ("sample", "tier-sample"),
}
# Why re-scoring put a turn where it is (Turn.queue_reason, rag.queue_priority) -> badge text
# with the stored figure, CSS class and the badge's tooltip.
QUEUE_REASONS = {
    "candidate": ("candidate disagrees (RBO {:.2f})", "tier-candidate",
                  "The live retriever and the newest candidate rank different documents for this query "
                  "(rank-biased overlap of their top 10; 1 = the same ranking)."),
    "margin": ("low margin now ({:.3f})", "tier-confidence",
               "The live retriever's two best documents score this close: it cannot tell them apart."),
    "agents": ("agents disagree ({:.2f})", "tier-candidate", "The agents' suggestions for this turn disagree (1 = they agree)."),
}


def queue_badge(turn: Turn) -> tuple[str, str, str]:
    """(text, CSS class, tooltip) of a queue row's priority badge, from the turn's own columns."""
    if turn.queue_tier != 0 and turn.queue_reason in QUEUE_REASONS:
        text, css_class, title = QUEUE_REASONS[turn.queue_reason]
        value = turn.queue_reason_value
        return (text.format(value) if value is not None else text.split(" (")[0]), css_class, title
    name, css_class = QUEUE_TIERS.get(turn.queue_tier, QUEUE_TIERS[2])
    if turn.queue_tier == 1:  # placed at ingest and not re-scored yet: the order is the margin
        return name, css_class, f"The top two passages scored {turn.queue_order:.3f} apart when the turn was stored."
    if turn.queue_tier == 0:
        return name, css_class, "The user gave this answer negative feedback."
    return name, css_class, "A random sample of the other turns, the same order for everyone."
# (value, label, shortcut key): the order of the buttons on the page.
RELEVANCE_CHOICES = [
    (Relevance.RELEVANT, "Relevant", "1"),
    (Relevance.PARTLY, "Partly", "2"),
    (Relevance.NOT_RELEVANT, "Not relevant", "3"),
]
ANSWER_CHOICES = [
    (AnswerRating.CORRECT, "Correct", "c"),
    (AnswerRating.PARTLY, "Partly", "p"),
    (AnswerRating.WRONG, "Wrong", "w"),
]
FEEDBACK_CHOICES = [("any", "Any"), ("negative", "Negative"), ("positive", "Positive"), ("none", "None")]
STATUS_CHOICES = [("all", "All"), ("unlabelled", "Unlabelled"), ("labelled_by_me", "Labelled by me"), ("disputed", "Disputed")]
GROUP_CHOICES = [("none", "Turn by turn"), ("conversation", "By conversation")]
SOURCE_CHOICES = [("any", "Any"), ("served", "Served here"), ("ingested", "Ingested"), ("imported", "Imported"),
                  ("synthetic", "Synthetic")]
# The tag picker (t) toggles tags with these keys, in picker order.
FAILURE_TAG_KEYS = "1234567890"


def failure_tag_choices(*, knowledge_base: KnowledgeBase, chosen) -> list[dict]:
    """The tag picker's rows: the tags offered, plus a retired one the label still carries."""
    chosen = set(chosen or [])
    tags = [
        tag for tag in knowledge_base_failure_tags(knowledge_base=knowledge_base, include_retired=True)
        if not tag.retired or tag.slug in chosen
    ]
    return [
        {"slug": tag.slug, "name": tag.name, "retired": tag.retired, "checked": tag.slug in chosen,
         "key": FAILURE_TAG_KEYS[i] if i < len(FAILURE_TAG_KEYS) else ""}
        for i, tag in enumerate(tags)
    ]  # fmt: skip
# Guidelines are Markdown written by admins; rendered HTML keeps text formatting and links only
# (no images: a self-hosted tool should not fetch from elsewhere).


def _is_fragment_request(request) -> bool:
    # A history restore asks for the whole page even though it comes from htmx.
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-History-Restore-Request") != "true"


def _queue_filter_from(params) -> tuple[QueueFilter, list[str]]:
    """The queue filter the GET parameters describe, and messages about the ones ignored."""
    errors = []
    dates = {}
    for name in ("from", "to"):
        value = params.get(name, "").strip()
        if value:
            try:
                dates[name] = date.fromisoformat(value)
            except ValueError:
                errors.append(f"{value!r} is not a date (YYYY-MM-DD); the {name} date is ignored.")
    feedback = params.get("feedback", "any") or "any"
    status = params.get("status", "all") or "all"
    if feedback not in QueueFilter.FEEDBACK:
        errors.append(f"Feedback must be one of {', '.join(QueueFilter.FEEDBACK)}.")
        feedback = "any"
    if status not in QueueFilter.STATUSES:
        errors.append(f"Status must be one of {', '.join(QueueFilter.STATUSES)}.")
        status = "all"
    search = params.get("q", "").replace("\x00", "")[:500]
    conversation_id = None
    conversation = params.get("conversation", "").strip()
    if conversation:
        if conversation.isascii() and conversation.isdigit() and len(conversation) < 19:
            conversation_id = int(conversation)
        else:
            errors.append(f"{conversation[:40]!r} is not a conversation id; the conversation filter is ignored.")
    group = params.get("group", "none") or "none"
    if group not in QueueFilter.GROUPS:
        errors.append(f"Group must be one of {', '.join(QueueFilter.GROUPS)}.")
        group = "none"
    source = params.get("source", "any") or "any"
    if source not in QueueFilter.SOURCES:
        errors.append(f"Source must be one of {', '.join(QueueFilter.SOURCES)}.")
        source = "any"
    queue_filter = QueueFilter(
        date_from=dates.get("from"), date_to=dates.get("to"), feedback=feedback, status=status, search=search,
        conversation_id=conversation_id, group=group, source=source,
    )
    return queue_filter, errors


def _queue_rows(turns, *, curator):
    """Annotate turns with what the table shows, so a page costs the same number of queries
    however many turns, passages and labels there are."""
    now = timezone.now()
    passages = RetrievedPassage.objects.filter(turn=OuterRef("pk"))
    # The feedback on the other turns of a row's conversation (none for a turn on its own).
    others = Turn.objects.filter(conversation_id=OuterRef("conversation_id")).exclude(pk=OuterRef("pk"))

    def others_with(feedback):
        counted = others.filter(feedback=feedback).values("conversation_id").annotate(n=Count("pk")).values("n")[:1]
        return Coalesce(Subquery(counted), Value(0))

    return (
        turns.defer("metadata", "feedback_comment", "history")
        .annotate(
            labelled_by_me=Exists(Label.objects.filter(turn=OuterRef("pk"), curator=curator, skipped=False)),
            skipped_by_me=Exists(Label.objects.filter(turn=OuterRef("pk"), curator=curator, skipped=True)),
            held_by_others=Exists(
                TurnHold.objects.filter(turn=OuterRef("pk"), expires_at__gt=now).exclude(curator=curator)
            ),
            top_score=Subquery(passages.order_by("rank").values("score")[:1]),
            passage_count=Subquery(passages.values("turn").annotate(n=Count("pk")).values("n")[:1]),
            conversation_external_id=F("conversation__external_id"),
            conversation_turn_count=F("conversation__turn_count"),
            others_negative=others_with(Turn.Feedback.THUMBS_DOWN),
            others_positive=others_with(Turn.Feedback.THUMBS_UP),
        )
    )


def _queue_page(turns, *, number, curator, grouped: bool = False) -> Page:
    """One page of the filtered queue, its rows annotated.

    The page's ids are picked from the plain turns first (an index walk in queue order, with
    LIMIT/OFFSET in a subquery) and only those rows are annotated: annotating before the OFFSET
    made Postgres run the per-row subqueries for every skipped row, seconds for a deep page of
    100k turns. Still one query for the rows, plus the paginator's COUNT.
    """
    page = Paginator(turns.values_list("pk", flat=True), QUEUE_PAGE_SIZE).get_page(number)
    if not grouped:
        page_turns = Turn.objects.filter(pk__in=page.object_list).order_by(*QUEUE_ORDER)
        page.object_list = list(_queue_rows(page_turns, curator=curator))
        return page
    # Grouped by conversation, a row's place depends on turns outside the page (its
    # conversation's first turn may be on an earlier page): take the page's ids in order
    # first, one more query, and keep that order.
    ids = list(page.object_list)
    rows = {turn.pk: turn for turn in _queue_rows(Turn.objects.filter(pk__in=ids), curator=curator)}
    page.object_list = [rows[pk] for pk in ids if pk in rows]
    return page


@require_GET
@knowledge_base_page
def queue(request, knowledge_base: KnowledgeBase):
    queue_filter, errors = _queue_filter_from(request.GET)
    conversation = None
    if queue_filter.conversation_id is not None:
        conversation = knowledge_base_conversation(
            knowledge_base=knowledge_base, conversation_id=queue_filter.conversation_id
        )
        if conversation is None:  # the same answer for another knowledge base's conversation: nothing leaks
            errors.append(f"No conversation {queue_filter.conversation_id} in this knowledge base; the filter is ignored.")
            queue_filter.conversation_id = None
    turns = turn_queue_list(knowledge_base=knowledge_base, curator=request.user, queue_filter=queue_filter)
    grouped = queue_filter.group == "conversation"
    page = _queue_page(turns, number=request.GET.get("page"), curator=request.user, grouped=grouped)
    for turn in page:
        turn.tier_name, turn.tier_class, turn.tier_title = queue_badge(turn)
        if turn.conversation_id is not None:
            # turn_count is kept by the services that add turns; never show "6/5" if it lags.
            turn.conversation_total = max(turn.conversation_turn_count or 0, turn.position + 1)
    params = request.GET.copy()
    params.pop("page", None)
    context = {
        "kb": knowledge_base,
        "page": page,
        "filter": queue_filter,
        "filter_values": {
            "from": request.GET.get("from", ""),
            "to": request.GET.get("to", ""),
            "feedback": queue_filter.feedback,
            "status": queue_filter.status,
            "q": queue_filter.search,
            "group": queue_filter.group,
            "source": queue_filter.source,
        },
        "conversation": conversation,
        "grouped": grouped,
        "feedback_choices": FEEDBACK_CHOICES,
        "status_choices": STATUS_CHOICES,
        "group_choices": GROUP_CHOICES,
        "source_choices": SOURCE_CHOICES,
        "filter_query": params.urlencode(),
        "errors": errors,
        "progress": curator_progress(knowledge_base=knowledge_base, curator=request.user),
    }
    template = "curation/workbench/_queue_table.html" if _is_fragment_request(request) else "curation/workbench/queue.html"
    response = render(request, template, context, status=400 if errors else 200)
    return fragment(response)


@require_GET
@knowledge_base_page
def judge_next(request, knowledge_base: KnowledgeBase):
    """Hand the curator the next turn (held for them) and send them to its judging page."""
    turn = turn_next(knowledge_base=knowledge_base, curator=request.user)
    saved = _saved_label(knowledge_base, request.user, request.GET.get("saved", ""))
    if turn is None:
        return render(request, "curation/workbench/queue_empty.html", {"kb": knowledge_base, "saved": saved})
    url = reverse("turn_judge", args=[knowledge_base.slug, turn.pk])
    return redirect(f"{url}?saved={saved.turn_id}" if saved else url)


def _saved_label(knowledge_base: KnowledgeBase, curator, turn_id: str) -> Label | None:
    """The curator's label of the turn named by `?saved=` (the turn they just submitted), for
    the "Saved" notice; None for a missing, foreign or malformed id."""
    if not (turn_id.isascii() and turn_id.isdigit() and len(turn_id) < 19):
        return None
    return Label.objects.filter(turn_id=int(turn_id), turn__knowledge_base=knowledge_base, curator=curator).first()


def _turn_of(knowledge_base: KnowledgeBase, turn_id: int) -> Turn:
    return get_object_or_404(Turn.objects.select_related("knowledge_base"), pk=turn_id, knowledge_base=knowledge_base)


@require_GET
@knowledge_base_page
def turn_judge(request, knowledge_base: KnowledgeBase, turn_id: int):
    turn = _turn_of(knowledge_base, turn_id)
    turn_hold_take(turn=turn, curator=request.user)  # opened from the queue or a link: hold it too
    payload, base_version, source = label_for_editing(turn=turn, curator=request.user)
    passages = list(turn.passages.order_by("rank"))
    suggestions = turn_suggestions(knowledge_base=knowledge_base, turn=turn)
    judged = payload.get("passages") or {}
    attached_relevance = {
        item["chunk_id"]: item.get("relevance", Relevance.RELEVANT)
        for item in payload.get("attached") or []
        if isinstance(item, dict) and isinstance(item.get("chunk_id"), int)
    }
    attached_chunks = Chunk.objects.filter(pk__in=attached_relevance, knowledge_base=knowledge_base).select_related("document")
    attached = [
        {"chunk": chunk, "relevance": attached_relevance[chunk.pk]}
        for chunk in sorted(attached_chunks, key=lambda chunk: list(attached_relevance).index(chunk.pk))
    ]
    state = {
        "turn_id": turn.pk,
        "knowledge_base": knowledge_base.slug,
        "curator_id": request.user.pk,
        "payload": payload,
        "base_version": base_version,
        "source": source,
        "suggestions": suggestions.as_state(),
        "urls": {
            "draft": reverse("turn_label_draft", args=[knowledge_base.slug, turn.pk]),
            "submit": reverse("turn_label_submit", args=[knowledge_base.slug, turn.pk]),
            "search": reverse("turn_search", args=[knowledge_base.slug, turn.pk]),
            "preload": reverse("turn_preload_next", args=[knowledge_base.slug, turn.pk]),
            "next": reverse("kb_judge_next", args=[knowledge_base.slug]),
        },
    }
    previous_turn = curator_previous_turn(knowledge_base=knowledge_base, curator=request.user, current=turn)
    state["urls"]["previous"] = reverse("turn_judge", args=[knowledge_base.slug, previous_turn.pk]) if previous_turn else None
    repeats = turn_identical_turns(turn=turn)
    my_versions = dict(
        Label.objects.filter(turn__in=repeats, curator=request.user).values_list("turn_id", "version")
    )
    state["identical"] = {str(repeat.pk): my_versions.get(repeat.pk, 0) for repeat in repeats}
    state["has_answer"] = bool(turn.answer.strip())
    tier_name, tier_class = QUEUE_TIERS.get(turn.queue_tier, QUEUE_TIERS[2])
    context = {
        "kb": knowledge_base,
        "turn": turn,
        "tier_name": tier_name,
        "tier_class": tier_class,
        "passage_rows": [
            {"passage": p, "relevance": judged.get(str(p.pk), ""), "suggestion": suggestions.passages.get(p.pk)}
            for p in passages
        ],
        "answer_suggestion": suggestions.answer,
        "attached": attached,
        "payload": payload,
        "base_version": base_version,
        "source": source,
        "state": state,
        "relevance_choices": RELEVANCE_CHOICES,
        "answer_choices": ANSWER_CHOICES,
        "failure_tags": failure_tag_choices(knowledge_base=knowledge_base, chosen=payload.get("failure_tags")),
        "guidelines_html": guidelines_html(knowledge_base.guidelines),
        "conversation": turn_conversation(turn=turn, curator=request.user),
        "progress": curator_progress(knowledge_base=knowledge_base, curator=request.user, on_screen=turn),
        "saved": _saved_label(knowledge_base, request.user, request.GET.get("saved", "")),
        "previous_turn": previous_turn,
        "history": turn_label_history(turn=turn, curator=request.user),
        "repeats": [{"turn": repeat, "version": my_versions.get(repeat.pk, 0)} for repeat in repeats],
        "has_answer": state["has_answer"],
    }
    return render(request, "curation/workbench/judge.html", context)


def _identical_from(request) -> dict[int, int]:
    """The repeats of the turn the curator asked to label alike: {"<turn id>": the label
    version their page saw there} in the JSON body's `identical`."""
    if request.content_type != "application/json":
        return {}
    try:
        raw = json.loads(request.body or b"{}").get("identical") or {}
    except (ValueError, UnicodeDecodeError, AttributeError):
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput("identical must map turn ids to the label version seen.")
    identical = {}
    for key, version in raw.items():
        if not (isinstance(key, str) and key.isdigit() and len(key) < 19):
            raise InvalidInput(f"identical: {key[:40]!r} is not a turn id.")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise InvalidInput(f"identical: {version!r} is not a label version.")
        identical[int(key)] = version
    return identical


def _label_request_body(request) -> tuple[dict, int | None]:
    """(payload, base version) from a JSON body, or from form fields `payload` (JSON) and
    `base_version`: navigator.sendBeacon cannot set the CSRF header, so drafts sent while the
    page closes come as a form with the CSRF token in it."""
    if request.content_type == "application/json":
        try:
            body = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput("The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise InvalidInput("The request body must be a JSON object.")
        payload, base_version = body.get("payload"), body.get("base_version")
    else:
        try:
            payload = json.loads(request.POST.get("payload", ""))
        except ValueError:
            raise InvalidInput("payload is not valid JSON.") from None
        base_version = request.POST.get("base_version")
    problem = unstorable_text_problem(payload, where="payload")
    if problem:
        raise InvalidInput(f"{problem}.")
    if base_version in (None, ""):
        return payload, None
    try:
        base_version = int(base_version)
    except (TypeError, ValueError):
        raise InvalidInput("base_version must be an integer.") from None
    if base_version < 0:
        raise InvalidInput("base_version must not be negative.")
    return payload, base_version


def _error_response(error: ServiceError) -> JsonResponse:
    return JsonResponse({"error": str(error)}, status=error.status_code)


@require_POST
@knowledge_base_page
def turn_label_draft(request, knowledge_base: KnowledgeBase, turn_id: int):
    turn = _turn_of(knowledge_base, turn_id)
    try:
        payload, base_version = _label_request_body(request)
        if base_version is None:
            raise InvalidInput("A draft needs the base_version it started from.")
        draft = label_draft_save(turn=turn, curator=request.user, payload=payload, base_version=base_version)
    except ServiceError as error:
        return _error_response(error)
    return JsonResponse({"saved_at": draft.updated_at.isoformat(), "base_version": draft.base_version})


def _next_turn_answer(knowledge_base: KnowledgeBase, turn: Turn | None) -> dict:
    if turn is None:
        return {"next_turn_id": None, "next_url": reverse("kb_judge_next", args=[knowledge_base.slug])}
    return {"next_turn_id": turn.pk, "next_url": reverse("turn_judge", args=[knowledge_base.slug, turn.pk])}


@require_POST
@knowledge_base_page
def turn_label_submit(request, knowledge_base: KnowledgeBase, turn_id: int):
    """Submit (or skip, with a reason) the curator's label; the answer names the next turn."""
    turn = _turn_of(knowledge_base, turn_id)
    try:
        payload, base_version = _label_request_body(request)
        data = LabelInput.from_payload(payload)
        identical = _identical_from(request)
        if identical:
            label, copies = label_submit_with_identical(
                turn=turn, curator=request.user, data=data, expected_version=base_version, identical=identical
            )
        else:
            label, copies = label_submit(turn=turn, curator=request.user, data=data, expected_version=base_version), []
    except ServiceError as error:
        return _error_response(error)
    next_turn = turn_next(knowledge_base=knowledge_base, curator=request.user)
    answer = _next_turn_answer(knowledge_base, next_turn)
    # The next page names the turn just saved, with a link back to edit it.
    answer["next_url"] += f"?saved={turn.pk}"
    return JsonResponse({"label_id": label.pk, "version": label.version, "skipped": label.skipped,
                         "saved_turn_id": turn.pk, "saved_url": reverse("turn_judge", args=[knowledge_base.slug, turn.pk]),
                         "applied_to": [copy.turn_id for copy in copies], **answer})


@require_POST
@knowledge_base_page
def turn_preload_next(request, knowledge_base: KnowledgeBase, turn_id: int):
    """Hold the turn after this one now, so the page can fetch it while the curator works."""
    turn = _turn_of(knowledge_base, turn_id)
    next_turn = turn_next(knowledge_base=knowledge_base, curator=request.user, exclude=[turn.pk])
    return JsonResponse(_next_turn_answer(knowledge_base, next_turn))


@require_GET
@knowledge_base_page
def turn_search(request, knowledge_base: KnowledgeBase, turn_id: int):
    """Search fragment: chunks of the knowledge base to attach to the turn's label."""
    turn = _turn_of(knowledge_base, turn_id)
    query = request.GET.get("q", "")
    context = {"kb": knowledge_base, "turn": turn, "query": query.strip(), "hits": []}
    status = 200
    if query.strip():
        try:
            hits = chunks_search(knowledge_base=knowledge_base, query=query, k=10)
        except ServiceError as error:
            context["error"], status = str(error), error.status_code
        else:
            retrieved = dict(turn.passages.exclude(chunk=None).values_list("chunk_id", "rank"))
            context["hits"] = [{"hit": hit, "retrieved_rank": retrieved.get(hit.chunk_id)} for hit in hits]
    return fragment(render(request, "curation/workbench/_search_results.html", context, status=status))


urlpatterns = [
    path("kbs/<slug:slug>/queue/", queue, name="kb_queue"),
    path("kbs/<slug:slug>/judge/", judge_next, name="kb_judge_next"),
    path("kbs/<slug:slug>/turns/<int:turn_id>/judge/", turn_judge, name="turn_judge"),
    path("kbs/<slug:slug>/turns/<int:turn_id>/draft/", turn_label_draft, name="turn_label_draft"),
    path("kbs/<slug:slug>/turns/<int:turn_id>/label/", turn_label_submit, name="turn_label_submit"),
    path("kbs/<slug:slug>/turns/<int:turn_id>/next/", turn_preload_next, name="turn_preload_next"),
    path("kbs/<slug:slug>/turns/<int:turn_id>/search/", turn_search, name="turn_search"),
]
