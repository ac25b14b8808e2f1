"""Suggestions on the judging page in a real browser (Debian Chromium driven by Playwright): a
curator accepts three suggestions with one key and changes one, keyboard only; the keystrokes
per judgment with and without suggestions are counted and printed."""

import pytest

from curation.models import Label, PassageJudgment
from curation.services.suggestions import turn_suggestions_compute
from knowledge.models import Turn
from knowledge.services.turns import PassageRecord, TurnRecord, turns_ingest
from tests.conftest import FakeJudgeServer
from tests.e2e.test_workbench_browser import _curator, _new_page, _shown_turn, _wait_for_turn_after, browser  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _turn(knowledge_base, external_id, *, feedback=None):
    created = turns_ingest(knowledge_base=knowledge_base, records=[TurnRecord(
        external_id=external_id, query=f"Question {external_id}?", answer=f"Model answer {external_id}.",
        feedback=feedback, retriever_version="base",
        passages=[PassageRecord(text=f"Passage {i} of {external_id}.", score=score) for i, score in enumerate((0.9, 0.6, 0.2))],
    )]).created  # fmt: skip
    return Turn.objects.get(pk=created[external_id])


class Keys:
    """The page's keyboard, counting every key pressed."""

    def __init__(self, keyboard):
        self.keyboard, self.count = keyboard, 0

    def press(self, key):
        self.count += 1
        self.keyboard.press(key)


def test_a_curator_accepts_three_suggestions_and_changes_one_with_fewer_keys(
    browser, live_server, django_user_model, knowledge_base, monkeypatch, judge_server_url  # noqa: F811
):
    import curation.tasks

    queued = []
    monkeypatch.setattr(curation.tasks.suggestions_compute_task, "delay", queued.append)  # the worker's part is run below
    monkeypatch.setenv("OPENAI_BASE_URL", f"{judge_server_url}/judge/v1")
    knowledge_base.generator_backend, knowledge_base.generator_model = "openai", "judge-1"
    knowledge_base.save()
    _curator(django_user_model, "alice", knowledge_base)
    plain = _turn(knowledge_base, "plain", feedback=-1)  # first in the queue; no suggestions computed for it
    suggested = _turn(knowledge_base, "suggested")
    assert queued == [[plain.pk], [suggested.pk]]  # the ingest queued one batch each, after commit
    turn_suggestions_compute(turn_ids=queued[1])  # what the worker runs for the second batch
    page = _new_page(browser, live_server, "alice")

    page.goto(f"{live_server.url}/kbs/test-kb/judge/")
    assert _shown_turn(page) == plain.pk
    assert page.query_selector(".wb-suggestion") is None
    without = Keys(page.keyboard)
    for key in ("1", "3", "3", "c", "Enter"):  # three passages and the answer
        without.press(key)
    assert _wait_for_turn_after(page, plain.pk) == suggested.pk

    # Pre-selected, marked as a suggestion with its agent, score and reason, and not yet a judgment.
    assert page.locator(".wb-suggestion[data-state=pending]").count() == 4
    second = page.locator('.wb-passage[data-kind="retrieved"]').nth(1)
    assert second.locator(".wb-opt.wb-suggested input").get_attribute("value") == "partly"
    assert "llm-judge:judge-1" in second.locator(".wb-suggestion").inner_text()
    assert "passage 2 reason" in second.locator(".wb-suggestion").inner_text()
    assert "retriever:base" in second.locator(".wb-other-suggestions").inner_text()  # the other agent, shown
    assert page.locator("input[type=radio]:checked").count() == 0
    with_suggestions = Keys(page.keyboard)
    with_suggestions.press("j")  # to passage 2
    with_suggestions.press("3")  # not relevant instead of the suggested partly
    with_suggestions.press("a")  # accept the rest: passages 1 and 3 and the answer
    assert page.locator(".wb-suggestion[data-state=accepted]").count() == 3
    assert page.locator(".wb-suggestion[data-state=changed]").count() == 1
    with_suggestions.press("Enter")
    assert _wait_for_turn_after(page, suggested.pk) is None

    judgments = 4  # three passages and the answer, on each turn
    print(f"\nkeystrokes per judgment: without suggestions {without.count}/{judgments} = {without.count / judgments:.2f}, "
          f"with suggestions (3 accepted, 1 changed) {with_suggestions.count}/{judgments} = {with_suggestions.count / judgments:.2f}")
    assert with_suggestions.count < without.count

    label = Label.objects.get(turn=suggested)
    assert label.answer_rating == "correct" and label.answer_suggestion_matched is True
    recorded = {j.retrieved_passage.rank: (j.relevance, j.suggestion.agent, j.suggestion_matched)
                for j in PassageJudgment.objects.filter(label=label).select_related("retrieved_passage", "suggestion")}
    assert recorded == {1: ("relevant", "llm-judge:judge-1", True), 2: ("not_relevant", "llm-judge:judge-1", False),
                        3: ("not_relevant", "llm-judge:judge-1", True)}
    plain_label = Label.objects.get(turn=plain)
    assert plain_label.answer_suggestion_id is None
    assert not PassageJudgment.objects.filter(label=plain_label, suggestion__isnull=False).exists()
    assert len(FakeJudgeServer.requests) == 1
    page.context.close()
