"""The Django admin's view of webhook endpoints, messages and their attempts: for looking into a
delivery by hand. Adding endpoints goes through the knowledge base's webhooks page, which
validates the URL and makes the secret."""

from django.contrib import admin

from training.models import WebhookAttempt, WebhookEndpoint, WebhookMessage


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ["url", "knowledge_base", "events", "enabled", "created_at"]
    list_filter = ["enabled", "knowledge_base"]
    search_fields = ["url"]
    # The URL was validated (http or https) when the endpoint was added; change it there.
    readonly_fields = ["url", "secret", "created_by", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    readonly_fields = ["created_at", "status_code", "error", "duration_ms", "next_retry_at"]
    fields = readonly_fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(WebhookMessage)
class WebhookMessageAdmin(admin.ModelAdmin):
    list_display = ["message_id", "event", "endpoint", "status", "attempt_count", "created_at", "delivered_at"]
    list_filter = ["status", "event"]
    search_fields = ["message_id", "endpoint__url"]
    list_select_related = ["endpoint"]
    readonly_fields = ["endpoint", "message_id", "event", "payload", "attempt_count", "created_at", "delivered_at"]
    inlines = [WebhookAttemptInline]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(WebhookAttempt)
class WebhookAttemptAdmin(admin.ModelAdmin):
    list_display = ["message", "status_code", "duration_ms", "next_retry_at", "created_at"]
    list_filter = ["status_code"]
    list_select_related = ["message"]
    readonly_fields = ["message", "status_code", "error", "duration_ms", "next_retry_at", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False
