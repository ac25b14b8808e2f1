"""Ask on the knowledge base page: a warning while embedding is incomplete, feedback buttons on
the answer (the API's feedback service), and the recent-turns list refreshed by the answer."""

import re

import pytest

from knowledge.models import ChunkEmbedding, Turn
from knowledge.selectors import live_space_chunks_missing


@pytest.fixture
def staff_client(client, admin_user):
    client.force_login(admin_user)
    return client


def _ask(client, query="Which enzyme do statins inhibit?"):
    return client.post("/kbs/test-kb/ask/", {"query": query}, HTTP_HX_REQUEST="true")


def test_no_warning_when_every_chunk_is_embedded_and_a_count_when_some_are_not(staff_client, embedded_knowledge_base):
    assert live_space_chunks_missing(knowledge_base=embedded_knowledge_base) == 0
    assert 'id="embedding-warning"' not in staff_client.get("/kbs/test-kb/").content.decode()
    ChunkEmbedding.objects.filter(space=embedded_knowledge_base.live_space).first().delete()
    assert live_space_chunks_missing(knowledge_base=embedded_knowledge_base) == 1
    page = staff_client.get("/kbs/test-kb/").content.decode()
    assert "Embedding is not complete: 1 chunk has no vector in the live retriever yet" in page
    answer = _ask(staff_client).content.decode()
    assert re.search(r'<div id="embedding-warning-slot" hx-swap-oob="true"><p class="warning" id="embedding-warning"', answer)


def test_the_answer_has_feedback_buttons_and_refreshes_the_recent_turns(staff_client, embedded_knowledge_base):
    response = _ask(staff_client)
    assert response.status_code == 200
    html = response.content.decode()
    turn = Turn.objects.get(query="Which enzyme do statins inhibit?")
    assert f'hx-post="/kbs/test-kb/turns/{turn.pk}/feedback/"' in html and "👍 Helpful" in html and "👎 Not helpful" in html
    recent = html.split('<ul class="plain" id="recent-turns" hx-swap-oob="true">')[1].split("</ul>")[0]
    assert f'<a href="/turns/{turn.pk}/">Which enzyme do statins inhibit?</a>' in recent
    # The page's own list has the same id, so htmx swaps it out of band.
    assert '<ul class="plain" id="recent-turns">' in staff_client.get("/kbs/test-kb/").content.decode()


def test_feedback_from_the_page_sets_the_turn_and_moves_it_in_the_queue(staff_client, embedded_knowledge_base):
    _ask(staff_client)
    turn = Turn.objects.get()
    down = staff_client.post(f"/kbs/test-kb/turns/{turn.pk}/feedback/", {"feedback": "down"}, HTTP_HX_REQUEST="true")
    assert down.status_code == 200 and "HX-Request" in down["Vary"]
    turn.refresh_from_db()
    assert (turn.feedback, turn.queue_tier) == (-1, 0)
    assert "the turn goes to the front of the curation queue" in down.content.decode()
    assert '"feedback": "clear"' in down.content.decode()  # pressing it again takes it back
    staff_client.post(f"/kbs/test-kb/turns/{turn.pk}/feedback/", {"feedback": "clear"})
    turn.refresh_from_db()
    assert turn.feedback is None
    bad = staff_client.post(f"/kbs/test-kb/turns/{turn.pk}/feedback/", {"feedback": "meh"})
    assert bad.status_code == 422 and "feedback must be up, down or clear" in bad.content.decode()


def test_feedback_needs_access_to_the_knowledge_base(client, django_user_model, embedded_knowledge_base, staff_client):
    from django.contrib.auth.models import Group

    _ask(staff_client)
    turn = Turn.objects.get()
    outsider = django_user_model.objects.create_user("out", password="pw-out-123")
    outsider.groups.add(Group.objects.get(name="curator"))
    client.force_login(outsider)
    assert client.post(f"/kbs/test-kb/turns/{turn.pk}/feedback/", {"feedback": "down"}).status_code == 404
    turn.refresh_from_db()
    assert turn.feedback is None
