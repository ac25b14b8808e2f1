"""The labels download: a knowledge base's labels as labels JSONL (docs/labels-format.md),
streamed, for admins only."""

from django.contrib.auth import get_user_model
from django.http import Http404, StreamingHttpResponse
from django.urls import path
from django.views.decorators.http import require_GET

from curation.services.label_io import CONTENT_TYPE, label_record_line, labels_export
from curation.views.access import admin_page
from knowledge.models import KnowledgeBase


@require_GET
@admin_page
def labels_download(request, slug: str):
    # admin_page checks the role only; the slug is resolved here.
    knowledge_base = KnowledgeBase.objects.filter(slug=slug).first()
    if knowledge_base is None:
        raise Http404("No such knowledge base.")
    curator = None
    username = request.GET.get("curator", "")
    if username:
        curator = get_user_model().objects.filter(username=username).first()
        if curator is None:
            raise Http404("No such curator.")
    lines = (label_record_line(record) for record in labels_export(knowledge_base=knowledge_base, curator=curator))
    response = StreamingHttpResponse(lines, content_type=CONTENT_TYPE)
    # Slugs are lowercase letters, digits and dashes: safe inside the quoted file name.
    response["Content-Disposition"] = f'attachment; filename="{knowledge_base.slug}-labels.jsonl"'
    return response


urlpatterns = [
    path("kbs/<slug:slug>/labels.jsonl", labels_download, name="labels_download"),
]
