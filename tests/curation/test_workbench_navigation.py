"""The workbench around one judgment: the "Saved" notice after a submit, the previous-turn key's
target, a label's history on the judging and turn pages, turns without an answer, repeated
queries labelled alike, and the queue's source filter."""

import json
import re

import pytest

from curation.models import Label, LabelRevision
from curation.services.identical import label_submit_with_identical
from curation.services.labels import LabelInput, label_submit
from curation.workbench_selectors import curator_previous_turn, label_changes, turn_identical_turns, turn_label_history
from knowledge.errors import Conflict, InvalidInput
from knowledge.models import Turn
from knowledge.services.turns import PassageRecord, TurnRecord, turns_ingest
from tests.curation.test_workbench_views import _curator, _post_json, _row_ids, _turns


@pytest.fixture
def alice(db, django_user_model, knowledge_base):
    return _curator(django_user_model, "alice", knowledge_base)


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def _state(page: str) -> dict:
    return json.loads(page.split('<script id="workbench-state" type="application/json">')[1].split("</script>")[0])


def _judge(client, turn, **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return client.get(f"/kbs/test-kb/turns/{turn.pk}/judge/" + (f"?{query}" if query else "")).content.decode()


def _rated(rating="correct"):
    return {"base_version": 0, "payload": {"answer_rating": rating}}


# --- Saved notice and the previous turn --------------------------------------------------------


def test_submit_sends_the_next_page_a_saved_notice_that_links_back_to_edit(alice_client, alice, knowledge_base):
    turns = _turns(knowledge_base, [("a", -1, [0.9, 0.1]), ("b", None, [0.9, 0.1])])
    body = _post_json(alice_client, f"/kbs/test-kb/turns/{turns['a'].pk}/label/", _rated()).json()
    assert body["next_url"] == f"/kbs/test-kb/turns/{turns['b'].pk}/judge/?saved={turns['a'].pk}"
    assert body["saved_turn_id"] == turns["a"].pk and body["saved_url"] == f"/kbs/test-kb/turns/{turns['a'].pk}/judge/"
    page = alice_client.get(body["next_url"]).content.decode()
    notice = re.search(r'<p id="wb-saved"[^>]*>(.*?)</p>', page, re.S).group(1)
    assert f"Saved turn #{turns['a'].pk}" in notice
    assert f'<a href="/kbs/test-kb/turns/{turns["a"].pk}/judge/">undo/edit</a>' in notice
    # No notice without ?saved=, nor for a turn the curator has not labelled.
    assert re.search(r'<p id="wb-saved"[^>]*hidden', _judge(alice_client, turns["b"]))
    assert re.search(r'<p id="wb-saved"[^>]*hidden', _judge(alice_client, turns["a"], saved=turns["b"].pk))


def test_a_skip_is_named_as_skipped_and_the_last_turn_forwards_the_notice(alice_client, knowledge_base):
    turns = _turns(knowledge_base, [("a", -1, [0.9, 0.1])])
    body = _post_json(alice_client, f"/kbs/test-kb/turns/{turns['a'].pk}/label/",
                      {"base_version": 0, "payload": {"skipped": True, "skip_reason": "unclear"}}).json()
    assert body["next_turn_id"] is None and body["next_url"] == f"/kbs/test-kb/judge/?saved={turns['a'].pk}"
    page = alice_client.get(body["next_url"]).content.decode()
    assert f"Skipped turn #{turns['a'].pk}" in page


def test_the_previous_turn_is_the_one_judged_before_and_opens_its_label_for_editing(alice_client, alice, knowledge_base):
    turns = _turns(knowledge_base, [("a", -1, [0.9]), ("b", -1, [0.8]), ("c", None, [0.7])])
    for eid in ("a", "b"):
        label_submit(turn=turns[eid], curator=alice, data=LabelInput(answer_rating="correct"))
    assert curator_previous_turn(knowledge_base=knowledge_base, curator=alice, current=turns["c"]) == turns["b"]
    assert curator_previous_turn(knowledge_base=knowledge_base, curator=alice, current=turns["b"]) == turns["a"]
    assert curator_previous_turn(knowledge_base=knowledge_base, curator=alice, current=turns["a"]) is None
    page = _judge(alice_client, turns["c"])
    assert _state(page)["urls"]["previous"] == f"/kbs/test-kb/turns/{turns['b'].pk}/judge/"
    assert f'id="wb-previous" href="/kbs/test-kb/turns/{turns["b"].pk}/judge/"' in page
    assert "<kbd>b</kbd></td><td>back to the previous turn" in page  # in the shortcuts help
    back = _state(_judge(alice_client, turns["b"]))
    assert (back["source"], back["base_version"], back["payload"]["answer_rating"]) == ("label", 1, "correct")
    # The same stale-write protection: a submit from a page older than the label is refused.
    stale = _post_json(alice_client, f"/kbs/test-kb/turns/{turns['b'].pk}/label/", _rated("wrong"))
    assert stale.status_code == 409 and Label.objects.get(turn=turns["b"]).answer_rating == "correct"


# --- history -----------------------------------------------------------------------------------


def test_label_history_says_who_changed_what_on_the_judging_and_turn_pages(alice_client, alice, django_user_model, knowledge_base):
    bob = _curator(django_user_model, "bob", knowledge_base)
    turns = _turns(knowledge_base, [("a", -1, [0.9, 0.1])])
    first, second = turns["a"].passages.order_by("rank")
    label_submit(turn=turns["a"], curator=alice, data=LabelInput(passages={first.pk: "partly"}, answer_rating="partly"))
    label_submit(turn=turns["a"], curator=alice, data=LabelInput(
        passages={first.pk: "relevant", second.pk: "not_relevant"}, answer_rating="correct", gold_answer="better"))
    label_submit(turn=turns["a"], curator=bob, data=LabelInput(answer_rating="wrong"))
    history = turn_label_history(turn=turns["a"])
    assert [(e.curator, e.version) for e in history] == [("alice", 1), ("alice", 2), ("bob", 1)]
    assert history[0].changes == ["passage #1: — → partly", "answer: — → partly"]
    assert history[1].changes == ["passage #1: partly → relevant", "passage #2: — → not relevant",
                                  "answer: partly → correct", "gold answer written"]
    judging = _judge(alice_client, turns["a"])
    assert "passage #2: — → not relevant" in judging and "answer: — → wrong" not in judging  # only her own label
    turn_page = alice_client.get(f"/turns/{turns['a'].pk}/").content.decode()
    section = turn_page.split('id="label-history"')[1]
    assert "<strong>bob</strong> v1" in section and "answer: — → wrong" in section
    assert "<strong>alice</strong> v2" in section


def test_label_changes_name_tags_skips_and_flags():
    ranks = {"7": 1}
    assert label_changes({"failure_tags": ["a"]}, {"failure_tags": ["b"]}, ranks=ranks, tag_names={"a": "Alpha", "b": "Beta"}) == [
        "failure tags: +Beta −Alpha"]
    assert label_changes({"answer_rating": "wrong"}, {"skipped": True, "skip_reason": "unclear"}, ranks=ranks, tag_names={}) == [
        "skipped: unclear"]
    assert label_changes({"has_personal_data": False}, {"has_personal_data": True}, ranks=ranks, tag_names={}) == [
        "flagged personal data"]
    assert label_changes({"answer_rating": "wrong"}, {"answer_rating": "wrong"}, ranks=ranks, tag_names={}) == [
        "submitted again, unchanged"]


# --- turns without an answer -------------------------------------------------------------------


def test_a_turn_without_an_answer_asks_for_no_rating_and_refuses_one(alice_client, knowledge_base):
    created = turns_ingest(knowledge_base=knowledge_base, records=[TurnRecord(
        external_id="q1", query="imported question", answer="", passages=[PassageRecord(text="a passage", score=0.5)],
    )]).created
    turn = Turn.objects.get(pk=created["q1"])
    Turn.objects.filter(pk=turn.pk).update(imported=True)
    page = _judge(alice_client, turn)
    assert 'name="answer_rating"' not in page and "No model answer to rate (an imported turn)" in page
    assert _state(page)["has_answer"] is False
    refused = _post_json(alice_client, f"/kbs/test-kb/turns/{turn.pk}/label/", _rated())
    assert refused.status_code == 422 and "has no answer to rate" in refused.json()["error"]
    passage = turn.passages.get()
    ok = _post_json(alice_client, f"/kbs/test-kb/turns/{turn.pk}/label/",
                    {"base_version": 0, "payload": {"passages": {str(passage.pk): "relevant"}}})
    assert ok.status_code == 200 and Label.objects.get(turn=turn).answer_rating == ""


# --- repeated queries --------------------------------------------------------------------------


def _repeats(knowledge_base):
    """Three turns asking the same query (case and spaces aside) with the same passages, one
    with other passages, one with another query."""
    same = [PassageRecord(text="Statins inhibit HMG-CoA reductase.", score=0.7), PassageRecord(text="Coffee.", score=0.2)]
    records = [
        TurnRecord(external_id="r1", query="What do statins inhibit?", answer="HMG-CoA", passages=same),
        TurnRecord(external_id="r2", query="what  do STATINS inhibit? ", answer="HMG-CoA", passages=same),
        TurnRecord(external_id="r3", query="What do statins inhibit?", answer="HMG-CoA", passages=same),
        TurnRecord(external_id="other-passages", query="What do statins inhibit?", answer="x", passages=same[:1]),
        TurnRecord(external_id="other-query", query="What does caffeine block?", answer="x", passages=same),
    ]
    created = turns_ingest(knowledge_base=knowledge_base, records=records).created
    return {eid: Turn.objects.get(pk=pk) for eid, pk in created.items()}


def test_repeats_are_turns_with_the_same_normalised_query_and_passages(alice_client, knowledge_base):
    turns = _repeats(knowledge_base)
    assert turn_identical_turns(turn=turns["r1"]) == [turns["r2"], turns["r3"]]
    page = _judge(alice_client, turns["r1"])
    assert "Asked 2 more times with the same passages" in page
    assert _state(page)["identical"] == {str(turns["r2"].pk): 0, str(turns["r3"].pk): 0}


def test_one_submit_labels_the_repeats_alike_on_request(alice_client, alice, knowledge_base):
    turns = _repeats(knowledge_base)
    first, second = turns["r1"].passages.order_by("rank")
    body = _post_json(alice_client, f"/kbs/test-kb/turns/{turns['r1'].pk}/label/", {
        "base_version": 0, "identical": {str(turns["r2"].pk): 0, str(turns["r3"].pk): 0},
        "payload": {"passages": {str(first.pk): "relevant", str(second.pk): "not_relevant"}, "answer_rating": "correct"}}).json()
    assert body["applied_to"] == [turns["r2"].pk, turns["r3"].pk]
    for eid in ("r2", "r3"):
        label = Label.objects.get(turn=turns[eid], curator=alice)
        assert label.answer_rating == "correct"
        judged = {j.retrieved_passage.rank: j.relevance for j in label.passage_judgments.select_related("retrieved_passage")}
        assert judged == {1: "relevant", 2: "not_relevant"}
        assert LabelRevision.objects.filter(label=label).count() == 1
    assert not Label.objects.filter(turn__in=[turns["other-passages"], turns["other-query"]]).exists()


def test_applying_to_repeats_refuses_strangers_and_stale_pages_and_writes_nothing(alice, knowledge_base):
    turns = _repeats(knowledge_base)
    data = LabelInput(answer_rating="wrong")
    with pytest.raises(InvalidInput, match="do not repeat"):
        label_submit_with_identical(turn=turns["r1"], curator=alice, data=data, expected_version=0,
                                    identical={turns["other-passages"].pk: 0})
    label_submit(turn=turns["r3"], curator=alice, data=LabelInput(answer_rating="correct"))
    with pytest.raises(Conflict):
        # The page saw no label on r3 (version 0); one was submitted since.
        label_submit_with_identical(turn=turns["r1"], curator=alice, data=data, expected_version=0,
                                    identical={turns["r2"].pk: 0, turns["r3"].pk: 0})
    assert set(Label.objects.values_list("turn_id", flat=True)) == {turns["r3"].pk}
    assert Label.objects.get(turn=turns["r3"]).answer_rating == "correct"


def test_a_curator_of_another_knowledge_base_cannot_apply_to_repeats(django_user_model, knowledge_base):
    turns = _repeats(knowledge_base)
    outsider = _curator(django_user_model, "mallory")
    from knowledge.errors import Forbidden

    with pytest.raises(Forbidden):
        label_submit_with_identical(turn=turns["r1"], curator=outsider, data=LabelInput(answer_rating="wrong"),
                                    expected_version=0, identical={turns["r2"].pk: 0})
    assert not Label.objects.exists()


# --- the queue's source filter -----------------------------------------------------------------


def test_the_queue_filters_by_source(alice_client, knowledge_base):
    turns = _turns(knowledge_base, [("ing", -1, [0.9]), ("imp", -1, [0.8]), ("syn", -1, [0.7]), ("srv", -1, [0.6])])
    Turn.objects.filter(pk=turns["imp"].pk).update(imported=True)
    Turn.objects.filter(pk=turns["syn"].pk).update(source=Turn.Source.SYNTHETIC)
    Turn.objects.filter(pk=turns["srv"].pk).update(source=Turn.Source.SERVED)

    def listed(source):
        return set(_row_ids(alice_client.get(f"/kbs/test-kb/queue/?source={source}")))

    assert listed("imported") == {turns["imp"].pk}
    assert listed("ingested") == {turns["ing"].pk}
    assert listed("synthetic") == {turns["syn"].pk}
    assert listed("served") == {turns["srv"].pk}
    assert listed("any") == {t.pk for t in turns.values()}
    bad = alice_client.get("/kbs/test-kb/queue/?source=nowhere")
    assert bad.status_code == 400 and "Source must be one of any, served, ingested, imported, synthetic" in bad.content.decode()
