"""Web pages: login and staff required, ask fragment, progress fragment, user text escaped."""

import pytest

from knowledge.models import Turn
from knowledge.services.turns import PassageRecord, TurnRecord, turns_ingest

XSS = '<script>alert("x")</script>'


@pytest.fixture
def staff_client(client, admin_user):
    client.force_login(admin_user)
    return client


def test_pages_need_login_and_membership(client, django_user_model, knowledge_base):
    from django.contrib.auth.models import Group

    from curation.models import Membership

    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    curator = django_user_model.objects.create_user("cur", password="pw-cur-123")
    curator.groups.add(Group.objects.get(name="curator"))
    client.force_login(curator)
    # not a member: the knowledge base does not exist as far as this curator can tell
    assert b"Test KB" not in client.get("/").content
    assert client.get("/kbs/test-kb/").status_code == 404
    assert client.post("/kbs/test-kb/ask/", {"query": "x"}).status_code == 404
    assert Turn.objects.count() == 0
    Membership.objects.create(knowledge_base=knowledge_base, user=curator)
    assert b"Test KB" in client.get("/").content
    assert client.get("/kbs/test-kb/").status_code == 200


def test_login_page_logs_in(client, admin_user):
    response = client.post("/login/", {"username": "root", "password": "pw-root-123"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200


def test_home_and_knowledge_base_pages_show_counts(staff_client, embedded_knowledge_base):
    home = staff_client.get("/")
    assert b"Test KB" in home.content
    detail = staff_client.get("/kbs/test-kb/")
    assert detail.status_code == 200
    assert b"4 documents" in detail.content
    assert b"succeeded" in detail.content  # the embedding job's progress


def test_ask_fragment_answers_logs_and_varies_on_hx_request(staff_client, embedded_knowledge_base):
    response = staff_client.post("/kbs/test-kb/ask/", {"query": "Which enzyme do statins inhibit?"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert "HX-Request" in response["Vary"]
    assert b"HMG-CoA reductase" in response.content
    assert Turn.objects.filter(query="Which enzyme do statins inhibit?").count() == 1


def test_an_empty_question_gets_a_message_not_a_turn(staff_client, embedded_knowledge_base):
    response = staff_client.post("/kbs/test-kb/ask/", {"query": "   "}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert b"The query is empty" in response.content
    assert Turn.objects.count() == 0


def test_progress_fragment_polls_only_while_a_job_runs(staff_client, embedded_knowledge_base):
    response = staff_client.get("/kbs/test-kb/progress/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert b"100%" in response.content
    assert b"hx-trigger" not in response.content  # finished: no more polling


def test_user_written_text_is_escaped(staff_client, embedded_knowledge_base):
    result = turns_ingest(
        knowledge_base=embedded_knowledge_base,
        records=[TurnRecord(external_id="x", query=XSS, answer=XSS, passages=[PassageRecord(text=XSS, title=XSS)])],
    )
    page = staff_client.get(f"/turns/{result.created['x']}/").content.decode()
    assert XSS not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert XSS not in staff_client.get("/kbs/test-kb/").content.decode()
