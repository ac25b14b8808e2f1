"""The admin side of curation: a knowledge base's dashboard and guidelines (members too), and,
for admins only, curator agreement, disputes and their adjudication, curation settings with
members, and invitations (whose accept page is the one page open to anonymous visitors).

Pages of a knowledge base answer 404 to non-members and 403 to members who are not admins.
"""

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from curation.models import AnswerRating, Invitation, Membership, Relevance
from curation.permissions import CURATOR_GROUP, knowledge_bases_for, user_is_admin
from curation.selectors import (
    DASHBOARD_DAYS,
    adjudicated_turns,
    dispute_comparison,
    disputed_turns,
    failure_tag_counts,
    guidelines_html,
    invitations_recent,
    knowledge_base_agreement,
    knowledge_base_dashboard,
    knowledge_base_failure_tags,
)
from curation.services.accounts import (
    invitation_accept,
    invitation_create,
    invitation_for_key,
    invitation_revoke,
    membership_add,
    membership_remove,
)
from curation.services.adjudication import adjudication_record
from curation.services.failure_tags import (
    failure_tag_create,
    failure_tag_for,
    failure_tag_rename,
    failure_tag_restore,
    failure_tag_retire,
)
from curation.services.guidelines import knowledge_base_guidelines_set
from curation.services.queue import knowledge_base_curation_settings_set
from curation.suggestion_selectors import suggestion_review
from curation.views.access import admin_page, fragment, knowledge_base_page
from curation.workbench_selectors import readable
from knowledge.errors import InvalidInput, ServiceError
from knowledge.models import KnowledgeBase, PersonalDataMode, Turn
from knowledge.services.knowledge_bases import knowledge_base_personal_data_mode_set
from rag.charts import bar_chart

DISPUTES_SHOWN = 200


def knowledge_base_admin_page(view):
    """A knowledge base page for admins: 404 for non-members first, then 403 for curators."""
    return knowledge_base_page(admin_page(view))


def _is_htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _int_field(data, name: str, label: str) -> int:
    try:
        return int(data.get(name, ""))
    except (TypeError, ValueError):
        raise InvalidInput(f"{label} must be a whole number.") from None


def _clean(value: str) -> str:
    # A NUL byte cannot be stored in Postgres text; the services refuse it with a message.
    return value.replace("\r\n", "\n")


# --- dashboard ---------------------------------------------------------------------------


def _label_chart(labels_per_day) -> dict:
    """The labels-per-day chart (rag.charts: a y-axis, dates thinned so none overlap, the
    day's count on hover), with the figures the page states under it."""
    counts = [n for _, n in labels_per_day]
    chart = bar_chart(
        [float(n) for n in counts],
        labels=[day.strftime("%-d %b") for day, _ in labels_per_day],
        titles=[f"{day:%a %-d %b}: {n} label{'s' if n != 1 else ''}" for day, n in labels_per_day],
    )
    return {"svg": chart, "most": max(counts, default=0), "total": sum(counts), "label": f"Labels per day, last {len(counts)} days"}


TAG_CHART_WIDTH = 420
TAG_CHART_LABEL = 190
TAG_ROW = 22


def _failure_tag_chart(counts) -> dict:
    """Bar geometry of the turns-per-failure-tag chart: one horizontal bar per tag, the tag's
    name left of it and its count right of it (inline SVG; no chart library)."""
    most = max((row.turns for row in counts), default=0)
    room = TAG_CHART_WIDTH - TAG_CHART_LABEL - 40
    rows = []
    for i, row in enumerate(counts):
        width = round(room * row.turns / most) if most else 0
        rows.append({
            "y": i * TAG_ROW,
            "text_y": i * TAG_ROW + 15,
            "width": max(width, 2) if row.turns else 0,
            "count_x": TAG_CHART_LABEL + (max(width, 2) if row.turns else 0) + 6,
            "tag": row,
        })  # fmt: skip
    return {
        "rows": rows,
        "width": TAG_CHART_WIDTH,
        "height": max(len(rows), 1) * TAG_ROW,
        "bar_x": TAG_CHART_LABEL,
        "label_x": TAG_CHART_LABEL - 6,
        "bar_height": TAG_ROW - 6,
        "total": sum(row.turns for row in counts),
    }


