"""Training's audited actions each write exactly one audit row: promote and rollback (from the
page, with the admin as actor), a policy change, a training run's start and cancel, a dataset
export (download and command); a refused one writes none."""

from io import StringIO

import pytest
from django.core.management import call_command

from knowledge.audit_context import audit_context
from knowledge.errors import Conflict, InvalidInput
from knowledge.models import AuditEvent
from training.services.loop.policies import retraining_policy_set
from training.services.runs import training_run_cancel, training_run_start
from training.services.versions import model_version_promote

from .conftest import label_questions, make_snapshot, passage, retriever_version

pytestmark = pytest.mark.django_db


def rows(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


@pytest.fixture
def no_tasks_sent(monkeypatch):
    import knowledge.tasks
    import training.tasks

    sent = []
    for module, name in [(training.tasks, "training_run_execute_task"), (knowledge.tasks, "embedding_job_dispatch_task"),
                         (knowledge.tasks, "embedding_space_index_build_task")]:
        monkeypatch.setattr(getattr(module, name), "delay", lambda *args, _name=name: sent.append((_name, args)))
    return sent


def test_promote_and_rollback_from_the_page_write_one_row_each(admin_client, knowledge_base):
    version = retriever_version(knowledge_base, "retriever-v1")
    response = admin_client.post("/kbs/test-kb/models/retriever-v1/promote/", {"reason": "better nDCG"},
                                 HTTP_X_REQUEST_ID="promote-1")
    assert response.status_code == 302
    [promoted] = rows("model_version.promote")
    assert (promoted.actor, promoted.object_type, promoted.object_id, promoted.request_id) == (
        "root", "model_version", str(version.pk), "promote-1")
    assert promoted.before == {"live": None}
    assert promoted.after == {"live": "retriever-v1", "component": "retriever", "automatic": False, "reason": "better nDCG"}
    # promoting it again is refused: no second row
    assert admin_client.post("/kbs/test-kb/models/retriever-v1/promote/", {"reason": "again"}).status_code == 409
    with pytest.raises(Conflict):
        model_version_promote(version=version)
    assert len(rows("model_version.promote")) == 1

    assert admin_client.post("/kbs/test-kb/models/retriever-v1/rollback/", {"reason": "regressed"}).status_code == 302
    [rolled_back] = rows("model_version.rollback")
    assert (rolled_back.actor, rolled_back.before, rolled_back.after["live"]) == ("root", {"live": "retriever-v1"}, None)


def test_an_automatic_promotion_names_the_policy(knowledge_base):
    version = retriever_version(knowledge_base, "retriever-v1")
    model_version_promote(version=version, automatic=True, actor_name="policy nightly")
    [event] = rows("model_version.promote")
    assert (event.actor, event.actor_user_id, event.after["automatic"]) == ("policy nightly", None, True)


def test_a_policy_change_records_what_changed(admin_user, knowledge_base):
    values = {"name": "nightly", "mode": "contrastive", "schedule": "0 3 * * *", "gate_metric": "ndcg@10"}
    retraining_policy_set(knowledge_base=knowledge_base, component="retriever", changes=values, actor=admin_user)
    with pytest.raises(InvalidInput):
        retraining_policy_set(knowledge_base=knowledge_base, component="retriever", changes={"schedule": "0 25 * * *"})
    policy = retraining_policy_set(knowledge_base=knowledge_base, component="retriever",
                                   changes={"schedule": "0 4 * * *"}, actor=admin_user)
    created, changed = rows("policy.change")
    assert (created.actor, created.object_id, created.before) == ("root", str(policy.pk), None)
    assert created.after["schedule"] == "0 3 * * *" and created.after["component"] == "retriever"
    assert (changed.before, changed.after) == ({"schedule": "0 3 * * *"}, {"component": "retriever", "schedule": "0 4 * * *"})


def test_training_start_and_cancel_write_one_row_each(embedded_knowledge_base, admin_user, no_tasks_sent):
    from django.contrib.auth.models import Group

    from curation.models import Membership

    curator = admin_user.__class__.objects.create_user("alice")
    curator.groups.add(Group.objects.get_or_create(name="curator")[0])
    Membership.objects.create(knowledge_base=embedded_knowledge_base, user=curator)
    label_questions(embedded_knowledge_base, curator)
    with pytest.raises(InvalidInput):
        training_run_start(knowledge_base=embedded_knowledge_base, component="retriever", mode="no-such-mode")
    assert rows("training.start") == []
    run = training_run_start(knowledge_base=embedded_knowledge_base, component="retriever", mode="contrastive",
                             created_by=admin_user)
    [started] = rows("training.start")
    assert (started.actor, started.object_id, started.after["mode"], started.after["snapshot"]) == (
        "root", str(run.pk), "contrastive", run.snapshot_id)
    with audit_context(actor="cli:ops"):
        training_run_cancel(run=run)
    with pytest.raises(Conflict):
        training_run_cancel(run=run)
    [cancelled] = rows("training.cancel")
    assert (cancelled.actor, cancelled.object_id, cancelled.after["status"]) == ("cli:ops", str(run.pk), "cancelled")


def test_dataset_exports_write_one_row_each(admin_client, knowledge_base, tmp_path):
    snapshot = make_snapshot(knowledge_base, [
        {"example_id": "e1", "split": "train", "query": "Which enzyme do statins inhibit?", "gold_answer": "HMG-CoA reductase.",
         "relevant": [passage("Statins inhibit HMG-CoA reductase.", "d1")], "retrieved": []},
    ])
    response = admin_client.get(f"/kbs/test-kb/snapshots/{snapshot.pk}/export/pairs.jsonl")
    assert response.status_code == 200
    [download] = rows("dataset.export")
    assert (download.actor, download.object_type, download.object_id) == ("root", "dataset_snapshot", str(snapshot.pk))
    assert download.after == {"format": "pairs", "split": "train", "examples": 1, "records": 1}
    assert admin_client.get(f"/kbs/test-kb/snapshots/{snapshot.pk}/export/pairs.jsonl?split=nope").status_code == 400
    with audit_context(actor="cli:ops"):
        call_command("export_dataset", "test-kb", "--snapshot", str(snapshot.pk), "--format", "beir",
                     "--output", str(tmp_path / "beir"), stdout=StringIO(), stderr=StringIO())
    assert [(e.actor, e.after["format"]) for e in rows("dataset.export")] == [("root", "pairs"), ("cli:ops", "beir")]
