"""Model review pages for admins: a knowledge base's model versions, training runs and promotion
log; one version's lineage and latest evaluation against the baseline, with per-query diffs and
the promote and roll back actions; downloads of dataset snapshot exports; the loop page
(retraining policies, their form and "run now", the cycle history with its charts, a cycle's
live log); and the webhook endpoints with their deliveries.

Every page is a knowledge base page for admins: 404 for non-members, 403 for curators.
"""

import json

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from curation.views.access import fragment
from curation.views.review import knowledge_base_admin_page
from knowledge.errors import Conflict, InvalidInput, NotFound, ServiceError
from knowledge.models import KnowledgeBase
from rag.charts import line_chart
from training.loop_charts import labels_and_cycles_chart, metric_chart, metrics_over_versions
from training.models import Component, DatasetSnapshot, ErasureReceipt, RetrainingPolicy, TrainingRun
from training.selectors import (
    erasure_receipts_list,
    loop_cycle_get,
    loop_overview,
    model_version_get,
    model_version_promotion_summary,
    model_version_review,
    model_version_rollback_summary,
    models_overview,
    retraining_policy_get,
    runs_active,
    snapshot_get,
    snapshot_heldout_warnings,
    snapshot_latest,
    training_run_progress,
    training_runs_recent,
    webhook_endpoint_get,
    webhooks_overview,
)
from training.services.erasure import erasure_execute, erasure_preview
from training.services.evaluation import HEADLINE_METRIC
from training.services.exports import (
    EXPORT_FORMATS,
    EXPORT_SPLITS,
    dataset_export_files,
)
from training.services.loop import POLICY_FIELDS, loop_cycle_run_now, retraining_policy_set
from training.services.loop.policies import DEFAULT_MODE
from training.services.loop.policies import METRICS as POLICY_METRICS
from training.services.runs import training_run_cancel, training_run_start
from training.services.runs.parameters import MODES, mode_parameter_fields, parameter_value_from_text
from training.services.snapshots import dataset_snapshot_create
from training.services.versions import model_version_promote, model_version_rollback
from training.services.webhooks import (
    webhook_endpoint_create,
    webhook_endpoint_delete,
    webhook_endpoint_set_enabled,
)

CURVE_WIDTH = 480
CURVE_HEIGHT = 120
CURVE_MAX_POINTS = 400
REASON_MAX_LENGTH = 2000


