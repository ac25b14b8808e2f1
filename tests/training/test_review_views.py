"""The model review pages: who may see them, what they show (escaped), promote and roll back
from the page, the runs fragment, and a fixed number of SQL queries per page."""

import re

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from curation.models import Membership
from knowledge.models import EmbeddingSpace
from training.models import (
    DatasetSnapshot,
    Evaluation,
    EvaluationQueryResult,
    ModelVersion,
    PromotionEvent,
    TrainingRun,
)
from training.services.evaluation_sets import evaluation_set_pin
from training.services.versions import model_version_promote

from .conftest import generator_version, make_snapshot, passage, retriever_version

XSS = '<script>alert("x")</script>'
ESCAPED = b"&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"


@pytest.fixture
def curator(db, django_user_model):
    user = django_user_model.objects.create_user("cur", password="pw-cur-123")
    user.groups.add(Group.objects.get(name="curator"))
    return user


def make_heldout(knowledge_base, count, *, curators=()):
    snapshot = make_snapshot(knowledge_base, [
        {"example_id": f"q{i}", "query": f"query {i} {XSS}", "gold_answer": f"gold {i}",
         "relevant": [passage(f"text {i}", f"doc-{i}")]}
        for i in range(count)
    ])
    snapshot.curator_ids = [user.pk for user in curators]
    snapshot.label_ids = list(range(1, count + 1))
    snapshot.save()
    return snapshot


def make_evaluation(version, snapshot, deltas, *, baseline=None):
    evaluation = Evaluation.objects.create(
        knowledge_base=version.knowledge_base, component=version.component, snapshot=snapshot, candidate=version,
        baseline=baseline, baseline_name=baseline.name if baseline else "base",
        candidate_metrics={"queries": len(deltas), "recall@1": 0.5, "recall@5": 0.75, "recall@10": 1.0, "mrr@10": 0.6, "ndcg@10": 0.75},
        baseline_metrics={"queries": len(deltas), "recall@1": 0.5, "recall@5": 1.0, "recall@10": 1.0, "mrr@10": 0.5, "ndcg@10": 0.5},
        delta_intervals={"ndcg@10": {"delta": 0.25, "low": 0.125, "high": 0.375, "queries": len(deltas)}},
    )
    for example, delta in zip(snapshot.examples.order_by("pk"), deltas):
        i = example.example_id[1:]
        EvaluationQueryResult.objects.create(
            evaluation=evaluation, example=example, delta=delta,
            candidate={"ndcg@10": 0.5 + delta, "documents": [{"id": f"doc-{i}", "title": f"Right {i} {XSS}"}], "answer": f"cand {i}"},
            baseline={"ndcg@10": 0.5, "documents": [{"id": f"other-{i}", "title": f"Wrong {i}"}], "answer": f"base {i}"},
        )
    return evaluation


def make_page_data(knowledge_base, size, curators=()):
    """`size` versions of each component, runs, promotions and snapshots."""
    snapshot = make_heldout(knowledge_base, 3, curators=curators)
    for i in range(size):
        parent = ModelVersion.objects.filter(knowledge_base=knowledge_base, component="retriever").first()
        retriever_version(knowledge_base, f"retriever-v{i + 1}", snapshot=snapshot, parent=parent, metrics={"ndcg@10": 0.5 + i / 100})
        generator_version(knowledge_base, f"generator-v{i + 1}", snapshot=snapshot)
        TrainingRun.objects.create(knowledge_base=knowledge_base, component="retriever", mode="contrastive",
                                   status="failed", progress=0.5, error=f"run {i} broke {XSS}", snapshot=snapshot)
        make_snapshot(knowledge_base, [{"example_id": "x", "query": "x"}])
    for i in range(size):
        model_version_promote(version=ModelVersion.objects.get(knowledge_base=knowledge_base, name=f"retriever-v{i + 1}"),
                              reason=f"because {i} {XSS}")
    return snapshot


# --- access ------------------------------------------------------------------------------------


