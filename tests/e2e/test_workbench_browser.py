"""The curator workbench in a real browser (Debian Chromium driven by Playwright) against the live
test server: keyboard-only judging with an attached passage, two curators at once, drafts that
survive a reload and a lost connection, escaping, and access limits."""

import os
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from django.contrib.auth.models import Group

from curation.models import Label, LabelDraft, Membership, PassageJudgment
from curation.services.labels import LabelInput, label_submit
from knowledge.models import Turn
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.turns import PassageRecord, TurnRecord, turns_ingest
from tests.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Chromium not installed: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; Django then refuses ORM calls
    # from the test body unless told that this (test-only) thread is not really async.
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


def _curator(django_user_model, name, knowledge_base):
    group, _ = Group.objects.get_or_create(name="curator")
    user = django_user_model.objects.create_user(name, password=f"pw-{name}-123")
    user.groups.add(group)
    Membership.objects.create(knowledge_base=knowledge_base, user=user)
    return user


def _turn(knowledge_base, external_id, *, feedback=None, scores=(0.9, 0.3), query=None, passage_text=None):
    passages = [
        PassageRecord(text=passage_text or "Statins inhibit HMG-CoA reductase.", source_id="d-statins",
                      title="Statins and cholesterol", score=scores[0]),
        PassageRecord(text="Caffeine blocks adenosine receptors.", source_id="d-coffee",
                      title="Coffee consumption", score=scores[1]),
    ]
    created = turns_ingest(knowledge_base=knowledge_base, records=[TurnRecord(
        external_id=external_id, query=query or f"Question {external_id}?", answer=f"Model answer {external_id}.",
        feedback=feedback, retriever_version="base", generator_version="extractive", passages=passages,
    )]).created
    return Turn.objects.get(pk=created[external_id])


def _new_page(browser, live_server, username):
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", f"pw-{username}-123")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/")
    return page


def _shown_turn(page) -> int:
    """Wait until a judging page is ready for keys (a passage has the focus); its turn id."""
    page.wait_for_function("document.activeElement && document.activeElement.classList.contains('wb-passage')")
    return int(page.get_attribute("#workbench", "data-turn-id"))


def _wait_for_turn_after(page, turn_id: int) -> int | None:
    """After a submit: the next turn's id, or None when the queue-is-empty page came."""
    page.wait_for_function(
        """id => {
            const workbench = document.getElementById('workbench');
            return document.getElementById('queue-empty') || (workbench && workbench.dataset.turnId !== id);
        }""",
        arg=str(turn_id),
    )
    if page.query_selector("#queue-empty"):
        return None
    return _shown_turn(page)


