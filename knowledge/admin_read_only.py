"""A read-only Django admin for looking things up.

Every write in ragloop goes through a service (it checks permissions, keeps counters and the
queue in step, records lineage, notifies), and the admin's forms would bypass all of that. So
the product's models are registered view-only: an operator can list, filter and open any row,
and changes are made in the product's pages and commands. Fields that hold secrets or bulky
data (token hashes, vectors) are left out.
"""

from django.contrib import admin
from django.db import models

# Not shown at all: secrets, and columns too large to be useful in a table or a form.
HIDDEN_FIELDS = {"key_hash", "secret", "vector", "embedding"}
BULKY_FIELD_TYPES = (models.TextField, models.JSONField)
LIST_COLUMNS = 7


class ReadOnlyAdmin(admin.ModelAdmin):
    """View-only: no add, change or delete, whatever the user's admin permissions."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


def read_only_admin_register(*model_classes) -> None:
    """Register each model view-only, with its first plain fields as the list's columns."""
    for model in model_classes:
        fields = [f for f in model._meta.fields if f.name not in HIDDEN_FIELDS]
        columns = [f.name for f in fields if not isinstance(f, BULKY_FIELD_TYPES)][:LIST_COLUMNS]
        filters = [f.name for f in fields if f.choices or isinstance(f, models.BooleanField)][:4]
        searchable = [f.name for f in fields if isinstance(f, models.CharField) and not f.choices][:3]
        admin_class = type(
            f"{model.__name__}Admin",
            (ReadOnlyAdmin,),
            {
                "list_display": columns,
                "list_filter": filters,
                "search_fields": searchable,
                "fields": [f.name for f in fields if f.editable or f.name in columns],
                "readonly_fields": [f.name for f in fields],
                "list_select_related": [f.name for f in fields if isinstance(f, models.ForeignKey) and f.name in columns],
                "__module__": model.__module__,
            },
        )
        admin.site.register(model, admin_class)