def test_only_admins_see_the_model_pages(client, curator, knowledge_base):
    version = retriever_version(knowledge_base, "retriever-v1")
    snapshot = make_heldout(knowledge_base, 1)
    urls = ["/kbs/test-kb/models/", "/kbs/test-kb/models/retriever-v1/", "/kbs/test-kb/training-runs/",
            f"/kbs/test-kb/snapshots/{snapshot.pk}/export/openai.jsonl"]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")
    client.force_login(curator)
    for url in urls:
        assert client.get(url).status_code == 404, url  # not a member
    assert client.post("/kbs/test-kb/models/retriever-v1/promote/").status_code == 404
    Membership.objects.create(knowledge_base=knowledge_base, user=curator)
    for url in urls:
        assert client.get(url).status_code == 403, url  # a member, but not an admin
    assert client.post("/kbs/test-kb/models/retriever-v1/promote/").status_code == 403
    version.refresh_from_db()
    assert version.status == "candidate" and not PromotionEvent.objects.exists()


def test_an_unknown_version_is_404(admin_client, knowledge_base):
    assert admin_client.get("/kbs/test-kb/models/retriever-v9/").status_code == 404
    assert admin_client.post("/kbs/test-kb/models/retriever-v9/promote/").status_code == 404
    assert admin_client.get("/kbs/nope/models/").status_code == 404


# --- the models page ----------------------------------------------------------------------------