def test_a_curator_judges_three_turns_and_skips_one_with_the_keyboard_only_and_attaches_a_searched_passage(
    browser, live_server, django_user_model, embedded_knowledge_base
):
    kb = embedded_knowledge_base
    _curator(django_user_model, "alice", kb)
    complaint = _turn(kb, "complaint", feedback=-1, query="Does vitamin D prevent hip fractures?")
    close_call = _turn(kb, "close-call", scores=(0.61, 0.60))
    unclear = _turn(kb, "unclear", scores=(0.64, 0.60))
    calm = _turn(kb, "calm")
    page = _new_page(browser, live_server, "alice")
    keys = page.keyboard

    page.goto(f"{live_server.url}/kbs/test-kb/judge/")
    assert _shown_turn(page) == complaint.pk  # negative feedback comes first
    page.evaluate("window.__sameDocument = true")
    keys.press("1")  # passage 1 relevant, focus moves to passage 2
    keys.press("3")  # passage 2 not relevant
    keys.press("w")  # the answer is wrong
    keys.press("/")
    keys.type("brittle bones in old age")
    keys.press("Enter")
    page.wait_for_selector(".wb-hit")
    keys.press("ArrowDown")
    keys.press("a")  # attach the first hit as relevant
    page.wait_for_selector('.wb-passage[data-kind="attached"]')
    keys.press("Escape")
    keys.press("?")
    page.wait_for_selector("#wb-shortcuts:not([hidden])")
    keys.press("Escape")
    keys.press("Enter")

    assert _wait_for_turn_after(page, complaint.pk) == close_call.pk
    # the preloaded page was swapped in: no page load between the two turns
    assert page.evaluate("window.__sameDocument") is True
    assert page.url.endswith(f"/kbs/test-kb/turns/{close_call.pk}/judge/")
    keys.press("2")
    keys.press("2")
    keys.press("p")
    keys.press("g")
    keys.press("Control+a")
    keys.type("A better answer.")
    keys.press("Control+Enter")

    assert _wait_for_turn_after(page, close_call.pk) == unclear.pk
    keys.press("s")  # skip: asks for a reason first
    keys.press("Enter")
    page.wait_for_selector("#wb-alert:has-text('needs a reason')")
    keys.type("query unclear")
    keys.press("Enter")

    assert _wait_for_turn_after(page, unclear.pk) == calm.pk
    keys.press("j")  # to passage 2
    keys.press("1")
    keys.press("k")  # back to passage 1
    keys.press("3")
    keys.press("c")
    keys.press("Enter")
    assert _wait_for_turn_after(page, calm.pk) is None
    assert "The queue is empty" in page.inner_text("#queue-empty")

    labels = {label.turn_id: label for label in Label.objects.prefetch_related("passage_judgments")}
    assert set(labels) == {complaint.pk, close_call.pk, unclear.pk, calm.pk}
    assert (labels[unclear.pk].skipped, labels[unclear.pk].skip_reason) == (True, "query unclear")

    def relevance(label):
        return {(j.retrieved_passage.rank if j.retrieved_passage else "attached"): j.relevance
                for j in label.passage_judgments.select_related("retrieved_passage")}

    assert labels[complaint.pk].answer_rating == "wrong"
    assert relevance(labels[complaint.pk]) == {1: "relevant", 2: "not_relevant", "attached": "relevant"}
    attached = PassageJudgment.objects.get(attached=True)
    assert attached.document.external_id == "d-vitd" and attached.text == attached.chunk.text
    assert labels[complaint.pk].gold_answer == "Model answer complaint."  # pre-filled, kept as it was
    assert (labels[close_call.pk].answer_rating, labels[close_call.pk].gold_answer) == ("partly", "A better answer.")
    assert relevance(labels[close_call.pk]) == {1: "partly", 2: "partly"}
    assert labels[calm.pk].answer_rating == "correct"
    assert relevance(labels[calm.pk]) == {1: "not_relevant", 2: "relevant"}
    assert not LabelDraft.objects.exists()
    page.context.close()


def test_two_curators_at_once_never_get_the_same_turn(browser, live_server, django_user_model, knowledge_base):
    for name in ("alice", "bob"):
        _curator(django_user_model, name, knowledge_base)
    turns = {_turn(knowledge_base, f"t{i}").pk for i in range(4)}
    alice, bob = (_new_page(browser, live_server, name) for name in ("alice", "bob"))
    alice.goto(f"{live_server.url}/kbs/test-kb/judge/")
    bob.goto(f"{live_server.url}/kbs/test-kb/judge/")
    shown = {"alice": [_shown_turn(alice)], "bob": [_shown_turn(bob)]}
    assert shown["alice"][0] != shown["bob"][0]
    while shown["alice"][-1] or shown["bob"][-1]:
        for name, page in (("alice", alice), ("bob", bob)):
            current = shown[name][-1]
            if current is None:
                continue
            page.keyboard.press("c")
            page.keyboard.press("Enter")
            shown[name].append(_wait_for_turn_after(page, current))
    judged = {name: [t for t in ids if t] for name, ids in shown.items()}
    assert not set(judged["alice"]) & set(judged["bob"])
    assert set(judged["alice"]) | set(judged["bob"]) == turns
    assert Label.objects.count() == 4
    for page in (alice, bob):
        page.context.close()


