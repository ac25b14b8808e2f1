"""Template filters of the curation pages: stored values as people read them."""

from django import template

from curation.workbench_selectors import readable as readable_value

register = template.Library()


@register.filter
def readable(value) -> str:
    """`not_relevant` -> "not relevant", empty -> "—"."""
    return readable_value(value)
