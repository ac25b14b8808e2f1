"""The admins' loop in a real browser (Debian Chromium driven by Playwright) against the live
test server and a real worker on the default, embedding and training queues: create a knowledge
base, upload a file and wait until it is embedded, take a snapshot, start a tiny run from the
form, follow it on its page to the version it made, and promote that version through the
confirmation with a reason."""

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Group

from curation.models import Membership
from knowledge.models import Document, KnowledgeBase
from tests.conftest import SAMPLE_DOCUMENTS, CeleryWorker
from tests.training.conftest import label_questions
from training.models import DatasetSnapshot, ModelVersion, PromotionEvent, TrainingRun

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000  # the first request that loads the encoder takes long on a loaded machine
TRAINING_TIMEOUT_MS = 300_000


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Chromium not installed: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def worker(environment):
    worker = CeleryWorker(queues="default,embedding,training", env=environment, name="admin-loop-worker")
    worker.start()
    yield worker
    worker.stop()


def test_an_admin_runs_the_loop_from_the_browser(browser, live_server, worker, django_user_model, tmp_path):
    import json

    django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")
    context = browser.new_context(viewport={"width": 1366, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", "root")
    page.fill("input[name=password]", "pw-root-123")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/")

    # create the knowledge base
    page.click("#kb-create-link")
    page.fill("input[name=name]", "Browser KB")
    page.fill("input[name=slug]", "browser-kb")
    page.fill("input[name=chunk_max_tokens]", "120")
    page.click("#kb-create button[type=submit]")
    page.wait_for_url(f"{live_server.url}/kbs/browser-kb/")
    assert "Knowledge base browser-kb was created" in page.inner_text("main")
    kb = KnowledgeBase.objects.get(slug="browser-kb")
    assert kb.chunk_max_tokens == 120

    # upload a small file and wait until it is embedded
    upload = tmp_path / "corpus.jsonl"
    upload.write_text("".join(json.dumps(document) + "\n" for document in SAMPLE_DOCUMENTS))
    page.set_input_files("input[name=files]", str(upload))
    page.click("#upload-panel button[type=submit]")
    page.wait_for_selector("#upload-result")
    assert "4 created, 0 updated, 0 unchanged" in page.inner_text("#upload-result")
    page.wait_for_selector('#progress .job[data-status="succeeded"]', timeout=TRAINING_TIMEOUT_MS)
    assert "100%" in page.inner_text("#progress")
    assert Document.objects.filter(knowledge_base=kb).count() == 4

    # curators label (by the services: their pages are another test's)
    curator = django_user_model.objects.create_user("alice", password="pw-alice-123")
    curator.groups.add(Group.objects.get_or_create(name="curator")[0])
    Membership.objects.create(knowledge_base=kb, user=curator)
    label_questions(kb, curator)

    # take a snapshot
    page.goto(f"{live_server.url}/kbs/browser-kb/models/")
    page.fill("#snapshot-panel input[name=heldout_share]", "0.5")
    page.click("#snapshot-panel button[type=submit]")
    page.wait_for_selector("#snapshot-figures")
    snapshot = DatasetSnapshot.objects.get(knowledge_base=kb)
    figures = page.inner_text("#snapshot-figures")
    assert f"{snapshot.train_count} train / {snapshot.heldout_count} held-out" in figures
    assert "fewer than" in page.inner_text("#snapshot-panel") or "is empty" in page.inner_text("#snapshot-panel")

    # start a tiny run from the form
    page.click("#new-run-link")
    page.select_option("select[name=mode]", "retriever:contrastive_query_only")
    page.wait_for_selector('#run-parameters[data-mode="contrastive_query_only"]')
    page.select_option("select[name=snapshot]", str(snapshot.pk))
    page.fill("input[name=param_epochs]", "1")
    page.fill("input[name=param_batch_size]", "2")
    page.fill("input[name=param_device]", "cpu")
    page.click("#run-form button[type=submit]:has-text('Start training')")
    run = TrainingRun.objects.get(knowledge_base=kb)
    page.wait_for_url(f"{live_server.url}/kbs/browser-kb/training-runs/{run.pk}/")
    assert run.parameters["epochs"] == 1 and run.snapshot_id == snapshot.pk

    # the run page follows the run to the version it made
    page.wait_for_selector('#run-log[data-status="succeeded"]', timeout=TRAINING_TIMEOUT_MS)
    assert "registered candidate retriever-v1" in page.inner_text("#run-log pre.log")
    page.click("#run-version a")
    page.wait_for_url(f"{live_server.url}/kbs/browser-kb/models/retriever-v1/")

    # promote through the confirmation, once the candidate is evaluated
    version = ModelVersion.objects.get(knowledge_base=kb, name="retriever-v1")
    from tests.conftest import wait_until

    wait_until(lambda: version.evaluations.exists(), timeout=240, message=f"the evaluation\n{worker.log()}")
    page.reload()
    page.click("#promote-button")
    page.wait_for_selector("#confirm-panel")
    panel = page.inner_text("#confirm-panel")
    assert "retriever-v1 would serve the retriever instead of base" in panel
    assert "ndcg@10" in panel and ("Regressions:" in panel or "No metric gets worse." in panel)
    page.click("#confirm-promote")  # no reason: the browser keeps the form
    assert not PromotionEvent.objects.exists()
    page.fill("#confirm-panel textarea[name=reason]", "first trained retriever, checked in the browser")
    page.click("#confirm-promote")
    page.wait_for_url(f"{live_server.url}/kbs/browser-kb/models/retriever-v1/")
    page.wait_for_selector("#rollback-button")
    event = PromotionEvent.objects.get()
    assert (event.to_version.name, event.actor.username, event.reason) == (
        "retriever-v1", "root", "first trained retriever, checked in the browser")
    version.refresh_from_db()
    assert version.status == "live"
    context.close()