@require_GET
@knowledge_base_page
def dashboard(request, knowledge_base: KnowledgeBase):
    figures = knowledge_base_dashboard(knowledge_base=knowledge_base)
    # Failure tags over the last DASHBOARD_DAYS days, or all time (?tags=all).
    all_time = request.GET.get("tags") == "all"
    since = None if all_time else timezone.localdate() - timedelta(days=DASHBOARD_DAYS - 1)
    tag_counts = failure_tag_counts(knowledge_base=knowledge_base, since=since)
    return render(request, "curation/review/dashboard.html", {
        "kb": knowledge_base,
        "figures": figures,
        "chart": _label_chart(figures.labels_per_day),
        "days": DASHBOARD_DAYS,
        "tag_counts": tag_counts,
        "tag_chart": _failure_tag_chart(tag_counts),
        "tags_all_time": all_time,
        "is_admin": user_is_admin(request.user),
    })


# --- agreement ---------------------------------------------------------------------------


@require_GET
@knowledge_base_admin_page
def agreement(request, knowledge_base: KnowledgeBase):
    return render(request, "curation/review/agreement.html", {
        "kb": knowledge_base,
        "agreement": knowledge_base_agreement(knowledge_base=knowledge_base),
    })


# --- suggestion agents --------------------------------------------------------------------

TRUST_CHART_WIDTH = 240
TRUST_CHART_HEIGHT = 60


def _weekly_kappa_chart(weeks) -> dict | None:
    """Geometry of one agent's kappa per week (inline SVG, no chart library): x is the week's
    place among the weeks with figures, y kappa from -1 (bottom) to 1 (top), 0 dashed."""
    points = [week for week in weeks if week.agreement.kappa is not None]
    if not points:
        return None
    last = max(1, len(points) - 1)
    dots = []
    for i, week in enumerate(points):
        dots.append({
            "x": round(8 + (TRUST_CHART_WIDTH - 16) * i / last, 1) if len(points) > 1 else TRUST_CHART_WIDTH / 2,
            "y": round(6 + (TRUST_CHART_HEIGHT - 12) * (1 - week.agreement.kappa) / 2, 1),
            "week": week.week,
            "kappa": week.agreement.kappa,
            "percent": week.agreement.percent,
            "items": week.agreement.items,
        })  # fmt: skip
    return {
        "dots": dots,
        "line": " ".join(f"{dot['x']},{dot['y']}" for dot in dots),
        "width": TRUST_CHART_WIDTH,
        "height": TRUST_CHART_HEIGHT,
        "zero": TRUST_CHART_HEIGHT / 2,
    }


@require_GET
@knowledge_base_admin_page
def suggestions(request, knowledge_base: KnowledgeBase):
    review = suggestion_review(knowledge_base=knowledge_base)
    return render(request, "curation/review/suggestions.html", {
        "kb": knowledge_base,
        "review": review,
        "agents": [{"standing": standing, "chart": _weekly_kappa_chart(standing.weeks)} for standing in review.agents],
    })


# --- disputes and adjudication -----------------------------------------------------------


@require_GET
@knowledge_base_admin_page
def disputes(request, knowledge_base: KnowledgeBase):
    open_disputes = disputed_turns(knowledge_base=knowledge_base)
    return render(request, "curation/review/disputes.html", {
        "kb": knowledge_base,
        "disputes": open_disputes[:DISPUTES_SHOWN],
        "dispute_count": open_disputes.count(),
        "shown": DISPUTES_SHOWN,
        "adjudicated": adjudicated_turns(knowledge_base=knowledge_base)[:20],
    })


def _adjudication_tags(knowledge_base, chosen, comparison) -> list[dict]:
    """The adjudication form's tag checkboxes: the tags offered, and a retired one that a
    curator or the adjudication put on (it may stay)."""
    carried = {tag.slug for label in comparison.labels for tag in label.failure_tags.all()} | set(chosen)
    return [
        {"slug": tag.slug, "name": tag.name, "retired": tag.retired, "checked": tag.slug in chosen}
        for tag in knowledge_base_failure_tags(knowledge_base=knowledge_base, include_retired=True)
        if not tag.retired or tag.slug in carried
    ]


