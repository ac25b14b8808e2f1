"""The curator workbench pages and endpoints: queue order, filters, pagination and query count;
next and holds; the judging page; submit, skip and draft endpoints; corpus search; access; escaping."""

import json
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext

from curation.models import (
    Label,
    LabelDraft,
    LabelRevision,
    Membership,
    PassageJudgment,
    TurnHold,
)
from curation.services.labels import LabelInput, label_submit
from curation.services.queue import knowledge_base_overlap_set
from curation.services.search import chunks_search
from knowledge.models import Turn
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.turns import PassageRecord, TurnRecord, turns_ingest

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


def _curator(django_user_model, name, *knowledge_bases):
    # get_or_create: a transactional test (e2e) earlier in the session flushes migration data.
    group, _ = Group.objects.get_or_create(name="curator")
    user = django_user_model.objects.create_user(name, password=f"pw-{name}-123")
    user.groups.add(group)
    for knowledge_base in knowledge_bases:
        Membership.objects.create(knowledge_base=knowledge_base, user=user)
    return user


@pytest.fixture
def alice(db, django_user_model, knowledge_base):
    return _curator(django_user_model, "alice", knowledge_base)


@pytest.fixture
def bob(db, django_user_model, knowledge_base):
    return _curator(django_user_model, "bob", knowledge_base)


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def _turns(knowledge_base, specs):
    """specs: (external id, feedback, [scores]) or (external id, feedback, [scores], created_at)."""
    records = []
    for eid, feedback, scores, *created in specs:
        records.append(TurnRecord(
            external_id=eid, query=f"query {eid}", answer=f"answer {eid}", feedback=feedback,
            retriever_version="r-1", generator_version="g-1", created_at=created[0] if created else None,
            passages=[PassageRecord(text=f"passage {i} of {eid}", title=f"doc {i}", score=s) for i, s in enumerate(scores)],
        ))
    created = turns_ingest(knowledge_base=knowledge_base, records=records).created
    return {eid: Turn.objects.get(pk=pk) for eid, pk in created.items()}


def _post_json(client, url, body):
    return client.post(url, json.dumps(body), content_type="application/json")


def _row_ids(response) -> list[int]:
    import re

    return [int(n) for n in re.findall(r'<tr data-turn-id="(\d+)"', response.content.decode())]


# --- queue ----------------------------------------------------------------------------------


def test_queue_lists_turns_in_priority_order_with_tier_badges(alice_client, knowledge_base):
    turns = _turns(knowledge_base, [
        ("calm", None, [0.9, 0.3]),
        ("close-call", None, [0.61, 0.60]),
        ("complaint", -1, [0.9, 0.2]),
    ])
    response = alice_client.get("/kbs/test-kb/queue/")
    assert response.status_code == 200
    assert _row_ids(response) == [turns["complaint"].pk, turns["close-call"].pk, turns["calm"].pk]
    page = response.content.decode()
    assert "negative feedback</span>" in page and "low confidence</span>" in page and "sample</span>" in page
    assert 'href="/kbs/test-kb/judge/"' in page  # Start judging
    assert "HX-Request" in response["Vary"]


def test_queue_filters_by_feedback_status_text_and_dates(alice_client, alice, bob, knowledge_base):
    knowledge_base_overlap_set(knowledge_base=knowledge_base, labels_per_turn=2)
    old = datetime(2024, 1, 10, 12, tzinfo=dt_timezone.utc)
    turns = _turns(knowledge_base, [
        ("angry", -1, [0.9, 0.1], old),
        ("happy", 1, [0.9, 0.1]),
        ("quiet", None, [0.9, 0.1]),
        ("argued", None, [0.9, 0.1]),
    ])
    label_submit(turn=turns["happy"], curator=alice, data=LabelInput(answer_rating="correct"))
    argued_passage = turns["argued"].passages.first()
    label_submit(turn=turns["argued"], curator=alice, data=LabelInput(passages={argued_passage.pk: "relevant"}))
    label_submit(turn=turns["argued"], curator=bob, data=LabelInput(passages={argued_passage.pk: "not_relevant"}))

    def listed(**params):
        response = alice_client.get("/kbs/test-kb/queue/", params, HTTP_HX_REQUEST="true")
        assert response.status_code == 200, response.content
        return {t.external_id for t in Turn.objects.filter(pk__in=_row_ids(response))}

    assert listed(feedback="negative") == {"angry"}
    assert listed(feedback="positive") == {"happy"}
    assert listed(feedback="none") == {"quiet", "argued"}
    assert listed(status="unlabelled") == {"angry", "quiet"}
    assert listed(status="labelled_by_me") == {"happy", "argued"}
    assert listed(status="disputed") == {"argued"}
    assert listed(q="QUIET") == {"quiet"}
    assert listed(**{"from": "2024-01-01", "to": "2024-01-31"}) == {"angry"}
    assert listed(**{"from": "2024-02-01"}) == {"happy", "quiet", "argued"}
    # a labelled-by-me row says so
    fragment = alice_client.get("/kbs/test-kb/queue/", {"status": "labelled_by_me"}, HTTP_HX_REQUEST="true")
    assert b"labelled</span>" in fragment.content and b"disputed</span>" in fragment.content