def test_a_draft_survives_a_reload_and_a_lost_connection_and_a_newer_label_is_not_overwritten(
    browser, live_server, django_user_model, knowledge_base
):
    alice = _curator(django_user_model, "alice", knowledge_base)
    turn = _turn(knowledge_base, "t")
    first, second = turn.passages.order_by("rank")
    page = _new_page(browser, live_server, "alice")
    url = f"{live_server.url}/kbs/test-kb/turns/{turn.pk}/judge/"
    page.goto(url)
    _shown_turn(page)
    page.keyboard.press("1")
    page.keyboard.press("w")
    page.keyboard.press("g")
    page.keyboard.press("End")
    page.keyboard.type(" Also: take it with food.")
    page.wait_for_selector("#wb-status:has-text('Draft saved')")
    assert LabelDraft.objects.get(curator=alice).payload["answer_rating"] == "wrong"

    page.reload()
    _shown_turn(page)
    assert page.is_visible("text=Your draft was restored")
    assert page.is_checked(f'input[name="passage-{first.pk}"][value="relevant"]')
    assert page.is_checked('input[name="answer_rating"][value="wrong"]')
    assert page.input_value("#wb-gold") == "Model answer t. Also: take it with food."

    # a reload straight after typing, before the autosave ran: nothing is lost either
    page.keyboard.press("g")
    page.keyboard.press("End")
    page.keyboard.type(" Daily.")
    page.reload()
    _shown_turn(page)
    assert page.input_value("#wb-gold").endswith("food. Daily.")
    wait_until(lambda: LabelDraft.objects.get(curator=alice).payload["gold_answer"].endswith("Daily."), timeout=5,
               message="the draft typed just before the reload to reach the server")

    # offline: the change waits in localStorage and goes out when the connection is back
    page.context.set_offline(True)
    page.keyboard.press("j")
    page.keyboard.press("3")
    page.wait_for_selector("#wb-status:has-text('Offline')")
    assert LabelDraft.objects.get(curator=alice).payload["passages"] == {str(first.pk): "relevant"}
    page.context.set_offline(False)
    page.wait_for_selector("#wb-status:has-text('Draft saved')")
    assert LabelDraft.objects.get(curator=alice).payload["passages"] == {str(first.pk): "relevant", str(second.pk): "not_relevant"}

    # another tab submits a label: this page's drafts are refused and it says so
    label_submit(turn=turn, curator=alice, data=LabelInput(answer_rating="correct"))
    page.keyboard.press("c")
    page.wait_for_selector("#wb-alert:has-text('newer label')")
    assert Label.objects.get(curator=alice).answer_rating == "correct" and not LabelDraft.objects.exists()
    page.context.close()


def test_a_turn_is_tagged_with_t_and_a_digit_and_the_tags_go_in_with_the_label(
    browser, live_server, django_user_model, knowledge_base
):
    alice = _curator(django_user_model, "alice", knowledge_base)
    turn = _turn(knowledge_base, "t")
    first = turn.passages.order_by("rank").first()
    page = _new_page(browser, live_server, "alice")
    page.goto(f"{live_server.url}/kbs/test-kb/turns/{turn.pk}/judge/")
    _shown_turn(page)
    page.keyboard.press("t")  # the picker: digits now toggle tags, not relevance
    page.wait_for_selector("#wb-tags.wb-tags-open")
    page.keyboard.press("1")  # retrieval miss
    page.keyboard.press("4")  # answer incomplete
    page.keyboard.press("4")  # ... untoggled
    page.keyboard.press("2")  # wrong passage ranked first
    page.keyboard.press("Escape")
    assert not page.is_visible("#wb-tags.wb-tags-open")
    assert page.is_checked('input[name="failure_tags"][value="retrieval-miss"]')
    assert not page.is_checked('input[name="failure_tags"][value="answer-incomplete"]')
    page.wait_for_selector("#wb-status:has-text('Draft saved')")
    assert LabelDraft.objects.get(curator=alice).payload["failure_tags"] == ["retrieval-miss", "wrong-passage-first"]
    page.reload()  # the draft keeps them
    _shown_turn(page)
    assert page.is_checked('input[name="failure_tags"][value="wrong-passage-first"]')
    page.keyboard.press("1")  # the picker is closed: 1 judges the passage again
    page.keyboard.press("w")
    page.keyboard.press("Enter")
    wait_until(lambda: Label.objects.filter(curator=alice).exists(), timeout=5, message="the label to be submitted")
    label = Label.objects.get(curator=alice)
    assert [tag.slug for tag in label.failure_tags.all()] == ["retrieval-miss", "wrong-passage-first"]
    assert PassageJudgment.objects.get(label=label, retrieved_passage=first).relevance == "relevant"
    page.context.close()


def test_user_written_text_renders_as_text_and_runs_no_script(browser, live_server, django_user_model, knowledge_base):
    _curator(django_user_model, "alice", knowledge_base)
    turn = _turn(knowledge_base, "x", query=XSS, passage_text=XSS, feedback=-1)
    page = _new_page(browser, live_server, "alice")
    page.goto(f"{live_server.url}/kbs/test-kb/turns/{turn.pk}/judge/")
    _shown_turn(page)
    assert page.inner_text("#wb-query") == XSS
    assert XSS in page.inner_text(".wb-passage .wb-text")
    page.goto(f"{live_server.url}/kbs/test-kb/queue/")
    assert XSS[:40] in page.inner_text("table.wb-queue")
    assert page.evaluate("typeof window.__xss") == "undefined"
    # the filters update the table in place (HTMX) and the address follows
    page.fill("#queue-search", "no such words")
    page.wait_for_selector("text=No turns match these filters.")
    assert parse_qs(urlparse(page.url).query)["q"] == ["no such words"]
    page.context.close()