def _dispute_page(request, knowledge_base, turn, *, submitted=None, error="", status=200):
    comparison = dispute_comparison(turn=turn)
    submitted = submitted or {}
    passages = submitted.get("passages", {})
    rows = [
        {"comparison": row, "selected": passages.get(row.passage.pk, row.final) if submitted else row.final}
        for row in comparison.passages
    ]
    context = {
        "kb": knowledge_base,
        "turn": turn,
        "comparison": comparison,
        "rows": rows,
        "relevances": [(value, readable(value)) for value in Relevance.values],
        "ratings": [(value, readable(value)) for value in AnswerRating.values],
        # A letter per curator: the page's one-key "take A's" / "take B's" (static/js/adjudicate.js).
        "columns": [{"letter": "abcdefgh"[i], "label": label} for i, label in enumerate(comparison.labels[:8])],
        "selected_rating": submitted.get("answer_rating", comparison.final_rating),
        "gold_answer": submitted.get("gold_answer", comparison.final_gold_answer),
        "note": submitted.get("note", comparison.final_note),
        "failure_tags": _adjudication_tags(
            knowledge_base, submitted.get("failure_tags", comparison.final_failure_tags), comparison
        ),
        "error": error,
    }
    return render(request, "curation/review/dispute_detail.html", context, status=status)


@require_http_methods(["GET", "POST"])
@knowledge_base_admin_page
def dispute_detail(request, knowledge_base: KnowledgeBase, turn_id: int):
    turn = get_object_or_404(Turn, pk=turn_id, knowledge_base=knowledge_base)
    if request.method == "GET":
        return _dispute_page(request, knowledge_base, turn)
    passages = {}
    for name, value in request.POST.items():
        if name.startswith("passage-"):
            passages[name.removeprefix("passage-")] = value
    submitted = {
        "passages": {int(k): v for k, v in passages.items() if k.isdigit()},
        "answer_rating": request.POST.get("answer_rating", ""),
        "gold_answer": _clean(request.POST.get("gold_answer", "")),
        "note": _clean(request.POST.get("note", "")),
        "failure_tags": request.POST.getlist("failure_tags"),
    }
    try:
        adjudication_record(
            turn=turn,
            admin=request.user,
            passage_relevance=passages,
            answer_rating=submitted["answer_rating"],
            gold_answer=submitted["gold_answer"],
            note=submitted["note"],
            failure_tags=submitted["failure_tags"],
        )
    except ServiceError as error:
        return _dispute_page(request, knowledge_base, turn, submitted=submitted, error=str(error), status=error.status_code)
    return redirect("review_disputes", slug=knowledge_base.slug)


# --- guidelines --------------------------------------------------------------------------


@require_GET
@knowledge_base_page
def guidelines(request, knowledge_base: KnowledgeBase):
    return render(request, "curation/review/guidelines.html", {
        "kb": knowledge_base,
        "guidelines_html": guidelines_html(knowledge_base.guidelines),
        "is_admin": user_is_admin(request.user),
    })


@require_http_methods(["GET", "POST"])
@knowledge_base_admin_page
def guidelines_edit(request, knowledge_base: KnowledgeBase):
    if request.method == "GET":
        return render(request, "curation/review/guidelines_edit.html", {
            "kb": knowledge_base,
            "guidelines": knowledge_base.guidelines,
            "preview": guidelines_html(knowledge_base.guidelines),
        })
    text = _clean(request.POST.get("guidelines", ""))
    try:
        knowledge_base_guidelines_set(knowledge_base=knowledge_base, guidelines=text)
    except ServiceError as error:
        return render(request, "curation/review/guidelines_edit.html", {
            "kb": knowledge_base, "guidelines": text, "error": str(error),
        }, status=error.status_code)
    return redirect("review_guidelines", slug=knowledge_base.slug)


@require_POST
@knowledge_base_admin_page
def guidelines_preview(request, knowledge_base: KnowledgeBase):
    text = _clean(request.POST.get("guidelines", "")).replace("\x00", "")
    return fragment(render(request, "curation/review/_guidelines_preview.html", {"preview": guidelines_html(text)}))


# --- curation settings and members -------------------------------------------------------


def _failure_tags_context(knowledge_base: KnowledgeBase) -> dict:
    return {"failure_tags": knowledge_base_failure_tags(knowledge_base=knowledge_base, include_retired=True)}


def _members_context(knowledge_base: KnowledgeBase) -> dict:
    members = (
        Membership.objects.filter(knowledge_base=knowledge_base).select_related("user").order_by("user__username")
    )
    candidates = (
        get_user_model().objects.filter(groups__name=CURATOR_GROUP, is_active=True)
        .exclude(memberships__knowledge_base=knowledge_base)
        .order_by("username")
        .values_list("username", flat=True)
    )
    return {
        "kb": knowledge_base, "members": members, "candidates": candidates, "personal_data_modes": PersonalDataMode.choices,
    }


