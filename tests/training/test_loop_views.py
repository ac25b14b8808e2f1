"""The loop page, the policy form, "run now" and a cycle's live log: permissions, what they show
(escaped), refused input with its message and nothing written, and the charts."""

import pytest
from django.contrib.auth.models import Group

from curation.models import Membership
from training.models import LoopCycle, RetrainingPolicy
from training.services.loop import cycles as loop_cycles
from training.services.loop import retraining_policy_set

from .conftest import retriever_version

pytestmark = pytest.mark.django_db

XSS = '<script>alert("x")</script>'


@pytest.fixture
def policy(knowledge_base):
    return retraining_policy_set(
        knowledge_base=knowledge_base, component="retriever",
        changes={"name": "nightly", "mode": "contrastive", "schedule": "0 3 * * *", "min_new_labels": 50,
                 "gate_guards": {"recall@10": 0.02}},
    )  # fmt: skip


@pytest.fixture
def no_advance(monkeypatch):
    sent = []
    monkeypatch.setattr(loop_cycles, "_enqueue_advance", sent.append)
    return sent


def test_loop_pages_are_for_admins_only(client, django_user_model, knowledge_base, policy):
    urls = [
        f"/kbs/{knowledge_base.slug}/loop/", f"/kbs/{knowledge_base.slug}/loop/cycles/",
        f"/kbs/{knowledge_base.slug}/loop/policies/retriever/",
    ]  # fmt: skip
    outsider = django_user_model.objects.create_user("out", password="pw-out-123")
    outsider.groups.add(Group.objects.get_or_create(name="curator")[0])
    member = django_user_model.objects.create_user("cur", password="pw-cur-123")
    member.groups.add(Group.objects.get_or_create(name="curator")[0])
    Membership.objects.create(knowledge_base=knowledge_base, user=member)
    for url in urls:
        assert client.get(url).status_code == 302  # to the login page
    client.force_login(outsider)
    assert {client.get(url).status_code for url in urls} == {404}
    client.force_login(member)
    assert {client.get(url).status_code for url in urls} == {403}
    assert client.post(f"/kbs/{knowledge_base.slug}/loop/policies/retriever/run/").status_code == 403
    assert not LoopCycle.objects.exists()


def test_the_loop_page_shows_policies_triggers_cycles_and_the_live_version_on_the_chart(admin_client, knowledge_base, policy):
    live = retriever_version(knowledge_base, "retriever-v1", metrics={"ndcg@10": 0.61})
    retriever_version(knowledge_base, "retriever-v2", metrics={"ndcg@10": 0.58}, status="rejected")
    live.status = "live"
    live.save()
    LoopCycle.objects.create(
        policy=policy, knowledge_base=knowledge_base, component="retriever", trigger="labels", stage="done",
        status="refused", gate_outcome={"passed": False, "metric": "ndcg@10", "delta": -0.03, "low": -0.05, "high": -0.01,
                                        "queries": 40, "reasons": [f"worse {XSS}"]},
    )  # fmt: skip
    page = admin_client.get(f"/kbs/{knowledge_base.slug}/loop/").content.decode()
    assert "nightly" in page and "<code>0 3 * * *</code>" in page and "0 / 50" in page
    assert "recall@10 may drop ≤ 0.02" in page and "Run now" in page
    assert "refused by the gate" in page and "worse &lt;script&gt;" in page and XSS not in page
    assert 'class="dot dot-live dot-live"' in page or "dot-live" in page
    assert "Live: retriever-v1 at 0.610" in page and "dot-rejected" in page
    assert "Add a generator policy" in page


def test_a_bad_policy_from_the_form_is_refused_with_its_message_and_nothing_is_written(admin_client, knowledge_base):
    url = f"/kbs/{knowledge_base.slug}/loop/policies/retriever/"
    form = {"name": "nightly", "mode": "contrastive", "schedule": "0 25 * * *", "timezone": "UTC", "gate_metric": "ndcg@10",
            "gate_margin": "0.01", "gate_min_queries": "20", "parameters": '{"epochs": 2}'}  # fmt: skip
    response = admin_client.post(url, form)
    assert response.status_code == 422 and "hour field" in response.content.decode()
    assert 'value="0 25 * * *"' in response.content.decode()  # kept as typed
    response = admin_client.post(url, {**form, "schedule": "", "parameters": "{epochs: 2}"})
    assert response.status_code == 422 and "Parameters must be a JSON object" in response.content.decode()
    assert not RetrainingPolicy.objects.exists()

    response = admin_client.post(url, {**form, "schedule": "30 2 * * 1", "enabled": "on", "auto_promote": "on", "min_new_labels": "25"})
    assert response.status_code == 302
    policy = RetrainingPolicy.objects.get()
    assert (policy.schedule, policy.parameters, policy.min_new_labels, policy.auto_promote) == ("30 2 * * 1", {"epochs": 2}, 25, True)
    assert 'value="{&quot;epochs&quot;: 2}"' in admin_client.get(url).content.decode()