def test_queue_fragment_is_the_table_only_and_bad_filters_are_a_400_with_a_message(alice_client, knowledge_base):
    _turns(knowledge_base, [("t", None, [0.9, 0.1])])
    fragment = alice_client.get("/kbs/test-kb/queue/", HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and "HX-Request" in fragment["Vary"]
    assert b"<html" not in fragment.content and b"<table" in fragment.content
    bad = alice_client.get("/kbs/test-kb/queue/", {"status": "everything", "from": "yesterday"})
    assert bad.status_code == 400
    assert b"Status must be one of" in bad.content and b"is not a date" in bad.content


def test_queue_paginates_fifty_per_page(alice_client, knowledge_base):
    _turns(knowledge_base, [(f"t{i:03}", None, [0.9, 0.1]) for i in range(120)])
    first = alice_client.get("/kbs/test-kb/queue/")
    third = alice_client.get("/kbs/test-kb/queue/", {"page": 3, "q": "query"})
    assert len(_row_ids(first)) == 50 and len(_row_ids(third)) == 20
    assert b"page 1 of 3" in first.content
    assert b"page=2" in first.content
    assert b"q=query&amp;page=2" in third.content  # the filters travel with the page links
    assert not set(_row_ids(first)) & set(_row_ids(third))


def _queue_data(knowledge_base, curators, n):
    turns = _turns(knowledge_base, [(f"n{n}-{i}", -1 if i % 3 == 0 else None, [0.9, 0.88, 0.1]) for i in range(n)])
    alice, bob = curators
    for i, turn in enumerate(turns.values()):
        if i % 2 == 0:
            label_submit(turn=turn, curator=alice, data=LabelInput(answer_rating="correct"))
        if i % 4 == 1:
            TurnHold.objects.create(turn=turn, curator=bob, expires_at=turn.created_at + timedelta(days=1))


@pytest.mark.parametrize("params", [{}, {"status": "labelled_by_me"}, {"q": "n", "feedback": "negative"}])
def test_queue_costs_the_same_number_of_queries_for_few_and_many_turns(
    alice_client, alice, bob, knowledge_base, django_assert_max_num_queries, params
):
    def queries_for_page() -> int:
        with CaptureQueriesContext(connection) as captured:
            response = alice_client.get("/kbs/test-kb/queue/", params)
        assert response.status_code == 200
        return len(captured)

    _queue_data(knowledge_base, (alice, bob), 3)
    small = queries_for_page()
    _queue_data(knowledge_base, (alice, bob), 80)
    with django_assert_max_num_queries(small):
        response = alice_client.get("/kbs/test-kb/queue/", params)
    assert len(_row_ids(response)) > 3
    assert queries_for_page() == small


def _queue_table(response) -> list[tuple[int, str, int]]:
    """(turn id, top score as shown, passage count) of each row of a queue page."""
    import re

    rows = re.findall(
        r'<tr data-turn-id="(\d+)">.*?<td class="score">(\S+)\s*<span class="muted" title="retrieved passages">\((\d+)\)',
        response.content.decode(), re.S,
    )
    return [(int(pk), score, int(count)) for pk, score, count in rows]


@pytest.mark.parametrize("params, keep", [
    ({}, lambda turn, mine: True),
    ({"feedback": "none", "q": "QUERY Q"}, lambda turn, mine: turn.feedback is None and "query q" in turn.query),
    ({"status": "labelled_by_me"}, lambda turn, mine: turn.pk in mine),
    ({"status": "unlabelled", "from": "2024-01-01", "to": "2024-12-31"},
     lambda turn, mine: turn.label_count == 0 and turn.created_at.year == 2024),
])
def test_queue_pages_list_the_rows_of_the_whole_ordered_queue_with_their_scores(alice_client, alice, knowledge_base, params, keep):
    """Picking a page's ids before annotating them changes no row, order or figure: each page
    is the matching 50-turn slice of all the knowledge base's turns sorted by (tier, order, id)."""
    old = datetime(2024, 3, 1, 12, tzinfo=dt_timezone.utc)
    specs = []
    for i in range(160):
        feedback = -1 if i % 7 == 0 else 1 if i % 11 == 0 else None
        # ties on the tier-0 order (same created_at) and on scores, so the id decides
        scores = [0.80, 0.79, 0.2] if i % 3 == 0 else [0.9, 0.5] if i % 3 == 1 else [0.7]
        specs.append((f"{'q' if i % 2 else 'p'}{i:03}", feedback, scores, old if i % 4 else None))
    turns = _turns(knowledge_base, specs)
    mine = set()
    for i, turn in enumerate(turns.values()):
        if i % 5 < 2:
            label_submit(turn=turn, curator=alice, data=LabelInput(answer_rating="correct"))
            mine.add(turn.pk)
    expected = sorted(
        (turn for turn in Turn.objects.filter(knowledge_base=knowledge_base) if keep(turn, mine)),
        key=lambda turn: (turn.queue_tier, turn.queue_order, turn.pk),
    )
    assert len(expected) > 50 and len({t.queue_tier for t in expected}) > 1
    pages = -(-len(expected) // 50)
    for number in range(1, pages + 1):
        response = alice_client.get("/kbs/test-kb/queue/", {**params, "page": number})
        assert response.status_code == 200
        want = []
        for turn in expected[(number - 1) * 50 : number * 50]:
            passages = list(turn.passages.order_by("rank"))
            want.append((turn.pk, f"{passages[0].score:.3f}", len(passages)))
        assert _queue_table(response) == want, f"page {number}"
        assert f"{len(expected)} turns".encode() in response.content
        assert f"page {number} of {pages}".encode() in response.content
    # a page past the end shows the last one, as before
    beyond = alice_client.get("/kbs/test-kb/queue/", {**params, "page": pages + 5})
    assert _row_ids(beyond) == [turn.pk for turn in expected[(pages - 1) * 50 :]]


# --- next, holds, the judging page ------------------------------------------------------------


def test_next_holds_a_turn_and_redirects_to_it_and_two_curators_get_different_turns(
    client, alice, bob, knowledge_base
):
    turns = _turns(knowledge_base, [("calm", None, [0.9, 0.1]), ("complaint", -1, [0.9, 0.2])])
    client.force_login(alice)
    response = client.get("/kbs/test-kb/judge/")
    assert response.status_code == 302
    assert response["Location"] == f"/kbs/test-kb/turns/{turns['complaint'].pk}/judge/"
    assert TurnHold.objects.filter(curator=alice, turn=turns["complaint"]).exists()
    # asking again (a reload) gives the same turn
    assert client.get("/kbs/test-kb/judge/")["Location"] == response["Location"]
    client.force_login(bob)
    assert client.get("/kbs/test-kb/judge/")["Location"] == f"/kbs/test-kb/turns/{turns['calm'].pk}/judge/"
    # nothing left for bob: a friendly page, not an error
    label_submit(turn=turns["calm"], curator=bob, data=LabelInput(answer_rating="correct"))
    empty = client.get("/kbs/test-kb/judge/")
    assert empty.status_code == 200 and b"The queue is empty" in empty.content


def test_preload_holds_the_following_turn_without_handing_out_the_current_one(client, alice, bob, knowledge_base):
    turns = _turns(knowledge_base, [(f"t{i}", None, [0.9, 0.1]) for i in range(3)])
    client.force_login(alice)
    current = int(client.get("/kbs/test-kb/judge/")["Location"].split("/")[-3])
    preload = client.post(f"/kbs/test-kb/turns/{current}/next/").json()
    assert preload["next_turn_id"] not in (None, current)
    assert preload["next_url"] == f"/kbs/test-kb/turns/{preload['next_turn_id']}/judge/"
    assert set(TurnHold.objects.filter(curator=alice).values_list("turn_id", flat=True)) == {current, preload["next_turn_id"]}
    # asking again holds nothing more
    assert client.post(f"/kbs/test-kb/turns/{current}/next/").json()["next_turn_id"] == preload["next_turn_id"]
    client.force_login(bob)
    bobs = int(client.get("/kbs/test-kb/judge/")["Location"].split("/")[-3])
    assert bobs not in (current, preload["next_turn_id"]) and bobs in {t.pk for t in turns.values()}
    assert client.post(f"/kbs/test-kb/turns/{bobs}/next/").json() == {"next_turn_id": None, "next_url": "/kbs/test-kb/judge/"}


def test_judging_page_shows_the_turn_its_passages_and_versions_and_prefills_the_gold_answer(
    alice_client, embedded_knowledge_base
):
    embedded_knowledge_base.guidelines = "Mark a passage **relevant** if it answers the query.\n\n<script>window.__xss=3</script>"
    embedded_knowledge_base.save()
    turns = turns_ingest(knowledge_base=embedded_knowledge_base, records=[TurnRecord(
        external_id="t", query="Which enzyme do statins inhibit?", answer="HMG-CoA reductase.",
        retriever_version="base", generator_version="extractive",
        passages=[PassageRecord(text="Statins inhibit HMG-CoA reductase.", source_id="d-statins", title="Statins", score=0.71),
                  PassageRecord(text="Caffeine blocks adenosine.", source_id="d-coffee", title="Coffee", score=0.2)],
    )]).created
    turn = Turn.objects.get(pk=turns["t"])
    document_id = turn.passages.get(rank=1).document_id
    page = alice_client.get(f"/kbs/test-kb/turns/{turn.pk}/judge/").content.decode()
    assert "Which enzyme do statins inhibit?" in page
    assert "retriever <strong>base</strong>" in page and "generator <strong>extractive</strong>" in page
    assert "#1" in page and "0.710" in page and "Statins ↗" in page
    assert f'href="/kbs/test-kb/documents/{document_id}/"' in page
    assert '<textarea id="wb-gold" name="gold_answer" rows="6">HMG-CoA reductase.</textarea>' in page
    assert "<strong>relevant</strong>" in page  # guidelines rendered from Markdown
    assert "window.__xss=3</script>" not in page  # ... and sanitised
    state = json.loads(page.split('<script id="workbench-state" type="application/json">')[1].split("</script>")[0])
    assert state["base_version"] == 0 and state["source"] == "new"
    assert state["payload"]["gold_answer"] == "HMG-CoA reductase."
    assert state["urls"]["submit"] == f"/kbs/test-kb/turns/{turn.pk}/label/"


def test_a_turn_of_another_knowledge_base_is_not_found_under_this_one(alice_client, knowledge_base):
    other = knowledge_base_create(slug="other-kb")
    turns = _turns(other, [("x", None, [0.9, 0.1])])
    assert alice_client.get(f"/kbs/test-kb/turns/{turns['x'].pk}/judge/").status_code == 404
    assert alice_client.post(f"/kbs/test-kb/turns/{turns['x'].pk}/label/", "{}", content_type="application/json").status_code == 404


# --- submit, skip, drafts ---------------------------------------------------------------------


def test_submit_stores_the_label_and_names_the_next_turn(alice_client, alice, knowledge_base):
    turns = _turns(knowledge_base, [("a", -1, [0.9, 0.1]), ("b", None, [0.9, 0.1])])
    first, second = turns["a"].passages.order_by("rank")
    response = _post_json(alice_client, f"/kbs/test-kb/turns/{turns['a'].pk}/label/", {"base_version": 0, "payload": {
        "passages": {str(first.pk): "relevant", str(second.pk): "not_relevant"}, "attached": [],
        "answer_rating": "partly", "gold_answer": "better", "rationale": "passage 0", "has_personal_data": True,
        "comment": "hm", "skipped": False, "skip_reason": ""}})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["next_turn_id"] == turns["b"].pk and body["next_url"] == f"/kbs/test-kb/turns/{turns['b'].pk}/judge/?saved={turns['a'].pk}"
    label = Label.objects.get(turn=turns["a"], curator=alice)
    assert (label.answer_rating, label.gold_answer, label.rationale, label.has_personal_data, label.comment) == (
        "partly", "better", "passage 0", True, "hm")
    assert dict(label.passage_judgments.values_list("retrieved_passage_id", "relevance")) == {
        first.pk: "relevant", second.pk: "not_relevant"}
    assert TurnHold.objects.filter(curator=alice, turn=turns["b"]).exists()


@pytest.mark.parametrize("body, message", [
    ({"payload": {"answer_rating": "great"}}, "answer_rating"),
    ({"payload": {}}, "The label is empty"),
    ({"payload": {"passages": {"999999": "relevant"}, "answer_rating": "correct"}}, "do not belong"),
    ({"payload": {"attached": [{"chunk_id": 999999}]}}, "are not in knowledge base"),
    ({"payload": {"skipped": True, "skip_reason": "  "}}, "A skip needs a reason"),
    ({"payload": {"answer_rating": "correct"}, "base_version": "x"}, "base_version"),
    ({"payload": "not an object"}, "JSON object"),
    ({"payload": {"answer_rating": "correct", "gold_answer": "half a pair \ud800"}}, "payload.gold_answer: must not contain lone UTF-16"),
    ({"payload": {"answer_rating": "correct", "comment": "nul \x00"}}, "payload.comment: must not contain NUL"),
])
def test_a_bad_label_is_refused_with_a_message_and_nothing_is_written(alice_client, knowledge_base, body, message):
    turns = _turns(knowledge_base, [("a", None, [0.9, 0.1])])
    response = _post_json(alice_client, f"/kbs/test-kb/turns/{turns['a'].pk}/label/", body)
    assert 400 <= response.status_code < 500
    assert message in response.json()["error"]
    assert not Label.objects.exists() and not LabelRevision.objects.exists() and not PassageJudgment.objects.exists()


def test_malformed_json_is_a_4xx(alice_client, knowledge_base):
    turns = _turns(knowledge_base, [("a", None, [0.9, 0.1])])
    response = alice_client.post(f"/kbs/test-kb/turns/{turns['a'].pk}/label/", "{not json", content_type="application/json")
    assert response.status_code == 422 and "not valid JSON" in response.json()["error"]
    assert not Label.objects.exists()


def test_skip_is_a_label_with_a_reason(alice_client, alice, knowledge_base):
    turns = _turns(knowledge_base, [("a", None, [0.9, 0.1])])
    response = _post_json(alice_client, f"/kbs/test-kb/turns/{turns['a'].pk}/label/",
                          {"base_version": 0, "payload": {"skipped": True, "skip_reason": "not my field"}})
    assert response.status_code == 200 and response.json()["skipped"] is True
    label = Label.objects.get(curator=alice)
    assert (label.skipped, label.skip_reason) == (True, "not my field")
    assert alice_client.get("/kbs/test-kb/judge/").status_code == 200  # skipped turns do not come back


def test_a_draft_is_saved_from_json_or_a_beacon_form_and_restored_on_reload(alice_client, alice, knowledge_base):
    turns = _turns(knowledge_base, [("a", None, [0.9, 0.1])])
    turn = turns["a"]
    passage = turn.passages.first()
    url = f"/kbs/test-kb/turns/{turn.pk}/draft/"
    payload = {"passages": {str(passage.pk): "partly"}, "answer_rating": "wrong", "gold_answer": "draft answer"}
    response = _post_json(alice_client, url, {"payload": payload, "base_version": 0})
    assert response.status_code == 200 and response.json()["base_version"] == 0
    assert LabelDraft.objects.get(curator=alice).payload == payload
    # navigator.sendBeacon posts a form (it cannot set the CSRF header)
    beacon = alice_client.post(url, {"payload": json.dumps({**payload, "comment": "from the beacon"}), "base_version": "0"})
    assert beacon.status_code == 200
    page = alice_client.get(f"/kbs/test-kb/turns/{turn.pk}/judge/").content.decode()
    assert "Your draft was restored" in page
    assert '<textarea id="wb-comment" name="comment" rows="2">from the beacon</textarea>' in page
    assert f'name="passage-{passage.pk}" value="partly" tabindex="-1" checked' in page
    assert not Label.objects.exists()


def test_a_stale_draft_or_submit_gets_409_and_never_overwrites_the_newer_label(alice_client, alice, knowledge_base):
    turns = _turns(knowledge_base, [("a", None, [0.9, 0.1])])
    turn = turns["a"]
    label_submit(turn=turn, curator=alice, data=LabelInput(answer_rating="correct"))  # "another tab"
    draft = _post_json(alice_client, f"/kbs/test-kb/turns/{turn.pk}/draft/",
                       {"payload": {"answer_rating": "wrong"}, "base_version": 0})
    assert draft.status_code == 409 and "newer label" in draft.json()["error"]
    submit = _post_json(alice_client, f"/kbs/test-kb/turns/{turn.pk}/label/",
                        {"payload": {"answer_rating": "wrong"}, "base_version": 0})
    assert submit.status_code == 409 and "newer label" in submit.json()["error"]
    label = Label.objects.get(curator=alice)
    assert (label.version, label.answer_rating) == (1, "correct") and not LabelDraft.objects.exists()
    # from the current version both work
    assert _post_json(alice_client, f"/kbs/test-kb/turns/{turn.pk}/draft/",
                      {"payload": {"answer_rating": "wrong"}, "base_version": 1}).status_code == 200
    assert _post_json(alice_client, f"/kbs/test-kb/turns/{turn.pk}/label/",
                      {"payload": {"answer_rating": "wrong"}, "base_version": 1}).status_code == 200
    assert Label.objects.get(curator=alice).version == 2


def test_a_draft_needs_its_base_version_and_a_valid_payload(alice_client, knowledge_base):
    turns = _turns(knowledge_base, [("a", None, [0.9, 0.1])])
    url = f"/kbs/test-kb/turns/{turns['a'].pk}/draft/"
    assert _post_json(alice_client, url, {"payload": {}}).status_code == 422
    response = _post_json(alice_client, url, {"payload": {"answer_rating": "great"}, "base_version": 0})
    assert response.status_code == 422 and "answer_rating" in response.json()["error"]
    assert not LabelDraft.objects.exists()


# --- search -----------------------------------------------------------------------------------


def test_search_merges_vector_and_keyword_results(embedded_knowledge_base):
    paraphrase = chunks_search(knowledge_base=embedded_knowledge_base, query="brittle bones in old age", k=3)
    assert paraphrase[0].document_external_id == "d-vitd"
    assert paraphrase[0].matched_by == ("vector",)  # no word in common: only the vector search finds it
    code = chunks_search(knowledge_base=embedded_knowledge_base, query="HMG-CoA", k=3)
    assert code[0].document_external_id == "d-statins" and code[0].matched_by == ("vector", "keyword")
    # without a live space, keyword search alone
    embedded_knowledge_base.live_space = None
    keyword_only = chunks_search(knowledge_base=embedded_knowledge_base, query="adenosine receptors", k=3)
    assert [(h.document_external_id, h.matched_by) for h in keyword_only] == [("d-coffee", ("keyword",))]


def test_keyword_search_finds_codes_as_typed_full_text_first_then_substrings_and_titles(knowledge_base):
    from knowledge.services.documents import documents_ingest
    from rag.documents import SourceDocument

    documents_ingest(knowledge_base=knowledge_base, documents=[
        SourceDocument(external_id=eid, title=title, text=text, metadata={}) for eid, title, text in [
            ("d-statins", "Statins and cholesterol", "Statins inhibit HMG-CoA reductase, the rate-limiting enzyme."),
            ("d-mevalonate", "Mevalonate pathway", "The pathway runs from acetyl-CoA through HMG-CoA to mevalonate."),
            ("d-utr", "Untranslated regions", "A 5'-UTR variant lowers translation; the 3'-UTR holds miRNA sites."),
            ("d-coffee", "Coffee consumption", "Caffeine blocks adenosine receptors in the brain."),
            ("d-decaf", "Decaffeinated drinks", "Caffeineless substitutes taste of roasted barley."),
        ]
    ])
    knowledge_base.live_space = None  # keyword search alone

    def found(query, k=10):
        return [hit.document_external_id for hit in chunks_search(knowledge_base=knowledge_base, query=query, k=k)]

    # full text finds the code (the parser splits it into its parts too); the whole query must match
    assert set(found("HMG-CoA")) == {"d-statins", "d-mevalonate"}
    assert found("hmg-coa reductase") == ["d-statins"]
    # what full text cannot find comes from the substring match: part of a word, a code with quotes
    assert found("HMG-Co") == ["d-statins", "d-mevalonate"]
    assert found("CoA reduct") == ["d-statins"]
    assert found("5'-UTR") == ["d-utr"]
    # a word only in a document's title finds its chunks
    assert found("consumption") == ["d-coffee"]
    # full-text hits come first; the fallback only fills the list up to k
    assert found("caffeine") == ["d-coffee", "d-decaf"]
    assert found("caffeine", k=1) == ["d-coffee"]
    assert found("acetyl-CoA") == ["d-mevalonate"]
    assert found("nothing like this") == []


def test_keyword_search_reads_the_full_text_index(knowledge_base):
    """The full-text query is the indexed expression, so the GIN index `chunk_text_search`
    serves it (the planner could not use it if the expression differed in any way)."""
    import random

    from knowledge.models import Chunk, Document

    rng = random.Random(0)
    words = "protein cell dose trial risk patient enzyme receptor gene blood brain sleep".split()
    document = Document.objects.create(knowledge_base=knowledge_base, external_id="d", text="-", content_hash="-")
    Chunk.objects.bulk_create(
        Chunk(document=document, knowledge_base=knowledge_base, order=i, token_count=12,
              text=" ".join(rng.choices(words, k=12)) + (" adenosine" if i % 500 == 0 else ""))
        for i in range(3000)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE curation_chunk")
    knowledge_base.live_space = None  # keyword search alone
    with CaptureQueriesContext(connection) as captured:
        hits = chunks_search(knowledge_base=knowledge_base, query="adenosine", k=6)
    assert len(hits) == 6 and len(captured) == 2  # full text found k: no fallback scan
    full_text = captured.captured_queries[0]["sql"]
    with connection.cursor() as cursor:
        # Prices out the plans that read no index. At this size the planner would rather walk
        # the knowledge base's chunks and test each stored tsvector (cheap), so the knowledge
        # base indexes are dropped for this test's transaction: what is left is whether the
        # query can read the GIN index at all.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("DROP INDEX curation_chunk_knowledge_base_id_be0d9b8e, chunk_kb_token_count")
        cursor.execute(f"EXPLAIN {full_text}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Bitmap Index Scan on chunk_text_search" in plan, plan


def test_search_endpoint_renders_attachable_hits_and_marks_retrieved_ones(alice_client, embedded_knowledge_base):
    from knowledge.models import Chunk

    statins_chunk = Chunk.objects.get(document__external_id="d-statins")
    turns = turns_ingest(knowledge_base=embedded_knowledge_base, records=[TurnRecord(
        external_id="t", query="Do statins hurt?", passages=[PassageRecord(text="x", source_id="d-statins", score=0.5)])]).created
    turn_id = turns["t"]
    from knowledge.models import RetrievedPassage

    RetrievedPassage.objects.filter(turn_id=turn_id).update(chunk=statins_chunk)
    response = alice_client.get(f"/kbs/test-kb/turns/{turn_id}/search/", {"q": "hip fractures in the elderly"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "HX-Request" in response["Vary"]
    page = response.content.decode()
    vitd_chunk = Chunk.objects.get(document__external_id="d-vitd")
    assert page.index(f'data-chunk-id="{vitd_chunk.pk}"') < page.index(f'data-chunk-id="{statins_chunk.pk}"')
    assert 'data-action="attach"' in page and ">keyword</span>" in page and ">vector</span>" in page
    assert "already retrieved as #1" in page
    # the attached chunk goes into the label
    submit = _post_json(alice_client, f"/kbs/test-kb/turns/{turn_id}/label/", {"base_version": 0, "payload": {
        "attached": [{"chunk_id": vitd_chunk.pk, "relevance": "relevant"}]}})  # no answer: nothing to rate
    assert submit.status_code == 200
    judgment = PassageJudgment.objects.get(attached=True)
    assert (judgment.chunk_id, judgment.relevance, judgment.text) == (vitd_chunk.pk, "relevant", vitd_chunk.text)
    # an empty search is no error; an overlong one is
    assert alice_client.get(f"/kbs/test-kb/turns/{turn_id}/search/", {"q": " "}).status_code == 200
    assert alice_client.get(f"/kbs/test-kb/turns/{turn_id}/search/", {"q": "x" * 501}).status_code == 422


# --- access and escaping ----------------------------------------------------------------------


def _workbench_requests(turn_id):
    return [
        ("get", "/kbs/test-kb/queue/"),
        ("get", "/kbs/test-kb/judge/"),
        ("get", f"/kbs/test-kb/turns/{turn_id}/judge/"),
        ("post", f"/kbs/test-kb/turns/{turn_id}/draft/"),
        ("post", f"/kbs/test-kb/turns/{turn_id}/label/"),
        ("post", f"/kbs/test-kb/turns/{turn_id}/next/"),
        ("get", f"/kbs/test-kb/turns/{turn_id}/search/?q=x"),
    ]


def test_anonymous_users_are_sent_to_log_in_and_outsiders_get_404(client, django_user_model, knowledge_base):
    turns = _turns(knowledge_base, [("a", None, [0.9, 0.1])])
    body = json.dumps({"payload": {"answer_rating": "correct"}, "base_version": 0})
    for method, url in _workbench_requests(turns["a"].pk):
        response = getattr(client, method)(url, body, content_type="application/json") if method == "post" else client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/"), url
    other = knowledge_base_create(slug="other-kb")
    outsider = _curator(django_user_model, "outsider", other)  # a curator, of another knowledge base
    no_role = django_user_model.objects.create_user("visitor", password="pw-visitor-123")
    Membership.objects.create(knowledge_base=knowledge_base, user=no_role)  # a member without the curator role
    for user in (outsider, no_role):
        client.force_login(user)
        for method, url in _workbench_requests(turns["a"].pk):
            response = getattr(client, method)(url, body, content_type="application/json") if method == "post" else client.get(url)
            assert response.status_code == 404, (user.username, url)
    assert not Label.objects.exists() and not TurnHold.objects.exists() and not LabelDraft.objects.exists()


def test_a_curator_cannot_open_the_django_admin(alice_client):
    response = alice_client.get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_user_written_text_is_escaped_everywhere_including_the_embedded_json(alice_client, alice, embedded_knowledge_base):
    from knowledge.services.documents import documents_ingest
    from rag.documents import SourceDocument

    documents_ingest(knowledge_base=embedded_knowledge_base, documents=[
        SourceDocument(external_id="d-xss", title=XSS, text=f"Zanzibar spice trade {XSS}", metadata={})])
    turns = turns_ingest(knowledge_base=embedded_knowledge_base, records=[TurnRecord(
        external_id="x", query=XSS, answer=XSS, feedback=-1, feedback_comment=XSS,
        passages=[PassageRecord(text=XSS, title=XSS, source_id="d-xss", score=0.4)])]).created
    turn_id = turns["x"]
    _post_json(alice_client, f"/kbs/test-kb/turns/{turn_id}/draft/",
               {"payload": {"comment": XSS, "rationale": XSS, "gold_answer": XSS}, "base_version": 0})
    pages = {
        "judge": alice_client.get(f"/kbs/test-kb/turns/{turn_id}/judge/").content.decode(),
        "queue": alice_client.get("/kbs/test-kb/queue/").content.decode(),
        "search": alice_client.get(f"/kbs/test-kb/turns/{turn_id}/search/", {"q": "Zanzibar"}).content.decode(),
    }
    for name, page in pages.items():
        assert "<script>window.__xss" not in page, name
        assert "<img src=x" not in page, name
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in pages["judge"]
    assert "Zanzibar" in pages["search"]
    embedded = pages["judge"].split('<script id="workbench-state" type="application/json">')[1].split("</script>")[0]
    assert "\\u003Cscript\\u003E" in embedded
    assert json.loads(embedded)["payload"]["comment"] == XSS  # escaped for HTML, intact as data