def _curve_chart(curve: list) -> dict | None:
    """Polyline geometry of a training loss curve (inline SVG; no chart library)."""
    points = []
    for point in curve if isinstance(curve, list) else []:
        if not isinstance(point, dict):
            continue
        loss = point.get("loss", point.get("train_loss"))
        if isinstance(loss, (int, float)) and not isinstance(loss, bool) and loss == loss:  # loss == loss: not NaN
            points.append((point.get("step", len(points) + 1), float(loss)))
    if len(points) < 2:
        return None
    stride = max(1, len(points) // CURVE_MAX_POINTS)
    shown = points[::stride]
    if shown[-1] != points[-1]:
        shown.append(points[-1])
    low = min(loss for _, loss in points)
    high = max(loss for _, loss in points)
    # A y-axis of round ticks and a dot per shown step, its loss on hover (rag.charts).
    chart = line_chart(
        [loss for _, loss in shown],
        labels=[f"step {step}" for step, _ in shown],
        titles=[f"step {step}: loss {loss:.4f}" for step, loss in shown],
    )
    return {
        "svg": chart,
        "label": f"Training loss over {len(points)} steps; hover a dot for its step and loss",
        "first": points[0],
        "last": points[-1],
        "low": low,
        "high": high,
        "steps": len(points),
    }


def _reason(request) -> str:
    return request.POST.get("reason", "").replace("\x00", "").replace("\r\n", "\n").strip()[:REASON_MAX_LENGTH]


def _version_or_404(knowledge_base: KnowledgeBase, name: str):
    try:
        return model_version_get(knowledge_base=knowledge_base, name=name)
    except NotFound:
        raise Http404("No such model version.") from None


# --- pages ------------------------------------------------------------------------------------


@require_GET
@knowledge_base_admin_page
def models_page(request, knowledge_base: KnowledgeBase):
    overview = models_overview(knowledge_base=knowledge_base)
    latest = snapshot_latest(knowledge_base=knowledge_base)
    return render(request, "training/models.html", {
        "kb": knowledge_base,
        "overview": overview,
        "export_formats": [f for f in EXPORT_FORMATS if f != "beir"],
        "metric_trends": metrics_over_versions(overview.components),
        "snapshot_panel": _snapshot_panel_context(knowledge_base, latest=latest),
    })


# --- snapshots and new runs -------------------------------------------------------------------


def _snapshot_panel_context(knowledge_base, *, latest=None, created=None, error: str = "", form=None) -> dict:
    shown = created or latest
    return {
        "kb": knowledge_base, "snapshot": shown, "created": created is not None, "error": error,
        "warnings": snapshot_heldout_warnings(snapshot=shown) if shown else [],
        "form": form or {"heldout_share": "0.2", "include_synthetic": False},
    }  # fmt: skip


@require_POST
@knowledge_base_admin_page
def snapshot_create_view(request, knowledge_base: KnowledgeBase):
    """Freeze the current labels (`dataset_snapshot_create`, as `manage.py snapshot_create`);
    answers with the snapshot panel: its counts and held-out warnings, or the refusal."""
    form = {"heldout_share": request.POST.get("heldout_share", "").strip() or "0.2",
            "include_synthetic": request.POST.get("include_synthetic") == "on"}  # fmt: skip
    status = 200
    try:
        try:
            share = float(form["heldout_share"])
        except ValueError:
            raise InvalidInput(f"heldout_share must be a number between 0 and 1, got {form['heldout_share']!r}.") from None
        created = dataset_snapshot_create(
            knowledge_base=knowledge_base, created_by=request.user, heldout_share=share,
            include_synthetic=form["include_synthetic"],
        )  # fmt: skip
        context = _snapshot_panel_context(knowledge_base, created=created, form=form)
    except ServiceError as error:
        status = error.status_code
        context = _snapshot_panel_context(knowledge_base, latest=snapshot_latest(knowledge_base=knowledge_base), error=str(error), form=form)
    if request.headers.get("HX-Request") != "true":
        if status == 200:
            messages.success(request, f"Snapshot #{context['snapshot'].pk} was taken.")
        else:
            messages.error(request, context["error"])
        return redirect("training_models", slug=knowledge_base.slug)
    return fragment(render(request, "training/_snapshot_panel.html", context, status=status))


def _mode_choices() -> list[tuple[str, list[tuple[str, str]]]]:
    return [(component, [(f"{component}:{mode}", mode) for mode in MODES[component]]) for component in Component.values]


def _run_form_context(knowledge_base, data, *, error: str = "") -> dict:
    choice = data.get("mode", "").strip() or f"{Component.RETRIEVER}:{MODES[Component.RETRIEVER][0]}"
    component, _, mode = choice.partition(":")
    if component not in MODES or mode not in MODES[component]:
        component, mode = Component.RETRIEVER, MODES[Component.RETRIEVER][0]
        choice = f"{component}:{mode}"
        error = error or f"{data.get('mode')!r} is not a training mode; choose one from the list."
    fields = [
        {"field": field, "value": data.get(f"param_{field.name}", "").strip()} for field in mode_parameter_fields(mode=mode)
    ]
    snapshots = list(DatasetSnapshot.objects.filter(knowledge_base=knowledge_base).order_by("-created_at", "-pk")[:10])
    return {
        "kb": knowledge_base, "choice": choice, "component": component, "mode": mode, "modes": _mode_choices(),
        "fields": fields, "snapshots": snapshots, "snapshot_choice": data.get("snapshot", ""),
        "include_synthetic": data.get("include_synthetic") == "on", "error": error,
    }  # fmt: skip


def _run_parameters(post, mode: str) -> dict:
    """The form's filled-in parameter fields, read like `--param key=value`; blank: the default."""
    parameters = {}
    for field in mode_parameter_fields(mode=mode):
        text = post.get(f"param_{field.name}", "").replace("\x00", "").strip()
        if text:
            parameters[field.name] = parameter_value_from_text(text)
    return parameters


@require_http_methods(["GET", "POST"])
@knowledge_base_admin_page
def training_run_new(request, knowledge_base: KnowledgeBase):
    """GET: the run form for a mode (the mode picker reloads its parameter fields with HTMX);
    POST: `training_run_start`, as `manage.py train`, then the run's page."""
    data = request.POST if request.method == "POST" else request.GET
    context = _run_form_context(knowledge_base, data)
    if request.method == "GET":
        return render(request, "training/run_new.html", context, status=422 if context["error"] else 200)
    try:
        if context["error"]:
            raise InvalidInput(context["error"])
        snapshot = None
        if context["snapshot_choice"]:
            try:
                snapshot = snapshot_get(knowledge_base=knowledge_base, snapshot_id=context["snapshot_choice"])
            except NotFound:
                raise InvalidInput(f"Snapshot {context['snapshot_choice']!r} is not one of this knowledge base's.") from None
        run = training_run_start(
            knowledge_base=knowledge_base, component=context["component"], mode=context["mode"],
            parameters=_run_parameters(request.POST, context["mode"]), snapshot=snapshot,
            include_synthetic=context["include_synthetic"], created_by=request.user,
        )  # fmt: skip
    except ServiceError as error:
        context["error"] = str(error)
        return render(request, "training/run_new.html", context, status=error.status_code)
    messages.success(request, f"Training run #{run.pk} ({run.component}, {run.mode}) is queued.")
    return redirect("training_run_detail", slug=knowledge_base.slug, run_id=run.pk)


@require_GET
@knowledge_base_admin_page
def training_runs_fragment(request, knowledge_base: KnowledgeBase):
    runs = training_runs_recent(knowledge_base=knowledge_base)
    return fragment(render(request, "training/_runs.html", {"kb": knowledge_base, "runs": runs, "active_runs": runs_active(runs)}))


@require_POST
@knowledge_base_admin_page
def training_run_cancel_view(request, knowledge_base: KnowledgeBase, run_id: int):
    """Cancel a run from the runs table; answers with the refreshed table (or its error)."""
    run = TrainingRun.objects.filter(pk=run_id, knowledge_base=knowledge_base).first()
    if run is None:
        raise Http404("No such training run.")
    status, error = 200, ""
    try:
        training_run_cancel(run=run)
    except ServiceError as service_error:
        status, error = service_error.status_code, str(service_error)
    runs = training_runs_recent(knowledge_base=knowledge_base)
    context = {"kb": knowledge_base, "runs": runs, "active_runs": runs_active(runs), "error": error}
    return fragment(render(request, "training/_runs.html", context, status=status))


def _version_page(request, knowledge_base, version, *, error: str = "", reason: str = "", status: int = 200):
    review = model_version_review(version=version)
    return render(request, "training/version_detail.html", {
        "kb": knowledge_base,
        "version": version,
        "review": review,
        "curve": _curve_chart(version.training_curve),
        "is_retriever": version.component == Component.RETRIEVER,
        "error": error,
        "reason": reason,
    }, status=status)


@require_GET
@knowledge_base_admin_page
def version_detail(request, knowledge_base: KnowledgeBase, name: str):
    return _version_page(request, knowledge_base, _version_or_404(knowledge_base, name))


def _confirmation(request, knowledge_base, version, action: str, *, error: str = "", reason: str = "", status: int = 200):
    """The promotion (or rollback) confirmation: every metric's change against what serves, the
    regressions named, a required reason. A panel on the version page (HTMX) or a page."""
    summary = (
        model_version_promotion_summary(version=version) if action == "promote" else model_version_rollback_summary(version=version)
    )
    context = {"kb": knowledge_base, "version": version, "summary": summary, "action": action, "error": error, "reason": reason}
    if request.headers.get("HX-Request") == "true" and request.method == "GET":
        return fragment(render(request, "training/_change_confirm.html", context, status=status))
    return fragment(render(request, "training/change_confirm.html", context, status=status))


@require_GET
@knowledge_base_admin_page
def version_promote_confirm(request, knowledge_base: KnowledgeBase, name: str):
    return _confirmation(request, knowledge_base, _version_or_404(knowledge_base, name), "promote")


@require_GET
@knowledge_base_admin_page
def version_rollback_confirm(request, knowledge_base: KnowledgeBase, name: str):
    return _confirmation(request, knowledge_base, _version_or_404(knowledge_base, name), "rollback")


def _reason_required(reason: str, action: str) -> None:
    if not reason:
        raise InvalidInput(f"Say why you {action}: a reason is required, and kept in the promotion log.")


@require_POST
@knowledge_base_admin_page
def version_promote(request, knowledge_base: KnowledgeBase, name: str):
    version = _version_or_404(knowledge_base, name)
    reason = _reason(request)
    try:
        _reason_required(reason, f"promote {version.name}")
        event = model_version_promote(version=version, actor=request.user, reason=reason)
    except ServiceError as error:
        return _confirmation(request, knowledge_base, version, "promote", error=str(error), reason=reason, status=error.status_code)
    previous = event.from_version.name if event.from_version else "the base model"
    messages.success(request, f"{version.name} is live; it replaced {previous}.")
    return redirect("training_version_detail", slug=knowledge_base.slug, name=version.name)


@require_POST
@knowledge_base_admin_page
def version_rollback(request, knowledge_base: KnowledgeBase, name: str):
    version = _version_or_404(knowledge_base, name)
    reason = _reason(request)
    try:
        # The button rolls back *this* version; if another one went live since the page was
        # drawn, the admin is told instead of rolling back something they did not look at.
        if version.status != version.Status.LIVE:
            raise Conflict(f"{version.name} is not live ({version.status}); there is nothing to roll back.")
        _reason_required(reason, f"roll back {version.name}")
        event = model_version_rollback(
            knowledge_base=knowledge_base, component=version.component, actor=request.user, reason=reason
        )
    except ServiceError as error:
        return _confirmation(request, knowledge_base, version, "rollback", error=str(error), reason=reason, status=error.status_code)
    restored = event.to_version.name if event.to_version else "the base model"
    messages.success(request, f"{version.name} was rolled back; {restored} serves {version.component} again.")
    return redirect("training_version_detail", slug=knowledge_base.slug, name=version.name)


# --- snapshot exports -------------------------------------------------------------------------


def _export_response(request, knowledge_base: KnowledgeBase, snapshot_id: int, export_format: str) -> HttpResponse:
    split = request.GET.get("split", "train")
    if split not in EXPORT_SPLITS:
        return HttpResponse(f"Unknown split; choose one of {', '.join(EXPORT_SPLITS)}.", status=400, content_type="text/plain")
    try:
        snapshot = snapshot_get(knowledge_base=knowledge_base, snapshot_id=snapshot_id)
        export = dataset_export_files(snapshot=snapshot, format=export_format, split=split)
    except NotFound:
        raise Http404("No such snapshot.") from None
    except ServiceError as error:
        return HttpResponse(str(error), status=error.status_code, content_type="text/plain")
    # Slugs, ids, format and split names are letters, digits and dashes: safe in the file name.
    stem = f"{knowledge_base.slug}-snapshot-{snapshot.pk}-{split}-{export_format}"
    if export_format == "beir":
        response = HttpResponse(export.zip_bytes(folder=stem), content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{stem}.zip"'
    else:
        [content] = export.files.values()
        response = HttpResponse(content, content_type="application/jsonl; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{stem}.jsonl"'
    return response


@require_GET
@knowledge_base_admin_page
def snapshot_export_jsonl(request, knowledge_base: KnowledgeBase, snapshot_id: int, export_format: str):
    if export_format not in EXPORT_FORMATS or export_format == "beir":
        raise Http404("No such export format.")
    return _export_response(request, knowledge_base, snapshot_id, export_format)


@require_GET
@knowledge_base_admin_page
def snapshot_export_beir(request, knowledge_base: KnowledgeBase, snapshot_id: int):
    return _export_response(request, knowledge_base, snapshot_id, "beir")


# --- the loop ---------------------------------------------------------------------------------


def _policy_form_values(post) -> dict:
    """The policy form's fields as `retraining_policy_set` takes them (it validates them)."""

    def number(name, kind=float):
        text = post.get(name, "").strip()
        if not text:
            return None
        try:
            return kind(text)
        except ValueError:
            raise InvalidInput(f"{name.replace('_', ' ')} must be {'a whole number' if kind is int else 'a number'}, got {text!r}.") from None

    def mapping(name, label):
        text = post.get(name, "").strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError as error:
            raise InvalidInput(f"{label} must be a JSON object such as {{\"epochs\": 3}}: {error}.") from None
        if not isinstance(value, dict):
            raise InvalidInput(f"{label} must be a JSON object such as {{\"epochs\": 3}}.")
        return value

    values = {
        "name": post.get("name", "").strip(),
        "enabled": post.get("enabled") == "on",
        "mode": post.get("mode", "").strip(),
        "parameters": mapping("parameters", "Parameters"),
        "schedule": post.get("schedule", "").strip(),
        "timezone": post.get("timezone", "").strip() or "UTC",
        "min_new_labels": number("min_new_labels", int) or None,
        "gate_metric": post.get("gate_metric", "").strip(),
        "gate_guards": mapping("gate_guards", "Guards"),
        "auto_promote": post.get("auto_promote") == "on",
        "include_synthetic": post.get("include_synthetic") == "on",
        "erased_data_action": post.get("erased_data_action", "").strip(),
    }
    for name, kind in (("gate_margin", float), ("gate_min_queries", int), ("erased_data_deadline_days", int)):
        value = number(name, kind)
        if value is not None:
            values[name] = value
    return values


def _policy_form_initial(knowledge_base, component: str, policy) -> dict:
    if policy is None:
        return {
            "name": f"{knowledge_base.slug}-{component}", "enabled": True, "mode": DEFAULT_MODE[component], "parameters": "",
            "schedule": "", "timezone": "UTC", "min_new_labels": None, "gate_metric": HEADLINE_METRIC[component],
            "gate_margin": 0.01, "gate_min_queries": 20, "gate_guards": "", "auto_promote": False,
            "include_synthetic": False, "erased_data_action": "next_cycle", "erased_data_deadline_days": 30,
        }  # fmt: skip
    form = {field: getattr(policy, field) for field in POLICY_FIELDS}
    form["parameters"] = json.dumps(policy.parameters) if policy.parameters else ""
    form["gate_guards"] = json.dumps(policy.gate_guards) if policy.gate_guards else ""
    return form


@require_GET
@knowledge_base_admin_page
def loop_page(request, knowledge_base: KnowledgeBase):
    overview = loop_overview(knowledge_base=knowledge_base)
    return render(request, "training/loop.html", {
        "kb": knowledge_base,
        "overview": overview,
        "metric_charts": [
            {"component": component, "metric": HEADLINE_METRIC[component], "chart": metric_chart(points)}
            for component, points in sorted(overview.version_points.items())
        ],
        "labels_chart": labels_and_cycles_chart(overview.labels_per_day, overview.cycles_per_day),
        "cycles_running": any(not cycle.is_finished for cycle in overview.cycles),
    })
@require_GET
@knowledge_base_admin_page
def loop_cycles_fragment(request, knowledge_base: KnowledgeBase):
    overview = loop_overview(knowledge_base=knowledge_base)
    running = any(not cycle.is_finished for cycle in overview.cycles)
    return fragment(render(request, "training/_cycles.html", {"kb": knowledge_base, "overview": overview, "cycles_running": running}))


@knowledge_base_admin_page
def loop_policy_edit(request, knowledge_base: KnowledgeBase, component: str):
    if component not in Component.values:
        raise Http404("No such component.")
    policy = RetrainingPolicy.objects.filter(knowledge_base=knowledge_base, component=component).first()
    context = {
        "kb": knowledge_base, "component": component, "policy": policy, "modes": MODES[component],
        "metrics": POLICY_METRICS[component], "error": "", "form": _policy_form_initial(knowledge_base, component, policy),
    }  # fmt: skip
    if request.method == "POST":
        try:
            values = _policy_form_values(request.POST)
            retraining_policy_set(knowledge_base=knowledge_base, component=component, changes=values, actor=request.user)
        except ServiceError as error:
            # Shown again as typed, so the admin fixes the one field named in the message.
            context["form"] = {field: request.POST.get(field, "") for field in POLICY_FIELDS}
            context["form"].update(enabled=request.POST.get("enabled") == "on", auto_promote=request.POST.get("auto_promote") == "on")
            context["error"] = str(error)
            return render(request, "training/policy_form.html", context, status=error.status_code)
        messages.success(request, f"The {component} policy was saved.")
        return redirect("training_loop", slug=knowledge_base.slug)
    if request.method != "GET":
        return HttpResponse(status=405)
    return render(request, "training/policy_form.html", context)


@require_POST
@knowledge_base_admin_page
def loop_policy_run(request, knowledge_base: KnowledgeBase, component: str):
    try:
        policy = retraining_policy_get(knowledge_base=knowledge_base, component=component)
        cycle = loop_cycle_run_now(policy=policy, actor=request.user)
    except NotFound:
        raise Http404("No such policy.") from None
    except ServiceError as error:
        messages.error(request, str(error))
        return redirect("training_loop", slug=knowledge_base.slug)
    return redirect("training_loop_cycle", slug=knowledge_base.slug, cycle_id=cycle.pk)


def _cycle_or_404(knowledge_base, cycle_id):
    try:
        return loop_cycle_get(knowledge_base=knowledge_base, cycle_id=cycle_id)
    except NotFound:
        raise Http404("No such cycle.") from None


@require_GET
@knowledge_base_admin_page
def loop_cycle_detail(request, knowledge_base: KnowledgeBase, cycle_id: int):
    cycle = _cycle_or_404(knowledge_base, cycle_id)
    return render(request, "training/cycle_detail.html", {"kb": knowledge_base, "cycle": cycle})


@require_GET
@knowledge_base_admin_page
def loop_cycle_log_fragment(request, knowledge_base: KnowledgeBase, cycle_id: int):
    """The cycle's log and its training run's, polled while the cycle runs."""
    cycle = _cycle_or_404(knowledge_base, cycle_id)
    return fragment(render(request, "training/_cycle_log.html", {"kb": knowledge_base, "cycle": cycle}))


def _run_or_404(knowledge_base, run_id):
    run = TrainingRun.objects.filter(pk=run_id, knowledge_base=knowledge_base).select_related("snapshot").first()
    if run is None:
        raise Http404("No such training run.")
    return run


@require_GET
@knowledge_base_admin_page
def training_run_detail(request, knowledge_base: KnowledgeBase, run_id: int):
    run = _run_or_404(knowledge_base, run_id)
    return render(request, "training/run_detail.html", {"kb": knowledge_base, "run": run, "progress": training_run_progress(run=run)})


@require_GET
@knowledge_base_admin_page
def training_run_log_fragment(request, knowledge_base: KnowledgeBase, run_id: int):
    """The run's progress and log, polled while it runs."""
    run = _run_or_404(knowledge_base, run_id)
    context = {"kb": knowledge_base, "run": run, "progress": training_run_progress(run=run)}
    return fragment(render(request, "training/_run_log.html", context))


# --- webhooks ---------------------------------------------------------------------------------


def _webhooks_page(request, knowledge_base: KnowledgeBase, *, error: str = "", form=None, status: int = 200):
    created = request.GET.get("created", "")
    return render(request, "training/webhooks.html", {
        "kb": knowledge_base,
        "overview": webhooks_overview(knowledge_base=knowledge_base),
        "created": int(created) if created.isdigit() else None,
        "error": error,
        "form": form or {"url": "", "events": []},
    }, status=status)


def _endpoint_or_404(knowledge_base: KnowledgeBase, endpoint_id: int):
    try:
        return webhook_endpoint_get(knowledge_base=knowledge_base, endpoint_id=endpoint_id)
    except NotFound:
        raise Http404("No such webhook endpoint.") from None


@require_GET
@knowledge_base_admin_page
def webhooks_page(request, knowledge_base: KnowledgeBase):
    return _webhooks_page(request, knowledge_base)


@require_POST
@knowledge_base_admin_page
def webhook_endpoint_create_view(request, knowledge_base: KnowledgeBase):
    form = {"url": request.POST.get("url", "").replace("\x00", "").strip(), "events": request.POST.getlist("events")}
    try:
        endpoint = webhook_endpoint_create(
            knowledge_base=knowledge_base, url=form["url"], events=form["events"], created_by=request.user
        )
    except ServiceError as error:
        return _webhooks_page(request, knowledge_base, error=str(error), form=form, status=error.status_code)
    # The secret is not put in the message (messages may live in a cookie); the page shows it.
    messages.success(request, f"Events will be posted to {endpoint.url}. Its signing secret is shown below.")
    page = reverse("training_webhooks", kwargs={"slug": knowledge_base.slug})
    return redirect(f"{page}?created={endpoint.pk}#endpoint-{endpoint.pk}")


@require_POST
@knowledge_base_admin_page
def webhook_endpoint_delete_view(request, knowledge_base: KnowledgeBase, endpoint_id: int):
    endpoint = _endpoint_or_404(knowledge_base, endpoint_id)
    url = endpoint.url
    webhook_endpoint_delete(endpoint=endpoint)
    messages.success(request, f"{url} gets no more events; its deliveries were removed.")
    return redirect("training_webhooks", slug=knowledge_base.slug)


@require_POST
@knowledge_base_admin_page
def webhook_endpoint_enabled_view(request, knowledge_base: KnowledgeBase, endpoint_id: int):
    endpoint = _endpoint_or_404(knowledge_base, endpoint_id)
    enabled = request.POST.get("enabled") == "true"
    webhook_endpoint_set_enabled(endpoint=endpoint, enabled=enabled)
    messages.success(request, f"{endpoint.url} is {'enabled' if enabled else 'disabled'}.")
    return redirect("training_webhooks", slug=knowledge_base.slug)


# --- erasure ---------------------------------------------------------------------------------


def _erase_page(request, knowledge_base: KnowledgeBase, *, plan=None, error: str = "", form=None, status: int = 200):
    return render(request, "training/erase.html", {
        "kb": knowledge_base,
        "selectors": ErasureReceipt.Selector.choices,
        "form": form or {"selector": "end_user", "value": ""},
        "plan": plan,
        "error": error,
        "receipts": erasure_receipts_list(knowledge_base=knowledge_base),
    }, status=status)  # fmt: skip


@knowledge_base_admin_page
def erase_page(request, knowledge_base: KnowledgeBase):
    """GET: the form and the receipts. POST "preview": what would go, with counts, and a confirm
    button. POST "erase": erase it (the counts are recomputed in the erasing transaction)."""
    if request.method == "GET":
        return _erase_page(request, knowledge_base)
    if request.method != "POST":
        return HttpResponse(status=405)
    form = {"selector": request.POST.get("selector", ""), "value": request.POST.get("value", "")}
    try:
        if request.POST.get("action") == "erase":
            receipt = erasure_execute(
                knowledge_base=knowledge_base, selector=form["selector"], value=form["value"], actor=request.user
            )
            messages.success(request, f"Erased {receipt.rows_deleted} rows (receipt #{receipt.pk}).")
            return redirect(f"{reverse('training_erase', args=[knowledge_base.slug])}#receipt-{receipt.pk}")
        plan = erasure_preview(knowledge_base=knowledge_base, selector=form["selector"], value=form["value"], actor=request.user)
    except ServiceError as error:
        return _erase_page(request, knowledge_base, error=str(error), form=form, status=error.status_code)
    return _erase_page(request, knowledge_base, plan=plan, form=form)
