"""The admins' loop in the browser, page by page: a snapshot from the models page (its counts,
the held-out warnings, no copy of the latest one, in the CLI either), the run form generated
from the parameter schema (the CLI's checks and messages), the run page (ETA, loss, the version
it made), and promotion and rollback behind a confirmation with every metric's change and a
required reason. Curators get 403 everywhere; refused input writes nothing."""

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from curation.services.labels import LabelInput, label_submit
from knowledge.services.turns import turn_ask
from training.models import DatasetSnapshot, ModelVersion, PromotionEvent, RetrainingPolicy, TrainingRun
from training.services.snapshots import SnapshotUnchanged, dataset_snapshot_create

from .conftest import label_questions, retriever_version
from .test_review_views import make_evaluation, make_heldout
from .test_runs import no_tasks_sent  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db


def _unescape(content: bytes) -> bytes:
    return content.replace(b"&#x27;", b"'").replace(b"&quot;", b'"').replace(b"&gt;", b">").replace(b"&lt;", b"<")


@pytest.fixture
def labelled_kb(embedded_knowledge_base, curator):
    label_questions(embedded_knowledge_base, curator)
    return embedded_knowledge_base


@pytest.fixture
def curator_client(client, curator):
    client.force_login(curator)
    return client


def test_curators_get_403_on_every_admin_action(curator_client, knowledge_base):
    retriever_version(knowledge_base, "retriever-v1")
    for url in ["/kbs/test-kb/training-runs/new/", "/kbs/test-kb/models/retriever-v1/promote/confirm/",
                "/kbs/test-kb/models/retriever-v1/rollback/confirm/"]:  # fmt: skip
        assert curator_client.get(url).status_code == 403, url
    assert curator_client.post("/kbs/test-kb/snapshots/new/", {"heldout_share": "0.2"}).status_code == 403
    assert curator_client.post("/kbs/test-kb/training-runs/new/", {"mode": "retriever:contrastive"}).status_code == 403
    assert curator_client.post("/kbs/test-kb/models/retriever-v1/promote/", {"reason": "mine"}).status_code == 403
    assert not DatasetSnapshot.objects.exists() and not TrainingRun.objects.exists() and not PromotionEvent.objects.exists()


# --- snapshots ------------------------------------------------------------------------------


