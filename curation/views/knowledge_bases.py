"""Knowledge base pages: the list, one knowledge base (documents, embedding progress, ask),
a document, a turn. Views check access, call a service or selector, and render."""

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_GET, require_POST

from curation.permissions import knowledge_bases_for, user_can_curate, user_is_admin
from curation.selectors import turn_personal_data_flags
from curation.services.personal_data import turn_personal_data_clear
from curation.views.access import fragment, knowledge_base_page
from curation.workbench_selectors import turn_label_history
from knowledge.errors import Forbidden, InvalidInput, ServiceError
from knowledge.models import Document, EmbeddingJob, KnowledgeBase, Turn
from knowledge.selectors import embedding_jobs_recent, live_space_chunks_missing, live_version_names, live_version_names_of
from knowledge.services.turns import turn_ask, turn_feedback_set
from rag.documents import SUPPORTED_SUFFIXES


def _embedding_progress(knowledge_base: KnowledgeBase) -> list[EmbeddingJob]:
    return embedding_jobs_recent(knowledge_base=knowledge_base)


@require_GET
@login_required
def home(request):
    knowledge_bases = (
        knowledge_bases_for(request.user)
        .select_related("live_space")
        .annotate(document_count=Count("documents", distinct=True))
        .order_by("slug")
    )
    rows = [(kb, live_version_names_of(knowledge_base=kb)) for kb in knowledge_bases]
    return render(request, "curation/home.html", {"rows": rows, "is_admin": user_is_admin(request.user)})


@require_GET
@knowledge_base_page
def knowledge_base_detail(request, knowledge_base: KnowledgeBase):
    context = {
        "kb": knowledge_base,
        "is_admin": user_is_admin(request.user),
        "live_versions": live_version_names(knowledge_base=knowledge_base),
        "document_count": knowledge_base.documents.count(),
        "chunk_count": knowledge_base.chunks.count(),
        "jobs": _embedding_progress(knowledge_base),
        "documents": knowledge_base.documents.order_by("external_id")[:50],
        "turns": _recent_turns(knowledge_base),
        "chunks_missing": live_space_chunks_missing(knowledge_base=knowledge_base),
        "supported": ", ".join(SUPPORTED_SUFFIXES),
    }
    return render(request, "curation/kb_detail.html", context)


def _recent_turns(knowledge_base: KnowledgeBase):
    return knowledge_base.turns.order_by("-created_at", "-pk")[:20]


@require_GET
@knowledge_base_page
def knowledge_base_progress(request, knowledge_base: KnowledgeBase):
    return fragment(render(request, "curation/_progress.html", {"kb": knowledge_base, "jobs": _embedding_progress(knowledge_base)}))


@require_POST
@knowledge_base_page
def knowledge_base_ask(request, knowledge_base: KnowledgeBase):
    query = request.POST.get("query", "").replace("\x00", "").strip()
    context = {"kb": knowledge_base, "query": query, "chunks_missing": live_space_chunks_missing(knowledge_base=knowledge_base)}
    try:
        context["turn"] = turn_ask(knowledge_base=knowledge_base, query=query, k=5)
    except ServiceError as error:
        context["error"] = str(error)
        response = fragment(render(request, "curation/_answer.html", context))
        response.status_code = error.status_code
        return response
    context["turns"] = _recent_turns(knowledge_base)  # the list below the answer gains the new turn (out of band)
    return fragment(render(request, "curation/_answer.html", context))


@require_POST
@knowledge_base_page
def turn_feedback_view(request, knowledge_base: KnowledgeBase, turn_id: int):
    """Thumbs up or down (or `clear`) on an answer asked on the knowledge base page: the same
    service as the API's feedback endpoint, so the turn moves in the curation queue alike."""
    turn = get_object_or_404(Turn, pk=turn_id, knowledge_base=knowledge_base)
    value = {"up": 1, "down": -1, "clear": None}.get(request.POST.get("feedback", ""), "bad")
    context = {"kb": knowledge_base, "turn": turn}
    try:
        if value == "bad":
            raise InvalidInput("feedback must be up, down or clear.")
        turn_feedback_set(turn=turn, feedback=value, comment=turn.feedback_comment)
    except ServiceError as error:
        context["feedback_error"] = str(error)
        return fragment(render(request, "curation/_feedback.html", context, status=error.status_code))
    return fragment(render(request, "curation/_feedback.html", context))


@require_GET
@knowledge_base_page
def document_detail(request, knowledge_base: KnowledgeBase, document_id: int):
    document = get_object_or_404(Document, pk=document_id, knowledge_base=knowledge_base)
    return render(request, "curation/document_detail.html", {
        "document": document, "chunks": document.chunks.order_by("order"), "is_admin": user_is_admin(request.user),
    })


@require_GET
@login_required
def turn_detail(request, turn_id: int):
    turn = get_object_or_404(Turn.objects.select_related("knowledge_base"), pk=turn_id)
    if not user_can_curate(request.user, turn.knowledge_base):
        raise Http404("No such turn.")
    flags = turn_personal_data_flags(turn=turn)
    context = {
        "turn": turn,
        "passages": turn.passages.all(),
        "personal_data_flags": flags,
        "personal_data_held": any(label.personal_data_cleared_at is None for label in flags),
        "is_admin": user_is_admin(request.user),
        "history": turn_label_history(turn=turn),
    }
    return render(request, "curation/turn_detail.html", context)


@require_POST
@login_required
def turn_personal_data_clear_view(request, turn_id: int):
    turn = get_object_or_404(Turn.objects.select_related("knowledge_base"), pk=turn_id)
    if not user_can_curate(request.user, turn.knowledge_base):
        raise Http404("No such turn.")
    try:
        turn_personal_data_clear(turn=turn, actor=request.user)
    except Forbidden as error:
        raise PermissionDenied(str(error)) from error
    except ServiceError as error:
        return HttpResponse(str(error), status=error.status_code, content_type="text/plain; charset=utf-8")
    return redirect("turn_detail", turn_id=turn.pk)


urlpatterns = [
    path("", home, name="home"),
    path("kbs/<slug:slug>/", knowledge_base_detail, name="kb_detail"),
    path("kbs/<slug:slug>/progress/", knowledge_base_progress, name="kb_progress"),
    path("kbs/<slug:slug>/ask/", knowledge_base_ask, name="kb_ask"),
    path("kbs/<slug:slug>/documents/<int:document_id>/", document_detail, name="document_detail"),
    path("turns/<int:turn_id>/", turn_detail, name="turn_detail"),
    path("kbs/<slug:slug>/turns/<int:turn_id>/feedback/", turn_feedback_view, name="turn_feedback"),
    path("turns/<int:turn_id>/personal-data/clear/", turn_personal_data_clear_view, name="turn_personal_data_clear"),
]
