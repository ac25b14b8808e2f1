"""The audit log page for admins: newest first, filtered by action, actor, knowledge base and
dates (the same filters as `manage.py audit`)."""

import json

from django.core.paginator import Paginator
from django.core.serializers.json import DjangoJSONEncoder
from django.shortcuts import render
from django.urls import path
from django.views.decorators.http import require_GET

from curation.views.access import admin_page
from knowledge.audit_selectors import audit_actions, audit_events_list, audit_time_parse
from knowledge.errors import InvalidInput
from knowledge.models import KnowledgeBase

PAGE_SIZE = 100


@require_GET
@admin_page
def audit_log(request):
    filters = {name: request.GET.get(name, "").strip() for name in ("action", "actor", "kb", "since", "until")}
    error, status = "", 200
    try:
        since = audit_time_parse(filters["since"], name="From") if filters["since"] else None
        until = audit_time_parse(filters["until"], name="To", end_of_day=True) if filters["until"] else None
    except InvalidInput as problem:
        since = until = None
        error, status = str(problem), problem.status_code
    events = audit_events_list(
        action=filters["action"], actor=filters["actor"], knowledge_base_slug=filters["kb"], since=since, until=until
    )
    if error:
        events = events.none()
    page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    for event in page:
        event.before_text = _json(event.before)
        event.after_text = _json(event.after)
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "page": page,
        "filters": filters,
        "actions": audit_actions(),
        "knowledge_bases": KnowledgeBase.objects.order_by("slug").values_list("slug", flat=True),
        "query": query.urlencode(),
        "error": error,
    }
    return render(request, "curation/audit/log.html", context, status=status)


def _json(summary) -> str:
    return "" if summary is None else json.dumps(summary, ensure_ascii=False, sort_keys=True, cls=DjangoJSONEncoder)


urlpatterns = [
    path("audit/", audit_log, name="audit_log"),
]