@require_http_methods(["GET", "POST"])
@knowledge_base_admin_page
def settings_page(request, knowledge_base: KnowledgeBase):
    context = {"kb": knowledge_base, **_members_context(knowledge_base), **_failure_tags_context(knowledge_base)}
    if request.method == "GET":
        return render(request, "curation/review/settings.html", context)
    try:
        with transaction.atomic():  # all the settings or none
            knowledge_base_curation_settings_set(
                knowledge_base=knowledge_base,
                labels_per_turn=_int_field(request.POST, "labels_per_turn", "Labels per turn"),
                hold_minutes=_int_field(request.POST, "hold_minutes", "Hold minutes"),
            )
            if "personal_data_mode" in request.POST:
                knowledge_base_personal_data_mode_set(knowledge_base=knowledge_base, mode=request.POST["personal_data_mode"])
    except ServiceError as error:
        context.update(error=str(error), submitted=request.POST)
        return render(request, "curation/review/settings.html", context, status=error.status_code)
    knowledge_base.refresh_from_db()
    messages.success(request, (
        f"Saved: {knowledge_base.labels_per_turn} label{'s' if knowledge_base.labels_per_turn != 1 else ''} per turn, "
        f"holds of {knowledge_base.hold_minutes} minutes, personal data mode: {knowledge_base.personal_data_mode}."
    ))
    return redirect("review_settings", slug=knowledge_base.slug)


def _members_response(request, knowledge_base, *, error: str = "", status: int = 200) -> HttpResponse:
    """The members fragment for HTMX, else back to the settings page (with the error shown)."""
    if _is_htmx(request):
        context = {**_members_context(knowledge_base), "member_error": error}
        return fragment(render(request, "curation/review/_members.html", context, status=status))
    if error:
        context = {"kb": knowledge_base, **_members_context(knowledge_base), "member_error": error}
        return fragment(render(request, "curation/review/settings.html", context, status=status))
    return fragment(redirect("review_settings", slug=knowledge_base.slug))


@require_POST
@knowledge_base_admin_page
def member_add(request, knowledge_base: KnowledgeBase):
    try:
        membership_add(knowledge_base=knowledge_base, username=request.POST.get("username", ""))
    except ServiceError as error:
        return _members_response(request, knowledge_base, error=str(error), status=error.status_code)
    return _members_response(request, knowledge_base)


@require_POST
@knowledge_base_admin_page
def member_remove(request, knowledge_base: KnowledgeBase, user_id: int):
    user = get_object_or_404(get_user_model(), pk=user_id)
    membership_remove(knowledge_base=knowledge_base, user=user)
    return _members_response(request, knowledge_base)


FAILURE_TAG_ACTIONS = {"rename", "retire", "restore"}


@require_POST
@knowledge_base_admin_page
def failure_tag_change(request, knowledge_base: KnowledgeBase):
    """Add a failure tag (`action=add`, `name`, optional `slug`), or rename, retire or restore
    the one named by `slug`; back to the settings page, or it again with the error."""
    action = request.POST.get("action", "")
    try:
        if action == "add":
            failure_tag_create(
                knowledge_base=knowledge_base, name=request.POST.get("name", ""), slug=request.POST.get("slug", "")
            )
        elif action in FAILURE_TAG_ACTIONS:
            tag = failure_tag_for(knowledge_base=knowledge_base, slug=request.POST.get("slug", ""))
            if action == "rename":
                failure_tag_rename(tag=tag, name=request.POST.get("name", ""))
            elif action == "retire":
                failure_tag_retire(tag=tag)
            else:
                failure_tag_restore(tag=tag)
        else:
            raise InvalidInput(f"Unknown action {action[:20]!r}: add, rename, retire or restore.")
    except ServiceError as error:
        context = {
            "kb": knowledge_base, **_members_context(knowledge_base), **_failure_tags_context(knowledge_base),
            "tag_error": str(error),
        }  # fmt: skip
        return render(request, "curation/review/settings.html", context, status=error.status_code)
    messages.success(request, {"add": "Failure tag added.", "rename": "Failure tag renamed.", "retire": "Failure tag retired.",
                               "restore": "Failure tag restored."}[action])
    return redirect(reverse("review_settings", args=[knowledge_base.slug]) + "#failure-tags")


# --- invitations -------------------------------------------------------------------------


