"""Model review pages for admins: model versions, training runs, promotion, dataset exports, the loop, webhooks."""

from django.urls import path

from training import views

urlpatterns = [
    path("kbs/<slug:slug>/models/", views.models_page, name="training_models"),
    path("kbs/<slug:slug>/training-runs/", views.training_runs_fragment, name="training_runs"),
    path("kbs/<slug:slug>/training-runs/new/", views.training_run_new, name="training_run_new"),
    path("kbs/<slug:slug>/snapshots/new/", views.snapshot_create_view, name="training_snapshot_create"),
    path("kbs/<slug:slug>/training-runs/<int:run_id>/", views.training_run_detail, name="training_run_detail"),
    path("kbs/<slug:slug>/training-runs/<int:run_id>/log/", views.training_run_log_fragment, name="training_run_log"),
    path("kbs/<slug:slug>/training-runs/<int:run_id>/cancel/", views.training_run_cancel_view, name="training_run_cancel"),
    path("kbs/<slug:slug>/models/<str:name>/", views.version_detail, name="training_version_detail"),
    path("kbs/<slug:slug>/models/<str:name>/promote/", views.version_promote, name="training_version_promote"),
    path("kbs/<slug:slug>/models/<str:name>/rollback/", views.version_rollback, name="training_version_rollback"),
    path("kbs/<slug:slug>/models/<str:name>/promote/confirm/", views.version_promote_confirm, name="training_version_promote_confirm"),
    path("kbs/<slug:slug>/models/<str:name>/rollback/confirm/", views.version_rollback_confirm, name="training_version_rollback_confirm"),
    path("kbs/<slug:slug>/snapshots/<int:snapshot_id>/export/beir.zip", views.snapshot_export_beir, name="training_snapshot_export_beir"),
    path("kbs/<slug:slug>/loop/", views.loop_page, name="training_loop"),
    path("kbs/<slug:slug>/loop/cycles/", views.loop_cycles_fragment, name="training_loop_cycles"),
    path("kbs/<slug:slug>/loop/cycles/<int:cycle_id>/", views.loop_cycle_detail, name="training_loop_cycle"),
    path("kbs/<slug:slug>/loop/cycles/<int:cycle_id>/log/", views.loop_cycle_log_fragment, name="training_loop_cycle_log"),
    path("kbs/<slug:slug>/loop/policies/<str:component>/", views.loop_policy_edit, name="training_loop_policy"),
    path("kbs/<slug:slug>/loop/policies/<str:component>/run/", views.loop_policy_run, name="training_loop_policy_run"),
    path(
        "kbs/<slug:slug>/snapshots/<int:snapshot_id>/export/<str:export_format>.jsonl",
        views.snapshot_export_jsonl,
        name="training_snapshot_export",
    ),
    path("kbs/<slug:slug>/erase/", views.erase_page, name="training_erase"),
    path("kbs/<slug:slug>/webhooks/", views.webhooks_page, name="training_webhooks"),
    path("kbs/<slug:slug>/webhooks/add/", views.webhook_endpoint_create_view, name="training_webhook_create"),
    path("kbs/<slug:slug>/webhooks/<int:endpoint_id>/delete/", views.webhook_endpoint_delete_view, name="training_webhook_delete"),
    path("kbs/<slug:slug>/webhooks/<int:endpoint_id>/enabled/", views.webhook_endpoint_enabled_view, name="training_webhook_enabled"),
]
