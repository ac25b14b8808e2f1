"""The Django admin's view of webhook endpoints, messages and their attempts (for looking into a
delivery by hand; adding endpoints goes through the knowledge base's webhooks page, which
validates the URL and makes the secret), of retraining policies (editable, checked as the loop
page checks them), and read-only views of loop cycles, snapshots, runs, versions, evaluations and
the promotion log (knowledge.admin_read_only says why)."""

from django import forms
from django.contrib import admin

from knowledge.admin_read_only import read_only_admin_register
from knowledge.errors import ServiceError
from training.models import (
    DatasetSnapshot,
    ErasureReceipt,
    Evaluation,
    EvaluationJob,
    EvaluationQueryResult,
    EvaluationSet,
    LoopCycle,
    ModelVersion,
    PromotionEvent,
    RetrainingPolicy,
    SnapshotExample,
    TrainingRun,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from training.services.loop import POLICY_FIELDS, retraining_policy_set
from training.services.loop.policies import retraining_policy_validate


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


# --- the loop ---------------------------------------------------------------------------------


class RetrainingPolicyAdminForm(forms.ModelForm):
    """Checked as the loop page and `manage.py policy set` check a policy (mode, parameters as
    `train` takes them, cron expression, time zone, gate metrics and tolerances)."""

    class Meta:
        model = RetrainingPolicy
        fields = [
            "knowledge_base", "component", "name", "enabled", "mode", "parameters", "schedule", "timezone",
            "min_new_labels", "gate_metric", "gate_margin", "gate_guards", "gate_min_queries", "auto_promote",
            "include_synthetic", "erased_data_action", "erased_data_deadline_days",
        ]  # fmt: skip

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Left out, they take the policy defaults (retrain at the next check; 30 days).
        for name in ("erased_data_action", "erased_data_deadline_days"):
            self.fields[name].required = False

    def clean(self):
        values = super().clean()
        if self.errors:
            return values
        try:
            validated = retraining_policy_validate(
                knowledge_base=values["knowledge_base"], component=values["component"],
                values={field: values.get(field) for field in POLICY_FIELDS},
            )  # fmt: skip
        except ServiceError as error:
            raise forms.ValidationError(str(error)) from None
        values.update(validated)
        return values


@admin.register(RetrainingPolicy)
class RetrainingPolicyAdmin(admin.ModelAdmin):
    form = RetrainingPolicyAdminForm
    list_display = ["name", "knowledge_base", "component", "enabled", "mode", "schedule", "min_new_labels", "gate_metric", "auto_promote"]
    list_filter = ["enabled", "component", "auto_promote", "knowledge_base"]
    search_fields = ["name"]

    def save_model(self, request, obj, form, change) -> None:
        # Through the service, so a changed schedule counts from now, as on the loop page.
        changes = {field: form.cleaned_data[field] for field in POLICY_FIELDS}
        if change:
            previous = RetrainingPolicy.objects.get(pk=obj.pk)
            if (previous.knowledge_base_id, previous.component) != (obj.knowledge_base_id, obj.component):
                previous.delete()  # moved to another knowledge base or component: set it anew there
        saved = retraining_policy_set(knowledge_base=obj.knowledge_base, component=obj.component, changes=changes, actor=request.user)
        obj.pk = saved.pk


@admin.register(LoopCycle)
class LoopCycleAdmin(admin.ModelAdmin):
    """Read-only: cycles are moved by the loop alone."""

    list_display = ["pk", "knowledge_base", "component", "policy", "trigger", "stage", "status", "candidate", "created_at"]
    list_filter = ["status", "stage", "trigger", "component"]
    list_select_related = ["knowledge_base", "policy", "candidate"]
    readonly_fields = [field.name for field in LoopCycle._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


read_only_admin_register(
    DatasetSnapshot, EvaluationSet, SnapshotExample, ModelVersion, TrainingRun, Evaluation, EvaluationQueryResult,
    PromotionEvent, EvaluationJob, ErasureReceipt,
)  # fmt: skip