def _invitation_form_context(request, **extra) -> dict:
    return {
        "roles": Invitation.Role.choices,
        "knowledge_bases": knowledge_bases_for(request.user).order_by("slug"),
        "invitations": invitations_recent(),
        **extra,
    }


@never_cache  # the page that shows the key must not be kept by any cache
@require_http_methods(["GET", "POST"])
@admin_page
def invitation_new(request):
    if request.method == "GET":
        return render(request, "curation/review/invitation_new.html", _invitation_form_context(request))
    slugs = request.POST.getlist("knowledge_bases")
    chosen = list(KnowledgeBase.objects.filter(slug__in=slugs))
    submitted = {"email": request.POST.get("email", ""), "role": request.POST.get("role", ""), "slugs": slugs}
    try:
        if len(chosen) != len(set(slugs)):
            raise InvalidInput("One of the chosen knowledge bases does not exist.")
        invitation, key = invitation_create(
            invited_by=request.user, email=submitted["email"], role=submitted["role"], knowledge_bases=chosen
        )
    except ServiceError as error:
        context = _invitation_form_context(request, error=str(error), submitted=submitted)
        return render(request, "curation/review/invitation_new.html", context, status=error.status_code)
    link = request.build_absolute_uri(reverse("invitation_accept", args=[key]))
    return render(request, "curation/review/invitation_new.html", _invitation_form_context(
        request, created=invitation, link=link, created_kbs=chosen
    ))


@require_POST
@admin_page
def invitation_revoke_view(request, invitation_id: int):
    try:
        invitation = invitation_revoke(invitation_id=invitation_id, actor=request.user)
    except ServiceError as error:
        context = _invitation_form_context(request, error=str(error))
        return render(request, "curation/review/invitation_new.html", context, status=error.status_code)
    messages.success(request, f"The invitation for {invitation.email} is revoked: its link no longer works.")
    return redirect("invitation_new")


@never_cache
@require_http_methods(["GET", "POST"])
def invitation_accept_page(request, key: str):
    try:
        invitation = invitation_for_key(key=key)
    except ServiceError as error:
        return render(request, "registration/invitation_invalid.html", {"message": str(error)}, status=error.status_code)
    context = {"invitation": invitation, "username": ""}
    if request.method == "GET":
        return render(request, "registration/invitation_accept.html", context)
    username = request.POST.get("username", "")
    password = request.POST.get("password1", "")
    context["username"] = username
    try:
        if password != request.POST.get("password2", ""):
            raise InvalidInput("The two passwords differ.")
        user = invitation_accept(key=key, username=username, password=password)
    except ServiceError as error:
        template = "registration/invitation_accept.html"
        if error.status_code in (404, 410):  # used up meanwhile, e.g. in another tab
            template = "registration/invitation_invalid.html"
        return render(request, template, {**context, "error": str(error), "message": str(error)}, status=error.status_code)
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return redirect("home")


urlpatterns = [
    path("kbs/<slug:slug>/dashboard/", dashboard, name="review_dashboard"),
    path("kbs/<slug:slug>/agreement/", agreement, name="review_agreement"),
    path("kbs/<slug:slug>/suggestions/", suggestions, name="review_suggestions"),
    path("kbs/<slug:slug>/disputes/", disputes, name="review_disputes"),
    path("kbs/<slug:slug>/disputes/<int:turn_id>/", dispute_detail, name="review_dispute_detail"),
    path("kbs/<slug:slug>/guidelines/", guidelines, name="review_guidelines"),
    path("kbs/<slug:slug>/guidelines/edit/", guidelines_edit, name="review_guidelines_edit"),
    path("kbs/<slug:slug>/guidelines/preview/", guidelines_preview, name="review_guidelines_preview"),
    path("kbs/<slug:slug>/settings/", settings_page, name="review_settings"),
    path("kbs/<slug:slug>/settings/members/", member_add, name="review_member_add"),
    path("kbs/<slug:slug>/settings/failure-tags/", failure_tag_change, name="review_failure_tag_change"),
    path("kbs/<slug:slug>/settings/members/<int:user_id>/remove/", member_remove, name="review_member_remove"),
    path("invitations/new/", invitation_new, name="invitation_new"),
    path("invitations/<str:key>/accept/", invitation_accept_page, name="invitation_accept"),
    path("invitations/<int:invitation_id>/revoke/", invitation_revoke_view, name="invitation_revoke"),
]