def test_a_curator_cannot_open_admin_pages_or_another_knowledge_base(browser, live_server, django_user_model, knowledge_base):
    _curator(django_user_model, "alice", knowledge_base)
    other = knowledge_base_create(slug="other-kb")
    other_turn = _turn(other, "secret")
    page = _new_page(browser, live_server, "alice")
    page.goto(f"{live_server.url}/admin/")
    assert "/admin/login/" in page.url
    assert "not authorized to access this page" in page.inner_text("body")
    assert page.goto(f"{live_server.url}/admin/curation/label/").url.startswith(f"{live_server.url}/admin/login/")
    assert page.goto(f"{live_server.url}/kbs/test-kb/agreement/").status in (403, 404)  # an admin-only page
    for path in ("/kbs/other-kb/", "/kbs/other-kb/queue/", "/kbs/other-kb/judge/", f"/kbs/other-kb/turns/{other_turn.pk}/judge/"):
        assert page.goto(f"{live_server.url}{path}").status == 404, path
    assert page.goto(f"{live_server.url}/kbs/test-kb/queue/").status == 200
    page.context.close()


def test_a_follow_up_is_judged_with_its_conversation_and_a_better_query_by_keyboard(
    browser, live_server, django_user_model, knowledge_base
):
    from knowledge.models import Conversation, RetrievedPassage

    alice = _curator(django_user_model, "alice", knowledge_base)
    conversation = Conversation.objects.create(knowledge_base=knowledge_base, external_id="c-1", system_prompt=XSS, turn_count=4)
    exchanges = [("Does vitamin D prevent hip fractures?", "By a fifth."), ("How much?", "800 IU a day."),
                 (XSS, XSS), ("And for children?", "Statins are not for children.")]
    turns = []
    for position, (question, answer) in enumerate(exchanges):
        turn = Turn.objects.create(
            knowledge_base=knowledge_base, source=Turn.Source.SERVED, conversation=conversation, position=position,
            query=question, answer=answer, rewritten_query="statins for children" if position == 3 else "",
            feedback=-1 if position == 1 else None, feedback_comment="Too vague" if position == 1 else "",
        )
        RetrievedPassage.objects.create(turn=turn, rank=1, score=0.5, text=f"passage for {position}")
        turns.append(turn)
    judged = turns[3]
    page = _new_page(browser, live_server, "alice")
    page.goto(f"{live_server.url}/kbs/test-kb/turns/{judged.pk}/judge/")
    assert _shown_turn(page) == judged.pk
    assert page.inner_text("#wb-rewritten-query") == "statins for children"
    assert page.inner_text("#wb-system-prompt") == XSS
    # the last four messages are shown; the first exchange is folded, and Enter unfolds it
    assert page.is_visible("#wb-recent >> text=800 IU a day.") and page.is_visible("#wb-recent >> text=Too vague")
    assert not page.is_visible("#wb-older >> text=By a fifth.")
    page.focus("#wb-older summary")
    page.keyboard.press("Enter")
    page.wait_for_selector("#wb-older >> text=By a fifth.", state="visible")
    assert page.url.endswith(f"/turns/{judged.pk}/judge/") and not Label.objects.exists()
    assert page.evaluate("typeof window.__xss") == "undefined"

    # r writes a better query (ticking the box); the draft survives a reload
    page.keyboard.press("Escape")
    page.keyboard.press("r")
    page.keyboard.type("vitamin D dose for children")
    assert page.is_checked("#wb-rewrite-wrong")
    page.wait_for_selector("#wb-status:has-text('Draft saved')")
    page.reload()
    _shown_turn(page)
    assert page.input_value("#wb-corrected-query") == "vitamin D dose for children" and page.is_checked("#wb-rewrite-wrong")

    # the checkbox is in the Tab order and Space toggles it
    page.keyboard.press("r")
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.id") == "wb-rewrite-wrong"
    page.keyboard.press("Space")
    assert not page.is_checked("#wb-rewrite-wrong")
    page.keyboard.press("Space")
    page.keyboard.press("Escape")
    page.keyboard.press("3")
    page.keyboard.press("w")
    page.keyboard.press("Enter")
    wait_until(lambda: Label.objects.filter(turn=judged, curator=alice).exists(), timeout=10, message="the label")
    label = Label.objects.get(turn=judged, curator=alice)
    assert (label.answer_rating, label.rewrite_wrong, label.corrected_query) == ("wrong", True, "vitamin D dose for children")
    page.context.close()
