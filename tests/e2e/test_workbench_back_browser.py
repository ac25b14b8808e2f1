"""The judging page in a real browser: after a submit the swapped-in next turn says which turn
was saved, and the b key goes back to it with its label open for editing."""

import pytest

from curation.models import Label
from tests.e2e.test_workbench_browser import _curator, _new_page, _shown_turn, _turn, _wait_for_turn_after, browser  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_saved_notice_and_the_back_key(browser, live_server, django_user_model, knowledge_base):  # noqa: F811
    alice = _curator(django_user_model, "alice", knowledge_base)
    first = _turn(knowledge_base, "first", feedback=-1)
    second = _turn(knowledge_base, "second")
    page = _new_page(browser, live_server, "alice")
    keys = page.keyboard
    page.goto(f"{live_server.url}/kbs/test-kb/judge/")
    assert _shown_turn(page) == first.pk
    assert page.query_selector("#wb-previous") is None  # nothing judged yet
    keys.press("1")
    keys.press("c")
    keys.press("Enter")
    assert _wait_for_turn_after(page, first.pk) == second.pk
    page.wait_for_selector("#wb-saved:not([hidden])")
    assert page.inner_text("#wb-saved") == f"Saved turn #{first.pk} — undo/edit"
    assert page.get_attribute("#wb-saved a", "href") == f"/kbs/test-kb/turns/{first.pk}/judge/"
    keys.press("b")
    page.wait_for_url(f"{live_server.url}/kbs/test-kb/turns/{first.pk}/judge/")
    assert _shown_turn(page) == first.pk
    assert page.is_checked('input[name="answer_rating"][value="correct"]')  # the label, open for editing
    assert "You labelled this turn before (version 1)" in page.inner_text("#workbench")
    keys.press("w")
    keys.press("Enter")
    _wait_for_turn_after(page, first.pk)
    label = Label.objects.get(turn=first, curator=alice)
    assert (label.version, label.answer_rating) == (2, "wrong")
