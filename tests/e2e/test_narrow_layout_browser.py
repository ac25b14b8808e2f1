"""Every HTML page of the app at 390 px (a phone) in a real browser (Debian Chromium driven by
Playwright) against the live test server: the page never scrolls sideways
(`document.documentElement.scrollWidth <= innerWidth`). The list of pages is checked against
the URL configuration, so a new page without a place here fails the test."""

import os

import pytest
from django.urls import get_resolver

from curation.services.accounts import invitation_create
from curation.services.labels import LabelInput, label_submit
from knowledge.models import Document, Turn
from knowledge.services.turns import PassageRecord, TurnRecord, turns_ingest
from tests.e2e.test_workbench_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, _curator

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

WIDTH = 390

# URL names that are no HTML page of their own: fragments swapped into a page, POST actions,
# downloads, the API (served by django-ninja, outside this list).
NOT_PAGES = {
    "openai-chat-completions", "openai-models", "logout", "kb_progress", "kb_ask", "turn_feedback",
    "turn_personal_data_clear", "kb_judge_next",  # redirects to a judging page
    "turn_label_draft", "turn_label_submit", "turn_preload_next", "turn_search", "review_guidelines_preview",
    "review_member_add", "review_failure_tag_change", "review_member_remove", "invitation_revoke", "labels_download",
    "account_token_revoke", "account_token_rotate", "training_runs", "training_run_log", "training_run_cancel",
    "training_version_promote", "training_version_rollback", "training_snapshot_export_beir", "training_loop_cycles",
    "training_loop_cycle_log", "training_loop_policy_run", "training_snapshot_export", "training_webhook_create",
    "training_webhook_delete", "training_webhook_enabled", "kb_documents_upload", "training_snapshot_create",
    # Needs a version that was live before the live one; its panel's layout is the promote panel's.
    "training_version_rollback_confirm",
}


def _url_names(patterns=None) -> set[str]:
    names = set()
    for pattern in patterns if patterns is not None else get_resolver().url_patterns:
        if hasattr(pattern, "url_patterns"):
            if not str(pattern.pattern).startswith(("admin", "api")):
                names |= _url_names(pattern.url_patterns)
        elif pattern.name:
            names.add(pattern.name)
    return names


@pytest.fixture(scope="module")
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