def test_run_now_starts_a_cycle_and_shows_its_log_then_refuses_a_second(admin_client, knowledge_base, policy, no_advance):
    response = admin_client.post(f"/kbs/{knowledge_base.slug}/loop/policies/retriever/run/")
    cycle = LoopCycle.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/kbs/{knowledge_base.slug}/loop/cycles/{cycle.pk}/"
    assert (cycle.trigger, cycle.triggered_by.username) == ("manual", "root")
    page = admin_client.get(response["Location"]).content.decode()
    assert "started by run now" in page and 'hx-trigger="every 3s"' in page  # polled while it runs
    log = admin_client.get(f"/kbs/{knowledge_base.slug}/loop/cycles/{cycle.pk}/log/")
    assert "started by run now" in log.content.decode() and "HX-Request" in log["Vary"]

    again = admin_client.post(f"/kbs/{knowledge_base.slug}/loop/policies/retriever/run/", follow=True)
    assert "is still running" in again.content.decode() and LoopCycle.objects.count() == 1
    assert admin_client.get(f"/kbs/{knowledge_base.slug}/loop/cycles/999999/").status_code == 404
    assert admin_client.post(f"/kbs/{knowledge_base.slug}/loop/policies/generator/run/").status_code == 404


def test_a_runs_log_is_readable_while_it_runs_and_a_version_shows_its_cycle_and_jobs(admin_client, knowledge_base, policy):
    from training.models import EvaluationJob, TrainingRun

    run = TrainingRun.objects.create(
        knowledge_base=knowledge_base, component="retriever", mode="contrastive", status="running", progress=0.4,
        log=f"step 12/30 loss 0.41 {XSS}\n",
    )  # fmt: skip
    page = admin_client.get(f"/kbs/{knowledge_base.slug}/training-runs/{run.pk}/").content.decode()
    assert "step 12/30 loss 0.41" in page and "40%" in page and 'hx-trigger="every 3s"' in page and XSS not in page
    fragment = admin_client.get(f"/kbs/{knowledge_base.slug}/training-runs/{run.pk}/log/")
    assert "step 12/30" in fragment.content.decode() and "HX-Request" in fragment["Vary"]
    TrainingRun.objects.filter(pk=run.pk).update(status="succeeded", progress=1.0)
    assert "every 3s" not in admin_client.get(f"/kbs/{knowledge_base.slug}/training-runs/{run.pk}/log/").content.decode()

    version = retriever_version(knowledge_base, "retriever-v1")
    EvaluationJob.objects.create(knowledge_base=knowledge_base, candidate=version, status="failed", error="Snapshot 3 has no held-out examples.")
    LoopCycle.objects.create(
        policy=policy, knowledge_base=knowledge_base, component="retriever", trigger="schedule", stage="done",
        status="awaiting_review", candidate=version,
        gate_outcome={"passed": True, "metric": "ndcg@10", "delta": 0.04, "low": 0.01, "high": 0.07, "queries": 60, "reasons": []},
    )  # fmt: skip
    page = admin_client.get(f"/kbs/{knowledge_base.slug}/models/retriever-v1/").content.decode()
    assert "awaiting review" in page and "waits for your review" in page and "0.0400" in page
    assert "Snapshot 3 has no held-out examples." in page
    assert admin_client.get(f"/kbs/{knowledge_base.slug}/training-runs/999999/").status_code == 404


def test_the_django_admin_edits_policies_with_the_same_checks(admin_client, knowledge_base):
    form = {
        "knowledge_base": knowledge_base.pk, "component": "retriever", "name": "from-admin", "enabled": "on",
        "mode": "contrastive", "parameters": '{"epochs": 0}', "schedule": "0 3 * * *", "timezone": "UTC",
        "min_new_labels": "", "gate_metric": "ndcg@10", "gate_margin": "0.01", "gate_guards": "{}", "gate_min_queries": "20",
    }  # fmt: skip
    response = admin_client.post("/admin/training/retrainingpolicy/add/", form)
    assert response.status_code == 200 and "Parameter &#x27;epochs&#x27; must be an integer &gt;= 1" in response.content.decode()
    assert not RetrainingPolicy.objects.exists()
    response = admin_client.post("/admin/training/retrainingpolicy/add/", {**form, "parameters": '{"epochs": 2}'})
    assert response.status_code == 302
    policy = RetrainingPolicy.objects.get()
    assert (policy.name, policy.parameters, policy.created_by.username) == ("from-admin", {"epochs": 2}, "root")
    assert policy.schedule_fired_at is not None  # the schedule counts from now
    assert admin_client.get("/admin/training/loopcycle/").status_code == 200