def test_models_page_lists_versions_runs_and_the_promotion_log(admin_client, knowledge_base):
    make_page_data(knowledge_base, 2)
    TrainingRun.objects.create(knowledge_base=knowledge_base, component="generator", mode="radit", status="running", progress=0.42)
    response = admin_client.get("/kbs/test-kb/models/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'live: <a href="/kbs/test-kb/models/retriever-v2/">retriever-v2</a>' in html
    assert html.count('<span class="live-marker">live</span>') == 1
    assert "generator-v2" in html and "the base model" in html  # no generator is live
    assert '<a href="/kbs/test-kb/models/retriever-v1/">retriever-v1</a></td>' in html  # v2's parent
    assert "0.510" in html  # retriever-v2's nDCG@10
    assert "42%" in html and "run 1 broke" in html
    assert XSS not in html and ESCAPED.decode() in html  # run errors and reasons are escaped
    log = html[html.index('id="promotion-log"'):]
    assert log.index("retriever-v2") < log.index("because 0")  # newest first
    assert 'href="/kbs/test-kb/snapshots/' in html and "beir.zip" in html
    assert "pinned evaluation set" not in html
    heldout = DatasetSnapshot.objects.filter(knowledge_base=knowledge_base, heldout_count__gt=0).first()
    evaluation_set_pin(knowledge_base=knowledge_base, snapshot=heldout)
    snapshots = admin_client.get("/kbs/test-kb/models/").content.decode()
    snapshots = snapshots[snapshots.index('id="snapshots"'):]
    row = snapshots[snapshots.index(f"<td>#{heldout.pk}"):]
    assert row[: row.index("</td>")].endswith("pinned evaluation set</strong>")
    assert snapshots.count("pinned evaluation set</strong>") == 1


def test_the_runs_fragment_polls_while_a_run_is_active(admin_client, knowledge_base):
    run = TrainingRun.objects.create(knowledge_base=knowledge_base, component="retriever", mode="lsr", status="running", progress=0.25)
    response = admin_client.get("/kbs/test-kb/training-runs/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "HX-Request" in response["Vary"]
    assert b'hx-trigger="every 3s"' in response.content and b"25%" in response.content
    TrainingRun.objects.filter(pk=run.pk).update(status="succeeded", progress=1.0)
    response = admin_client.get("/kbs/test-kb/training-runs/", HTTP_HX_REQUEST="true")
    assert b"hx-trigger" not in response.content and b"100%" in response.content


# --- one version --------------------------------------------------------------------------------


def test_version_page_shows_lineage_and_the_evaluation_side_by_side(admin_client, knowledge_base, curator):
    snapshot = make_heldout(knowledge_base, 3, curators=[curator])
    version = retriever_version(knowledge_base, "retriever-v1", snapshot=snapshot, code_revision="abc123",
                                parameters={"epochs": 2, "loss": XSS}, mode="contrastive",
                                training_curve=[{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}, {"step": 3, "loss": 0.5}])
    ModelVersion.objects.filter(pk=version.pk).update(artifact_checksum="f" * 64, artifact_path="test-kb/retriever-v1")
    make_evaluation(version, snapshot, [0.25, -0.5, 0.0])
    response = admin_client.get("/kbs/test-kb/models/retriever-v1/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "3 examples (0 train, 3 held-out)" in html and "3 labels by cur" in html
    assert "abc123" in html and "f" * 64 in html and "<code>test-kb/retriever-v1</code>" in html and "<code>epochs</code> = 2" in html
    assert '<svg class="chart curve"' in html
    assert [t.strip() for t in re.findall(r"<circle[^>]*><title>([^<]+)</title>", html)] == [
        "step 1: loss 2.0000", "step 2: loss 1.0000", "step 3: loss 0.5000"]  # a value per step on hover
    assert re.findall(r'<text class="tick"[^>]*text-anchor="end">([^<]+)</text>', html)[:2] == ["0.5", "1.0"]  # the y-axis
    assert "Loss 2.0000 → 0.5000" in html
    metrics = html[html.index('id="metrics"'):html.index("</table>", html.index('id="metrics"'))]
    assert '<td class="num better">+0.250</td>' in metrics  # nDCG@10 0.75 vs 0.5
    assert '<td class="num worse">-0.250</td>' in metrics  # recall@5 0.75 vs 1.0
    assert '<td class="num">0.000</td>' in metrics  # recall@1 unchanged
    assert "95% interval" in metrics and '<td class="num">[0.125, 0.375]</td>' in metrics  # nDCG@10's interval
    assert "<strong>1</strong> improved" in html and "<strong>1</strong> regressed" in html and "<strong>1</strong> unchanged" in html
    regressed = html[html.index('id="regressed"'):html.index('id="improved"')]
    assert "query 1" in regressed and "Right 1" in regressed and "Wrong 1" in regressed and "query 0" not in regressed
    improved = html[html.index('id="improved"'):html.index('id="unchanged"')]
    assert "query 0" in improved and '<li class="hit">Right 0' in improved
    assert XSS not in html and ESCAPED.decode() in html
    assert "Promote retriever-v1" in html and "Roll back" not in html


def test_generator_version_page_shows_both_answers(admin_client, knowledge_base):
    snapshot = make_heldout(knowledge_base, 2)
    version = generator_version(knowledge_base, "generator-v1", snapshot=snapshot)
    evaluation = make_evaluation(version, snapshot, [1.0, 0.0])
    evaluation.candidate_metrics = {"queries": 2, "exact_match": 1.0, "f1": 1.0, "groundedness": 0.5, "answer_log_likelihood": None}
    evaluation.baseline_metrics = {"queries": 2, "exact_match": 0.0, "f1": 0.5, "groundedness": 0.5, "answer_log_likelihood": None}
    evaluation.save()
    html = admin_client.get("/kbs/test-kb/models/generator-v1/").content.decode()
    improved = html[html.index('id="improved"'):html.index('id="unchanged"')]
    assert "cand 0" in improved and "base 0" in improved and "Gold: gold 0" in improved
    assert '<td class="num better">+0.500</td>' in html and "answer_log_likelihood" in html
    assert "not evaluated" not in html.lower()


def test_a_version_without_evaluation_says_how_to_evaluate(admin_client, knowledge_base):
    retriever_version(knowledge_base, "retriever-v1")
    html = admin_client.get("/kbs/test-kb/models/retriever-v1/").content.decode()
    assert "manage.py evaluate test-kb --version retriever-v1" in html
    assert "No training curve recorded" in html


# --- promote and roll back ----------------------------------------------------------------------


def test_promote_and_roll_back_from_the_page(admin_client, admin_user, knowledge_base):
    version = retriever_version(knowledge_base, "retriever-v1")
    response = admin_client.post("/kbs/test-kb/models/retriever-v1/promote/", {"reason": "better nDCG"}, follow=True)
    assert response.redirect_chain == [("/kbs/test-kb/models/retriever-v1/", 302)]
    assert b"retriever-v1 is live; it replaced the base model." in response.content
    version.refresh_from_db()
    assert version.status == "live"
    event = PromotionEvent.objects.get()
    assert (event.action, event.actor, event.reason, event.to_version) == ("promote", admin_user, "better nDCG", version)
    assert b"Roll back retriever" in response.content and b"Promote retriever-v1" not in response.content

    response = admin_client.post("/kbs/test-kb/models/retriever-v1/rollback/", {"reason": "regressed"}, follow=True)
    assert b"the base model serves retriever again" in response.content
    version.refresh_from_db()
    assert version.status == "retired"
    assert PromotionEvent.objects.filter(action="rollback", reason="regressed", actor=admin_user).count() == 1


def test_a_retriever_still_embedding_is_not_promoted_and_the_page_says_why(admin_client, knowledge_base):
    building = EmbeddingSpace.objects.create(knowledge_base=knowledge_base, retriever_version="retriever-v1",
                                             model_reference="x", dimensions=384)
    retriever_version(knowledge_base, "retriever-v1", space=building)
    response = admin_client.post("/kbs/test-kb/models/retriever-v1/promote/", {"reason": f"go {XSS}"})
    assert response.status_code == 409
    assert b"cannot go live until its chunks are embedded" in response.content
    assert ESCAPED in response.content and XSS.encode() not in response.content  # the reason is kept, escaped
    assert not PromotionEvent.objects.exists()
    assert ModelVersion.objects.get(name="retriever-v1").status == "candidate"
    knowledge_base.refresh_from_db()
    assert knowledge_base.live_space.retriever_version == "base"


def test_rolling_back_a_version_that_is_not_live_is_refused(admin_client, knowledge_base):
    retriever_version(knowledge_base, "retriever-v1")
    response = admin_client.post("/kbs/test-kb/models/retriever-v1/rollback/", {"reason": "bad"})
    assert response.status_code == 409 and b"not live" in response.content
    assert not PromotionEvent.objects.exists()
    assert admin_client.get("/kbs/test-kb/models/retriever-v1/rollback/").status_code == 405


def test_promotion_needs_the_csrf_token(admin_user, knowledge_base):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    retriever_version(knowledge_base, "retriever-v1")
    assert client.post("/kbs/test-kb/models/retriever-v1/promote/").status_code == 403
    assert not PromotionEvent.objects.exists()
    page = client.get("/kbs/test-kb/models/retriever-v1/")
    token = page.cookies["csrftoken"].value
    assert b'name="csrfmiddlewaretoken"' in page.content
    assert client.post("/kbs/test-kb/models/retriever-v1/promote/", {"csrfmiddlewaretoken": token, "reason": "ok"}).status_code == 302
    assert PromotionEvent.objects.count() == 1


# --- SQL queries --------------------------------------------------------------------------------


def _query_count(client, url) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured.captured_queries)


def test_the_models_page_runs_a_fixed_number_of_queries(admin_client, knowledge_base, django_assert_max_num_queries):
    from knowledge.services.knowledge_bases import knowledge_base_create

    make_page_data(knowledge_base, 2)
    small = _query_count(admin_client, "/kbs/test-kb/models/")
    big_kb = knowledge_base_create(slug="big-kb")
    make_page_data(big_kb, 8)
    with django_assert_max_num_queries(small):
        assert admin_client.get("/kbs/big-kb/models/").status_code == 200
    assert _query_count(admin_client, "/kbs/big-kb/training-runs/") == _query_count(admin_client, "/kbs/test-kb/training-runs/")


def test_the_version_page_runs_a_fixed_number_of_queries(admin_client, knowledge_base, django_user_model, django_assert_max_num_queries):
    users = [django_user_model.objects.create_user(f"c{i}") for i in range(6)]
    small_snapshot = make_heldout(knowledge_base, 3, curators=users[:1])
    small = retriever_version(knowledge_base, "retriever-v1", snapshot=small_snapshot)
    make_evaluation(small, small_snapshot, [0.5, -0.5, 0.0])
    small_count = _query_count(admin_client, "/kbs/test-kb/models/retriever-v1/")
    big_snapshot = make_heldout(knowledge_base, 30, curators=users)
    big = retriever_version(knowledge_base, "retriever-v2", snapshot=big_snapshot, parent=small)
    model_version_promote(version=small)
    make_evaluation(big, big_snapshot, [(i % 3 - 1) / 4 for i in range(30)], baseline=small)
    with django_assert_max_num_queries(small_count):
        response = admin_client.get("/kbs/test-kb/models/retriever-v2/")
    assert b"<strong>10</strong> improved" in response.content


def test_an_admin_cancels_a_queued_run_from_the_runs_table(client, admin_user, knowledge_base, django_user_model):
    from django.contrib.auth.models import Group

    from curation.models import Membership
    from training.models import TrainingRun

    run = TrainingRun.objects.create(knowledge_base=knowledge_base, component="retriever", mode="contrastive")
    curator = django_user_model.objects.create_user("cur-x", password="pw-cur-x-123")
    curator.groups.add(Group.objects.get_or_create(name="curator")[0])
    Membership.objects.create(knowledge_base=knowledge_base, user=curator)
    client.force_login(curator)
    assert client.post(f"/kbs/test-kb/training-runs/{run.pk}/cancel/").status_code == 403
    run.refresh_from_db()
    assert run.status == "queued"

    client.force_login(admin_user)
    response = client.post(f"/kbs/test-kb/training-runs/{run.pk}/cancel/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "HX-Request" in response["Vary"]
    run.refresh_from_db()
    assert run.status == "cancelled"
    again = client.post(f"/kbs/test-kb/training-runs/{run.pk}/cancel/", HTTP_HX_REQUEST="true")
    assert again.status_code == 409 and b"already cancelled" in again.content
    assert client.post("/kbs/test-kb/training-runs/999999/cancel/").status_code == 404


def test_models_list_shows_each_versions_delta_from_its_own_evaluation(admin_client, knowledge_base):
    snapshot = make_heldout(knowledge_base, 2)
    v1 = retriever_version(knowledge_base, "retriever-v1", snapshot=snapshot, metrics={"ndcg@10": 0.75, "mrr@10": 0.6})
    make_evaluation(v1, snapshot, [0.25, 0.25])  # ndcg@10 0.75 against base's 0.5; mrr@10 0.6 against 0.5
    retriever_version(knowledge_base, "retriever-v2", metrics={"ndcg@10": 0.8})  # never evaluated: no delta
    html = admin_client.get("/kbs/test-kb/models/").content.decode()
    v1_row = html[html.index('href="/kbs/test-kb/models/retriever-v1/"'):]
    v1_row = v1_row[: v1_row.index("</tr>")]
    assert '<td class="num" data-metric="ndcg@10">0.750' in v1_row and '<span class="delta up"' in v1_row and "+0.250" in v1_row
    assert "+0.100" in v1_row and "<td>base</td>" in v1_row  # mrr@10, and what the deltas are against
    v2_row = html[html.index('href="/kbs/test-kb/models/retriever-v2/"'):]
    v2_row = v2_row[: v2_row.index("</tr>")]
    assert "0.800" in v2_row and 'class="delta' not in v2_row and "<td>—</td>" in v2_row


def test_models_page_charts_each_metric_over_the_versions_with_the_live_one_marked(admin_client, knowledge_base):
    from training.models import ModelVersion

    retriever_version(knowledge_base, "retriever-v1", metrics={"ndcg@10": 0.50, "mrr@10": 0.40})
    retriever_version(knowledge_base, "retriever-v2", metrics={"ndcg@10": 0.62, "mrr@10": 0.45})
    retriever_version(knowledge_base, "retriever-v3", metrics={"ndcg@10": 0.58})
    ModelVersion.objects.filter(name="retriever-v2").update(status="live")
    ModelVersion.objects.filter(name="retriever-v3").update(status="rejected")
    html = admin_client.get("/kbs/test-kb/models/").content.decode()
    trends = html[html.index('id="metric-trends"'):]
    ndcg = trends[trends.index('data-metric="ndcg@10"'):trends.index("</figure>")]
    assert "live: retriever-v2 at 0.620" in ndcg
    titles = re.findall(r'<circle class="([^"]+)"[^>]*><title>([^<]+)</title>', ndcg)
    assert titles == [("dot", "retriever-v1 (candidate): ndcg@10 0.500"), ("dot dot-marked", "retriever-v2 (live): ndcg@10 0.620"),
                      ("dot dot-rejected", "retriever-v3 (rejected): ndcg@10 0.580")]
    assert re.findall(r'<text class="tick"[^>]*text-anchor="end">([^<]+)</text>', ndcg) == ["0.50", "0.55", "0.60", "0.65"]
    mrr = trends[trends.index('data-metric="mrr@10"'):]
    assert len(re.findall(r"<circle ", mrr[:mrr.index("</figure>")])) == 2  # v3 has no mrr@10
    assert 'data-metric="recall@10"' not in trends  # no version has it: no empty chart