def _site(knowledge_base, admin_user, django_user_model) -> dict[str, str]:
    """Data behind every page (a long query and unbroken words included, which overflow most
    easily), and the URL of each page by its URL name."""
    from training.models import LoopCycle, ModelVersion, RetrainingPolicy, TrainingRun
    from training.services.versions import model_version_register

    alice = _curator(django_user_model, "alice", knowledge_base)
    bob = _curator(django_user_model, "bob", knowledge_base)
    long_word = "Supercalifragilistic" * 6
    created = turns_ingest(knowledge_base=knowledge_base, records=[TurnRecord(
        external_id=f"t{i}", query=f"Which enzyme do statins inhibit, asked {i}? {long_word}", answer=f"HMG-CoA reductase {long_word}.",
        feedback=-1 if i == 0 else None, retriever_version="base", generator_version="extractive",
        passages=[PassageRecord(text=f"Statins inhibit HMG-CoA reductase. {long_word}", source_id="d-statins", title="Statins", score=0.7),
                  PassageRecord(text="Caffeine blocks adenosine.", source_id="d-coffee", title="Coffee", score=0.2)],
    ) for i in range(3)]).created  # fmt: skip
    turn = Turn.objects.get(pk=created["t0"])
    first, second = turn.passages.order_by("rank")
    knowledge_base.labels_per_turn = 2
    knowledge_base.save(update_fields=["labels_per_turn"])
    label_submit(turn=turn, curator=alice, data=LabelInput(passages={first.pk: "relevant"}, answer_rating="correct"))
    label_submit(turn=turn, curator=bob, data=LabelInput(passages={first.pk: "not_relevant"}, answer_rating="wrong"))
    version = model_version_register(
        knowledge_base=knowledge_base, component="retriever", artifact_folder=None, name="retriever-v1",
        embedding_space=knowledge_base.embedding_spaces.get(retriever_version="base"),
        query_model_reference="base:all-MiniLM-L6-v2", metrics={"ndcg@10": 0.5, "recall@10": 0.7, "mrr@10": 0.4},
        training_curve=[{"step": n, "loss": 2.0 / n} for n in range(1, 60)],
    )  # fmt: skip
    ModelVersion.objects.filter(pk=version.pk).update(status="live")
    model_version_register(
        knowledge_base=knowledge_base, component="retriever", artifact_folder=None, name="retriever-v2",
        embedding_space=knowledge_base.embedding_spaces.get(retriever_version="base"),
        query_model_reference="base:all-MiniLM-L6-v2", metrics={"ndcg@10": 0.55, "recall@10": 0.72, "mrr@10": 0.41},
    )  # fmt: skip
    run = TrainingRun.objects.create(knowledge_base=knowledge_base, component="retriever", mode="contrastive",
                                     status="failed", progress=0.5, error=f"broke: {long_word}", created_by=admin_user)
    policy = RetrainingPolicy.objects.create(knowledge_base=knowledge_base, component="retriever", name="kb-retriever",
                                             mode="contrastive", gate_metric="ndcg@10")
    cycle = LoopCycle.objects.create(knowledge_base=knowledge_base, policy=policy, component="retriever",
                                     trigger=LoopCycle.Trigger.values[0])
    _, key = invitation_create(invited_by=admin_user, email="new@example.com")
    document = Document.objects.filter(knowledge_base=knowledge_base).first()
    slug = knowledge_base.slug
    return {
        "login": "/login/", "password_change": "/password/", "home": "/", "kb_detail": f"/kbs/{slug}/",
        "document_detail": f"/kbs/{slug}/documents/{document.pk}/", "turn_detail": f"/turns/{turn.pk}/",
        "kb_queue": f"/kbs/{slug}/queue/", "turn_judge": f"/kbs/{slug}/turns/{turn.pk}/judge/?saved={created['t1']}",
        "review_dashboard": f"/kbs/{slug}/dashboard/", "review_agreement": f"/kbs/{slug}/agreement/",
        "review_suggestions": f"/kbs/{slug}/suggestions/", "review_disputes": f"/kbs/{slug}/disputes/",
        "review_dispute_detail": f"/kbs/{slug}/disputes/{turn.pk}/", "review_guidelines": f"/kbs/{slug}/guidelines/",
        "review_guidelines_edit": f"/kbs/{slug}/guidelines/edit/", "review_settings": f"/kbs/{slug}/settings/",
        "invitation_new": "/invitations/new/", "invitation_accept": f"/invitations/{key}/accept/",
        "account_tokens": "/account/tokens/", "audit_log": "/audit/", "training_models": f"/kbs/{slug}/models/",
        "training_run_detail": f"/kbs/{slug}/training-runs/{run.pk}/",
        "training_version_detail": f"/kbs/{slug}/models/retriever-v1/", "training_loop": f"/kbs/{slug}/loop/",
        "training_loop_cycle": f"/kbs/{slug}/loop/cycles/{cycle.pk}/",
        "training_loop_policy": f"/kbs/{slug}/loop/policies/retriever/", "training_webhooks": f"/kbs/{slug}/webhooks/",
        "kb_create": "/knowledge-bases/new/", "document_delete": f"/kbs/{slug}/documents/{document.pk}/delete/",
        "training_run_new": f"/kbs/{slug}/training-runs/new/", "training_erase": f"/kbs/{slug}/erase/",
        "training_version_promote_confirm": f"/kbs/{slug}/models/retriever-v2/promote/confirm/",
        # Pages outside the URL names: the API docs and the error pages.
        "api_docs": "/api/v1/docs", "not_found": "/no-such-page/",
    }  # fmt: skip


def test_every_page_fits_a_390px_screen(browser, live_server, django_user_model, admin_user, embedded_knowledge_base):
    pages = _site(embedded_knowledge_base, admin_user, django_user_model)
    unlisted = _url_names() - NOT_PAGES - set(pages)
    assert not unlisted, f"pages without a 390 px check: {sorted(unlisted)}"
    context = browser.new_context(viewport={"width": WIDTH, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{live_server.url}/login/")
    login_width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    page.fill("input[name=username]", "root")
    page.fill("input[name=password]", "pw-root-123")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    too_wide = {}
    if login_width[0] > login_width[1]:
        too_wide["login"] = login_width
    for name, url in pages.items():
        if name == "login":
            continue
        response = page.goto(f"{live_server.url}{url}")
        assert response is not None and response.status < 500, (name, url)
        if name != "not_found":
            assert response.status == 200, (name, url, response.status)
        page.wait_for_load_state("load")
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        if widths[0] > widths[1]:
            too_wide[name] = widths
    context.close()
    assert too_wide == {}, f"pages wider than {WIDTH} px (scrollWidth, innerWidth): {too_wide}"