def test_a_snapshot_from_the_models_page_shows_its_counts_and_warns_about_a_small_held_out_part(admin_client, labelled_kb):
    page = admin_client.get("/kbs/test-kb/models/")
    assert b'id="snapshot-panel"' in page.content and b"No snapshot yet" in page.content

    response = admin_client.post("/kbs/test-kb/snapshots/new/", {"heldout_share": "0.5"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    snapshot = DatasetSnapshot.objects.get()
    assert snapshot.example_count == 4 and snapshot.heldout_share == 0.5
    html = _unescape(response.content).decode()
    assert f'<strong data-count="train">{snapshot.train_count}</strong> train / <strong data-count="heldout">{snapshot.heldout_count}</strong> held-out' in html
    if snapshot.heldout_count:
        assert f"The held-out part has {snapshot.heldout_count} queries, fewer than the retraining gate's default minimum of 20" in html
    else:
        assert "The held-out part is empty" in html

    # a policy's own minimum is the one named
    RetrainingPolicy.objects.create(knowledge_base=labelled_kb, component="retriever", name="nightly", mode="contrastive",
                                    gate_metric="ndcg@10", gate_min_queries=3)  # fmt: skip
    page = _unescape(admin_client.get("/kbs/test-kb/models/").content).decode()
    assert f"Latest: snapshot <strong>#{snapshot.pk}</strong>" in page
    if 0 < snapshot.heldout_count < 3:
        assert "fewer than the retriever policy's gate minimum of 3" in page


def test_a_snapshot_with_nothing_held_out_is_taken_with_a_warning(admin_client, labelled_kb):
    response = admin_client.post("/kbs/test-kb/snapshots/new/", {"heldout_share": "0"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert DatasetSnapshot.objects.get().heldout_count == 0
    assert b"The held-out part is empty" in response.content


def test_a_snapshot_identical_to_the_latest_is_refused_here_and_in_the_cli(admin_client, labelled_kb, curator):
    first = admin_client.post("/kbs/test-kb/snapshots/new/", {"heldout_share": "0.2"}, HTTP_HX_REQUEST="true")
    assert first.status_code == 200
    latest = DatasetSnapshot.objects.get()

    again = admin_client.post("/kbs/test-kb/snapshots/new/", {"heldout_share": "0.2"}, HTTP_HX_REQUEST="true")
    assert again.status_code == 409
    assert f"Snapshot #{latest.pk} already holds exactly these examples".encode() in again.content
    with pytest.raises(CommandError, match=f"Snapshot #{latest.pk} already holds exactly these examples"):
        call_command("snapshot_create", "test-kb")
    with pytest.raises(SnapshotUnchanged):
        dataset_snapshot_create(knowledge_base=labelled_kb)
    assert DatasetSnapshot.objects.count() == 1
    # "the current labels" for a run or an export: the latest one, not a copy
    assert dataset_snapshot_create(knowledge_base=labelled_kb, reuse_identical=True) == latest

    # another split of the same labels is another dataset
    other_share = admin_client.post("/kbs/test-kb/snapshots/new/", {"heldout_share": "0.5"}, HTTP_HX_REQUEST="true")
    assert other_share.status_code == 200 and DatasetSnapshot.objects.count() == 2
    # a new label makes a new snapshot
    turn = turn_ask(knowledge_base=labelled_kb, query="What lowers LDL cholesterol?", k=2)
    label_submit(turn=turn, curator=curator, data=LabelInput(
        passages={p.pk: "relevant" for p in turn.passages.all()}, answer_rating="correct"))  # fmt: skip
    assert admin_client.post("/kbs/test-kb/snapshots/new/", {"heldout_share": "0.5"}, HTTP_HX_REQUEST="true").status_code == 200
    assert DatasetSnapshot.objects.count() == 3


@pytest.mark.parametrize(("share", "message"), [
    ("abc", b"heldout_share must be a number between 0 and 1, got 'abc'."),
    ("2", b"heldout_share must be between 0 and 1, got 2.0."),
])  # fmt: skip
def test_a_bad_held_out_share_is_refused_with_a_message(admin_client, labelled_kb, share, message):
    response = admin_client.post("/kbs/test-kb/snapshots/new/", {"heldout_share": share}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422 and message in _unescape(response.content)
    assert not DatasetSnapshot.objects.exists()


def test_a_knowledge_base_without_labels_is_told_so(admin_client, knowledge_base):
    response = admin_client.post("/kbs/test-kb/snapshots/new/", {"heldout_share": "0.2"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422 and b"has no curated turns to snapshot yet" in _unescape(response.content)


# --- the run form ---------------------------------------------------------------------------


def test_the_run_form_is_generated_from_the_parameter_schema(admin_client, knowledge_base):
    page = admin_client.get("/kbs/test-kb/training-runs/new/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-mode="contrastive"' in html
    # every parameter of the mode with its default and what it accepts
    assert 'name="param_epochs"' in html and 'placeholder="3"' in html and "an integer &gt;= 1 and &lt;= 1000" in html
    assert 'name="param_learning_rate"' in html and 'placeholder="0.00005"' in html
    assert 'name="param_distractors"' not in html
    for mode in ["retriever:contrastive", "retriever:lsr", "retriever:corpus_pairs", "generator:lora_raft", "generator:openai"]:
        assert f'value="{mode}"' in html

    raft = admin_client.get("/kbs/test-kb/training-runs/new/", {"mode": "generator:lora_raft"}, HTTP_HX_REQUEST="true")
    assert b'data-mode="lora_raft"' in raft.content and b'name="param_distractors"' in raft.content
    assert b'name="param_oracle_probability"' in raft.content and b'placeholder="0.8"' in raft.content
    assert b'<select name="param_query_only"' in admin_client.get("/kbs/test-kb/training-runs/new/", {"mode": "retriever:lsr"}).content
    assert admin_client.get("/kbs/test-kb/training-runs/new/", {"mode": "retriever:nope"}).status_code == 422


@pytest.mark.parametrize(("field", "value", "cli"), [
    ("param_epochs", "0", "epochs=0"),
    ("param_learning_rate", "fast", "learning_rate=fast"),
    ("param_heldout_share", "1.5", "heldout_share=1.5"),
])  # fmt: skip
def test_bad_parameters_get_the_clis_message_and_write_nothing(admin_client, labelled_kb, no_tasks_sent, field, value, cli):  # noqa: F811
    response = admin_client.post("/kbs/test-kb/training-runs/new/", {"mode": "retriever:contrastive", field: value})
    assert response.status_code == 422
    with pytest.raises(CommandError) as refused:
        call_command("train", "test-kb", "--component", "retriever", "--mode", "contrastive", "--param", cli)
    assert str(refused.value).encode() in _unescape(response.content)
    assert f'value="{value}"'.encode() in response.content  # kept as typed
    assert not TrainingRun.objects.exists() and not DatasetSnapshot.objects.exists()
    assert no_tasks_sent == []


def test_a_run_started_from_the_form_is_queued_and_its_page_follows(admin_client, admin_user, labelled_kb, no_tasks_sent):  # noqa: F811
    response = admin_client.post("/kbs/test-kb/training-runs/new/", {
        "mode": "retriever:contrastive_query_only", "param_epochs": "1", "param_batch_size": "4", "param_learning_rate": "",
    })  # fmt: skip
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/kbs/test-kb/training-runs/{run.pk}/"
    assert (run.component, run.mode, run.created_by) == ("retriever", "contrastive_query_only", admin_user)
    assert run.parameters["epochs"] == 1 and run.parameters["batch_size"] == 4 and run.parameters["learning_rate"] == 1e-4
    assert run.snapshot is not None
    # a second run on the same labels takes the same snapshot, not a copy
    run.status = "succeeded"
    run.save()
    admin_client.post("/kbs/test-kb/training-runs/new/", {"mode": "retriever:contrastive_query_only", "param_epochs": "1"})
    assert TrainingRun.objects.count() == 2 and DatasetSnapshot.objects.count() == 1
    # the runs table links each row to its page
    assert f'href="/kbs/test-kb/training-runs/{run.pk}/"'.encode() in admin_client.get("/kbs/test-kb/models/").content


def test_a_chosen_snapshot_of_another_knowledge_base_is_refused(admin_client, labelled_kb, no_tasks_sent):  # noqa: F811
    response = admin_client.post("/kbs/test-kb/training-runs/new/", {"mode": "retriever:contrastive", "snapshot": "999"})
    assert response.status_code == 422 and b"is not one of this knowledge base" in response.content
    assert not TrainingRun.objects.exists()


def test_the_run_page_shows_eta_current_loss_and_the_version_it_made(admin_client, knowledge_base):
    run = TrainingRun.objects.create(
        knowledge_base=knowledge_base, component="retriever", mode="contrastive", status="running", progress=0.5,
        started_at=timezone.now() - timedelta(seconds=40),
        log="2026-01-01 00:00:00 started\n2026-01-01 00:00:01 step 1, epoch 0.5, loss 0.9\n"
            "2026-01-01 00:00:02 step 2, epoch 1, loss 0.4321, learning_rate 2e-05\n",
    )  # fmt: skip
    page = admin_client.get(f"/kbs/test-kb/training-runs/{run.pk}/").content.decode()
    assert '<span id="run-loss">0.4321</span>' in page
    assert '<span id="run-eta">about 40 s left</span>' in page
    assert 'hx-get="/kbs/test-kb/training-runs/%d/log/"' % run.pk in page

    run.status, run.progress, run.finished_at = "succeeded", 1.0, timezone.now()
    run.save()
    retriever_version(knowledge_base, "retriever-v1", training_run=run)
    fragment = admin_client.get(f"/kbs/test-kb/training-runs/{run.pk}/log/").content.decode()
    assert 'href="/kbs/test-kb/models/retriever-v1/"' in fragment and "run-eta" not in fragment
    assert "hx-get" not in fragment  # finished: no more polling


# --- promotion and rollback -----------------------------------------------------------------


@pytest.fixture
def evaluated_candidate(knowledge_base):
    snapshot = make_heldout(knowledge_base, 4)
    version = retriever_version(knowledge_base, "retriever-v1", snapshot=snapshot)
    make_evaluation(version, snapshot, [0.5, 0.25, 0.0, -0.25])
    return version


def test_the_promote_confirmation_sums_up_every_metric_and_names_the_regressions(admin_client, evaluated_candidate):
    page = admin_client.get("/kbs/test-kb/models/retriever-v1/").content.decode()
    evaluation_section = page[page.index('id="evaluation"'):]
    assert 'id="promote-button"' in evaluation_section  # beside the evaluation
    assert 'hx-get="/kbs/test-kb/models/retriever-v1/promote/confirm/"' in page

    panel = admin_client.get("/kbs/test-kb/models/retriever-v1/promote/confirm/", HTTP_HX_REQUEST="true")
    assert panel.status_code == 200 and b"<html" not in panel.content
    html = panel.content.decode()
    for metric in ["recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"]:
        assert f'data-metric="{metric}"' in html
    assert "<strong>retriever-v1</strong> would serve the retriever instead of <strong>base</strong>" in html
    # recall@5 went from 1.0 to 0.75: the only regression
    assert "Regressions: <strong>recall@5</strong> -0.250." in html
    assert "+0.250" in html  # ndcg@10
    assert "baseline-stale" not in html
    full = admin_client.get("/kbs/test-kb/models/retriever-v1/promote/confirm/")
    assert b"<html" in full.content and b"Regressions:" in full.content


def test_a_promotion_without_a_reason_is_refused_and_changes_nothing(admin_client, evaluated_candidate, knowledge_base):
    for reason in ["", "   "]:
        response = admin_client.post("/kbs/test-kb/models/retriever-v1/promote/", {"reason": reason})
        assert response.status_code == 422
        assert b"a reason is required" in response.content and b"Regressions:" in response.content
    evaluated_candidate.refresh_from_db()
    assert evaluated_candidate.status == "candidate" and not PromotionEvent.objects.exists()
    knowledge_base.refresh_from_db()
    assert knowledge_base.live_retriever_version == ""

    response = admin_client.post("/kbs/test-kb/models/retriever-v1/promote/", {"reason": "ndcg up on held-out"})
    assert response.status_code == 302
    assert PromotionEvent.objects.get().reason == "ndcg up on held-out"


def test_the_rollback_confirmation_names_what_comes_back_and_needs_a_reason(admin_client, evaluated_candidate):
    admin_client.post("/kbs/test-kb/models/retriever-v1/promote/", {"reason": "better"})
    page = admin_client.get("/kbs/test-kb/models/retriever-v1/").content.decode()
    assert 'id="rollback-button"' in page and 'id="promote-button"' not in page

    html = admin_client.get("/kbs/test-kb/models/retriever-v1/rollback/confirm/", HTTP_HX_REQUEST="true").content.decode()
    assert "<strong>base</strong> would serve the retriever again instead of <strong>retriever-v1</strong>" in html
    # what retriever-v1 gained is what the rollback gives up: ndcg@10 and mrr@10 regress, recall@5 comes back
    assert "Regressions: <strong>mrr@10</strong> -0.100, <strong>ndcg@10</strong> -0.250." in html

    refused = admin_client.post("/kbs/test-kb/models/retriever-v1/rollback/", {"reason": ""})
    assert refused.status_code == 422 and b"a reason is required" in refused.content
    assert ModelVersion.objects.get(name="retriever-v1").status == "live"
    assert PromotionEvent.objects.count() == 1

    assert admin_client.post("/kbs/test-kb/models/retriever-v1/rollback/", {"reason": "complaints"}).status_code == 302
    assert ModelVersion.objects.get(name="retriever-v1").status == "retired"
    assert PromotionEvent.objects.filter(action="rollback", reason="complaints").count() == 1


def test_a_confirmation_says_when_the_evaluation_compared_with_another_version_than_the_live_one(admin_client, evaluated_candidate, knowledge_base):
    other = retriever_version(knowledge_base, "retriever-v2")
    admin_client.post("/kbs/test-kb/models/retriever-v2/promote/", {"reason": "first"})
    assert ModelVersion.objects.get(pk=other.pk).status == "live"
    html = admin_client.get("/kbs/test-kb/models/retriever-v1/promote/confirm/", HTTP_HX_REQUEST="true").content.decode()
    assert 'id="baseline-stale"' in html and "retriever-v2 serves now" in html
