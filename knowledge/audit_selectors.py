"""Reading the audit log: filtered lists for the admins' page and `manage.py audit`, and the
one JSON shape both export."""

import re
from datetime import datetime, time, timedelta
from datetime import timezone as dt_timezone

from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from knowledge.errors import InvalidInput
from knowledge.models import AuditEvent

_RELATIVE = re.compile(r"^(\d{1,5})([dhm])$")


def audit_time_parse(text: str, *, name: str, end_of_day: bool = False) -> datetime:
    """A time as `--since`/`--until` and the page's filters take it: an ISO date (midnight UTC;
    with `end_of_day`, the next midnight), an ISO date-time, or an age such as 7d, 12h, 30m."""
    text = (text or "").strip()
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        return timezone.now() - timedelta(**{{"d": "days", "h": "hours", "m": "minutes"}[unit]: amount})
    try:
        moment = parse_datetime(text)
        day = None if moment else parse_date(text)
    except ValueError:
        moment = day = None
    if moment is not None:
        return moment if timezone.is_aware(moment) else moment.replace(tzinfo=dt_timezone.utc)
    if day is not None:
        start = datetime.combine(day, time.min, tzinfo=dt_timezone.utc)
        return start + timedelta(days=1) if end_of_day else start
    raise InvalidInput(f"{name}: {text!r} is not a date (YYYY-MM-DD), a date-time (ISO 8601) or an age (7d, 12h, 30m).")


def audit_events_list(
    *,
    action: str = "",
    actor: str = "",
    knowledge_base_slug: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[AuditEvent]:
    """Newest first. `action` matches a whole action ("label.submit") or a family ("label.");
    `actor` is a case-insensitive part of the actor's name."""
    events = AuditEvent.objects.all()
    if action:
        events = events.filter(action__startswith=action) if action.endswith(".") else events.filter(action=action)
    if actor:
        events = events.filter(actor__icontains=actor)
    if knowledge_base_slug:
        events = events.filter(knowledge_base_slug=knowledge_base_slug)
    if since is not None:
        events = events.filter(created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lt=until)
    return events.order_by("-created_at", "-id")


def audit_actions() -> list[str]:
    """The actions the log holds (for the page's filter)."""
    return list(AuditEvent.objects.order_by("action").values_list("action", flat=True).distinct())


def audit_event_record(event: AuditEvent) -> dict:
    return {
        "id": event.pk,
        "time": event.created_at.isoformat(),
        "actor": event.actor,
        "actor_user_id": event.actor_user_id,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "knowledge_base": event.knowledge_base_slug or None,
        "knowledge_base_id": event.knowledge_base_id,
        "before": event.before,
        "after": event.after,
        "request_id": event.request_id or None,
        "ip": event.ip,
    }
