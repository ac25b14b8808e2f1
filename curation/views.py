"""Web pages (server-rendered, HTMX fragments). Views check access, call a service or selector,
and render; fragments send `Vary: HX-Request` so caches keep them apart from full pages."""

from django.contrib.auth.decorators import login_required, user_passes_test
from django.db.models import Count
from django.shortcuts import get_object_or_404, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_POST

from curation.errors import ServiceError
from curation.models import Document, EmbeddingJob, KnowledgeBase, Turn
from curation.services.turns import turn_ask

# Until curator roles land, the pages are for staff accounts (admins).
staff_required = user_passes_test(lambda user: user.is_active and user.is_staff)


def _fragment(request, template: str, context: dict):
    response = render(request, template, context)
    patch_vary_headers(response, ["HX-Request"])
    return response


def _embedding_progress(knowledge_base: KnowledgeBase) -> list[EmbeddingJob]:
    return list(
        EmbeddingJob.objects.filter(space__knowledge_base=knowledge_base)
        .select_related("space")
        .order_by("-created_at")[:3]
    )


@require_GET
@login_required
@staff_required
def home(request):
    knowledge_bases = KnowledgeBase.objects.select_related("live_space").annotate(
        document_count=Count("documents", distinct=True)
    )
    return render(request, "curation/home.html", {"knowledge_bases": knowledge_bases})


@require_GET
@login_required
@staff_required
def knowledge_base_detail(request, slug: str):
    knowledge_base = get_object_or_404(KnowledgeBase.objects.select_related("live_space"), slug=slug)
    context = {
        "kb": knowledge_base,
        "document_count": knowledge_base.documents.count(),
        "chunk_count": knowledge_base.chunks.count(),
        "jobs": _embedding_progress(knowledge_base),
        "documents": knowledge_base.documents.order_by("external_id")[:50],
        "turns": knowledge_base.turns.order_by("-created_at")[:20],
    }
    return render(request, "curation/kb_detail.html", context)


@require_GET
@login_required
@staff_required
def knowledge_base_progress(request, slug: str):
    knowledge_base = get_object_or_404(KnowledgeBase, slug=slug)
    return _fragment(request, "curation/_progress.html", {"kb": knowledge_base, "jobs": _embedding_progress(knowledge_base)})


@require_POST
@login_required
@staff_required
def knowledge_base_ask(request, slug: str):
    knowledge_base = get_object_or_404(KnowledgeBase.objects.select_related("live_space"), slug=slug)
    query = request.POST.get("query", "").replace("\x00", "").strip()
    context = {"kb": knowledge_base, "query": query}
    try:
        context["turn"] = turn_ask(knowledge_base=knowledge_base, query=query, k=5)
    except ServiceError as error:
        context["error"] = str(error)
        response = _fragment(request, "curation/_answer.html", context)
        response.status_code = error.status_code
        return response
    return _fragment(request, "curation/_answer.html", context)


@require_GET
@login_required
@staff_required
def document_detail(request, slug: str, document_id: int):
    document = get_object_or_404(Document.objects.select_related("knowledge_base"), pk=document_id, knowledge_base__slug=slug)
    return render(request, "curation/document_detail.html", {"document": document, "chunks": document.chunks.order_by("order")})


@require_GET
@login_required
@staff_required
def turn_detail(request, turn_id: int):
    turn = get_object_or_404(Turn.objects.select_related("knowledge_base"), pk=turn_id)
    return render(request, "curation/turn_detail.html", {"turn": turn, "passages": turn.passages.all()})
