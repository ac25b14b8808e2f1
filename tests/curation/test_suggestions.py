"""Suggestions in curation: computed by the task function after turns are stored (idempotent),
the LLM judge on a knowledge base with an OpenAI-compatible endpoint (a failure is a row),
calibration stored on a row, agent agreement figures, which suggestion the judging page
pre-selects, the matched suggestion recorded with the label, the review page, and permissions."""

import pytest
from django.contrib.auth.models import Group

from curation.models import (
    Label,
    Membership,
    PassageJudgment,
    RetrieverCalibration,
    Suggestion,
    SuggestionAgentAgreement,
    SuggestionAttempt,
)
from curation.services.labels import LabelInput, label_draft_save, label_for_editing, label_submit
from curation.services.suggestions import (
    retriever_calibration_refresh,
    suggestion_agents_measure,
    turn_suggestions_compute,
)
from curation.suggestion_selectors import suggestion_review, turn_suggestions
from curation.tasks import suggestions_compute_task
from knowledge.errors import InvalidInput
from knowledge.models import Turn
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.turns import PassageRecord, TurnRecord, turns_ingest
from tests.conftest import FakeJudgeServer

pytestmark = pytest.mark.django_db


def _curator(django_user_model, name, *knowledge_bases):
    group, _ = Group.objects.get_or_create(name="curator")
    user = django_user_model.objects.create_user(name, password=f"pw-{name}-123")
    user.groups.add(group)
    for knowledge_base in knowledge_bases:
        Membership.objects.create(knowledge_base=knowledge_base, user=user)
    return user


@pytest.fixture
def alice(django_user_model, knowledge_base):
    return _curator(django_user_model, "alice", knowledge_base)


def ingest(knowledge_base, name, scores, *, version="base", answer="an answer"):
    created = turns_ingest(knowledge_base=knowledge_base, records=[TurnRecord(
        external_id=name, query=f"query {name}", answer=answer, retriever_version=version,
        passages=[PassageRecord(text=f"passage {i} of {name}", score=s) for i, s in enumerate(scores)],
    )]).created  # fmt: skip
    return Turn.objects.get(pk=created[name])


def pids(turn):
    return list(turn.passages.order_by("rank").values_list("pk", flat=True))


@pytest.fixture
def judged_kb(knowledge_base, settings, monkeypatch, judge_server_url):
    """A knowledge base whose generator is an OpenAI-compatible endpoint (the fake judge)."""
    monkeypatch.setenv("OPENAI_BASE_URL", f"{judge_server_url}/judge/v1")
    knowledge_base.generator_backend = "openai"
    knowledge_base.generator_model = "judge-1"
    knowledge_base.save()
    return knowledge_base


# --- computing --------------------------------------------------------------------------


def test_the_task_suggests_with_the_default_threshold_and_a_redelivery_does_nothing_twice(knowledge_base):
    turn = ingest(knowledge_base, "t", [0.8, 0.5, 0.2, None])

    suggestions_compute_task(turn_ids=[turn.pk])  # what the worker runs

    rows = Suggestion.objects.filter(turn=turn).order_by("retrieved_passage__rank")
    assert [(r.retrieved_passage_id, r.agent, r.value, r.score) for r in rows] == [
        (pids(turn)[0], "retriever:base", "relevant", 0.8),
        (pids(turn)[1], "retriever:base", "relevant", 0.5),  # the default threshold 0.5 is inclusive
        (pids(turn)[2], "retriever:base", "not_relevant", 0.2),
    ]  # no score, no suggestion
    assert "default threshold (not calibrated yet) 0.500" in rows[0].reason
    assert list(SuggestionAttempt.objects.values_list("turn_id", "agent", "status")) == [(turn.pk, "retriever:base", "done")]

    again = turn_suggestions_compute(turn_ids=[turn.pk, turn.pk])
    assert (again.suggestions, again.skipped) == (0, 1)
    assert Suggestion.objects.count() == 3 and SuggestionAttempt.objects.count() == 1


def test_the_llm_judge_runs_for_a_knowledge_base_with_an_endpoint(judged_kb):
    turn = ingest(judged_kb, "t", [0.9, 0.3, 0.1])
    result = turn_suggestions_compute(turn_ids=[turn.pk])

    assert result.suggestions == 3 + 4 and result.failures == []
    [request] = FakeJudgeServer.requests
    assert request["body"]["model"] == "judge-1"
    prompt = request["body"]["messages"][1]["content"]
    assert "Question: query t" in prompt and "[1] passage 0 of t" in prompt and "Answer: an answer" in prompt
    judge = {r.retrieved_passage_id: (r.value, r.reason) for r in Suggestion.objects.filter(agent="llm-judge:judge-1")}
    first, second, third = pids(turn)
    assert judge == {first: ("relevant", "passage 1 reason"), second: ("partly", "passage 2 reason"),
                     third: ("not_relevant", "passage 3 reason"), None: ("correct", "the answer matches passage 1")}
    assert set(SuggestionAttempt.objects.values_list("agent", "status")) == {("retriever:base", "done"), ("llm-judge:judge-1", "done")}


def test_a_malformed_judge_reply_is_a_failed_attempt_and_the_retriever_still_suggests(judged_kb, monkeypatch, judge_server_url):
    monkeypatch.setenv("OPENAI_BASE_URL", f"{judge_server_url}/malformed/v1")
    turn = ingest(judged_kb, "t", [0.9])

    result = turn_suggestions_compute(turn_ids=[turn.pk])

    assert [(t, a) for t, a, _ in result.failures] == [(turn.pk, "llm-judge:judge-1")]
    failed = SuggestionAttempt.objects.get(agent="llm-judge:judge-1")
    assert failed.status == "failed" and "no JSON object in the reply" in failed.error
    assert list(Suggestion.objects.values_list("agent", flat=True)) == ["retriever:base"]
    # Not retried by a redelivery (one request in all), only when asked to.
    turn_suggestions_compute(turn_ids=[turn.pk])
    assert len(FakeJudgeServer.requests) == 1
    monkeypatch.setenv("OPENAI_BASE_URL", f"{judge_server_url}/judge/v1")
    turn_suggestions_compute(turn_ids=[turn.pk], retry_failed=True)
    assert SuggestionAttempt.objects.get(agent="llm-judge:judge-1").status == "done"
    assert review_failures(judged_kb) == {}


def review_failures(knowledge_base):
    return {s.agent: s.failures for s in suggestion_review(knowledge_base=knowledge_base).agents if s.failures}


def test_stored_turns_queue_the_task_after_commit_only(knowledge_base, monkeypatch, settings, django_capture_on_commit_callbacks):
    import curation.tasks

    settings.RAGLOOP_SUGGESTION_BATCH_SIZE = 2
    queued = []
    monkeypatch.setattr(curation.tasks.suggestions_compute_task, "delay", queued.append)
    with django_capture_on_commit_callbacks(execute=True):
        created = turns_ingest(knowledge_base=knowledge_base, records=[
            TurnRecord(external_id=f"t{i}", query="q", passages=[PassageRecord(text="p", score=0.7)]) for i in range(3)
        ]).created
        assert queued == []  # not before the transaction commits
    ids = sorted(created.values())
    assert queued == [ids[:2], ids[2:]]
    with django_capture_on_commit_callbacks(execute=True):  # the same batch again creates nothing: nothing queued
        turns_ingest(knowledge_base=knowledge_base, records=[TurnRecord(external_id="t0", query="q")])
    assert queued == [ids[:2], ids[2:]]


def test_an_ingested_conversation_and_a_served_turn_queue_too(embedded_knowledge_base, monkeypatch, django_capture_on_commit_callbacks):
    import curation.tasks
    from knowledge.services.conversations import ConversationMessage, ConversationRecord, conversation_ingest
    from knowledge.services.turns import turn_ask

    queued = []
    monkeypatch.setattr(curation.tasks.suggestions_compute_task, "delay", queued.append)
    with django_capture_on_commit_callbacks(execute=True):
        result = conversation_ingest(knowledge_base=embedded_knowledge_base, record=ConversationRecord(
            external_id="c1", messages=[ConversationMessage("user", "hi?"), ConversationMessage("assistant", "hello")]))
    with django_capture_on_commit_callbacks(execute=True):
        served = turn_ask(knowledge_base=embedded_knowledge_base, query="Does vitamin D help bones?")
    assert queued == [result.turns_created, [served.pk]]


# --- calibration and agreement ----------------------------------------------------------


def label(turn, curator, relevances, rating=""):
    return label_submit(turn=turn, curator=curator, data=LabelInput(
        passages={pid: rel for pid, rel in zip(pids(turn), relevances) if rel}, answer_rating=rating))


def test_calibration_is_stored_on_a_row_once_enough_labels_exist(knowledge_base, alice, settings):
    settings.RAGLOOP_SUGGESTION_CALIBRATION_MIN_PASSAGES = 6
    low = retriever_calibration_refresh(knowledge_base=knowledge_base)
    assert (low.calibrated, low.threshold, low.labelled_passages) == (False, 0.5, 0)
    # Relevant passages score 0.7 and up, not relevant ones 0.6 and below (and a partly one at 0.95).
    for i, (scores, relevances) in enumerate([
        ([0.9, 0.6], ["relevant", "not_relevant"]),
        ([0.8, 0.55], ["relevant", "not_relevant"]),
        ([0.7, 0.4, 0.95], ["relevant", "not_relevant", "partly"]),
    ]):  # fmt: skip
        label(ingest(knowledge_base, f"t{i}", scores), alice, relevances)

    calibration = retriever_calibration_refresh(knowledge_base=knowledge_base)
    assert calibration.calibrated
    assert calibration.threshold == pytest.approx(0.65)
    assert (calibration.labelled_passages, calibration.agreed_passages, calibration.agreement_percent) == (6, 6, 100.0)
    assert calibration.kappa == 1.0
    assert retriever_calibration_refresh(knowledge_base=knowledge_base).pk == calibration.pk  # unchanged: no new row
    assert RetrieverCalibration.objects.count() == 2
    # The next turn's retriever suggestions cut at the calibrated threshold.
    turn = ingest(knowledge_base, "new", [0.66, 0.64])
    turn_suggestions_compute(turn_ids=[turn.pk])
    assert list(Suggestion.objects.filter(turn=turn).order_by("retrieved_passage__rank").values_list("value", flat=True)) == [
        "relevant", "not_relevant"]


def test_agent_agreement_figures_on_a_constructed_set(judged_kb, alice):
    # Four turns, three passages each. The fake judge says relevant / partly / not relevant and
    # "correct"; the retriever (default 0.5) relevant / relevant / not relevant.
    turns = [ingest(judged_kb, f"t{i}", [0.9, 0.6, 0.2]) for i in range(4)]
    turn_suggestions_compute(turn_ids=[t.pk for t in turns])
    finals = [
        (["relevant", "partly", "not_relevant"], "correct"),       # judge 3/3, retriever 2/3
        (["relevant", "not_relevant", "not_relevant"], "correct"),  # judge 2/3, retriever 2/3
        (["not_relevant", "partly", "not_relevant"], "wrong"),     # judge 2/3, retriever 1/3
        (["relevant", "relevant", "not_relevant"], "correct"),     # judge 2/3, retriever 3/3
    ]
    for turn, (relevances, rating) in zip(turns, finals):
        label(turn, alice, relevances, rating)

    rows = {(r.agent, r.target): r for r in suggestion_agents_measure(knowledge_base=judged_kb)}

    judge, retriever, answers = rows[("llm-judge:judge-1", "passage")], rows[("retriever:base", "passage")], rows[("llm-judge:judge-1", "answer")]
    assert (judge.items, judge.agreed) == (12, 9)
    assert (retriever.items, retriever.agreed) == (12, 8)
    assert (answers.items, answers.agreed) == (4, 3)
    # Kappa by hand. Judge: suggested R4 P4 N4; curators R4 P2 N6 -> p_e = (16 + 8 + 24) / 144.
    assert judge.kappa == pytest.approx((9 / 12 - 48 / 144) / (1 - 48 / 144))
    # Retriever: suggested R8 N4; curators R4 P2 N6 -> p_e = (32 + 24) / 144.
    assert retriever.kappa == pytest.approx((8 / 12 - 56 / 144) / (1 - 56 / 144))
    # Answers: suggested correct x4; curators correct 3, wrong 1 -> p_e = 12/16 = p_o: kappa 0.
    assert answers.kappa == pytest.approx(0.0)
    assert SuggestionAgentAgreement.objects.count() == 3
    suggestion_agents_measure(knowledge_base=judged_kb)  # measuring again updates, adds nothing
    assert SuggestionAgentAgreement.objects.count() == 3

    review = {(s.agent, s.target): s for s in suggestion_review(knowledge_base=judged_kb).agents}
    standing = review[("retriever:base", "passage")]
    assert (standing.overall.items, standing.overall.agreed) == (12, 8)
    assert [w.agreement.items for w in standing.weeks] == [12]  # all made this week
    assert standing.overall.kappa == pytest.approx(retriever.kappa)


def test_the_agent_with_the_better_measured_kappa_is_preselected(judged_kb, alice, settings):
    settings.RAGLOOP_SUGGESTION_TRUST_MIN_ITEMS = 3
    turn = ingest(judged_kb, "t", [0.9, 0.6])
    turn_suggestions_compute(turn_ids=[turn.pk])
    first, second = pids(turn)
    # Nothing measured yet: the LLM judge goes before the retriever (kind precedence).
    shown = turn_suggestions(knowledge_base=judged_kb, turn=turn)
    assert shown.passages[second].primary.agent == "llm-judge:judge-1"
    assert [o.agent for o in shown.passages[second].others] == ["retriever:base"]
    assert shown.answer.primary.value == "correct" and shown.answer.others == []
    # Measured: the retriever agreed better, so it is pre-selected now.
    SuggestionAgentAgreement.objects.create(knowledge_base=judged_kb, agent="retriever:base", target="passage",
                                            items=30, agreed=27, kappa=0.8, measured_at="2025-01-01T00:00Z")
    SuggestionAgentAgreement.objects.create(knowledge_base=judged_kb, agent="llm-judge:judge-1", target="passage",
                                            items=30, agreed=20, kappa=0.3, measured_at="2025-01-01T00:00Z")
    shown = turn_suggestions(knowledge_base=judged_kb, turn=turn)
    assert shown.passages[second].primary.agent == "retriever:base"
    assert shown.as_state()["passages"][str(second)]["value"] == "relevant"


# --- matched suggestions ----------------------------------------------------------------


def test_the_label_records_which_suggestion_was_shown_and_whether_it_was_kept(judged_kb, alice):
    turn = ingest(judged_kb, "t", [0.9, 0.6, 0.2])
    turn_suggestions_compute(turn_ids=[turn.pk])
    state = turn_suggestions(knowledge_base=judged_kb, turn=turn).as_state()
    first, second, third = pids(turn)
    payload = {
        "passages": {str(first): "relevant", str(second): "not_relevant"},  # kept, changed; third not judged
        "answer_rating": "wrong",  # changed
        "suggestions": {"passages": {p: s["id"] for p, s in state["passages"].items()}, "answer": state["answer"]["id"]},
    }
    label_draft_save(turn=turn, curator=alice, payload=payload, base_version=0)  # a draft keeps them
    assert label_for_editing(turn=turn, curator=alice)[0]["suggestions"] == payload["suggestions"]

    saved = label_submit(turn=turn, curator=alice, data=LabelInput.from_payload(payload))

    judgments = {j.retrieved_passage_id: j for j in PassageJudgment.objects.filter(label=saved)}
    assert set(judgments) == {first, second}
    assert (judgments[first].suggestion_id, judgments[first].suggestion_matched) == (state["passages"][str(first)]["id"], True)
    assert (judgments[second].suggestion_id, judgments[second].suggestion_matched) == (state["passages"][str(second)]["id"], False)
    saved.refresh_from_db()
    assert (saved.answer_suggestion_id, saved.answer_suggestion_matched) == (state["answer"]["id"], False)
    kept = {s.agent: (s.kept, s.shown) for s in suggestion_review(knowledge_base=judged_kb).agents if s.target == "passage"}
    assert kept == {"llm-judge:judge-1": (1, 2), "retriever:base": (0, 0)}
    # Without suggestions nothing is recorded (an import, a page without any).
    plain = label_submit(turn=turn, curator=alice, data=LabelInput(passages={first: "relevant"}))
    assert PassageJudgment.objects.get(label=plain).suggestion_matched is None
    assert Label.objects.get(pk=plain.pk).answer_suggestion_id is None


def test_a_suggestion_of_another_turn_or_passage_is_refused(knowledge_base, alice):
    turn, other = ingest(knowledge_base, "t", [0.9, 0.2]), ingest(knowledge_base, "o", [0.9])
    turn_suggestions_compute(turn_ids=[turn.pk, other.pk])
    foreign = Suggestion.objects.get(turn=other)
    mine = Suggestion.objects.filter(turn=turn).order_by("retrieved_passage__rank")
    first, second = pids(turn)
    for suggestions, message in [
        ({"passages": {str(first): foreign.pk}}, "is not a suggestion for passage"),
        ({"passages": {str(first): mine[1].pk}}, "is not a suggestion for passage"),
        ({"answer": mine[0].pk}, "is not an answer suggestion"),
        ({"passages": {str(first): "x"}}, "is not a suggestion id"),
        ([1], "must be an object"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            label_submit(turn=turn, curator=alice, data=LabelInput.from_payload(
                {"passages": {str(first): "relevant"}, "suggestions": suggestions}))
    assert not Label.objects.exists()


# --- pages and permissions --------------------------------------------------------------


def test_the_judging_page_shows_suggestions_and_a_curator_of_another_kb_sees_none(client, knowledge_base, alice, django_user_model):
    other_kb = knowledge_base_create(slug="other-kb", name="Other")
    mallory = _curator(django_user_model, "mallory", other_kb)
    turn = ingest(knowledge_base, "t", [0.9, 0.2])
    turn_suggestions_compute(turn_ids=[turn.pk])

    client.force_login(alice)
    page = client.get(f"/kbs/test-kb/turns/{turn.pk}/judge/")
    html = page.content.decode()
    assert page.status_code == 200
    assert html.count('class="wb-suggestion"') == 2 and "retriever:base" in html
    assert page.context["state"]["suggestions"]["passages"][str(pids(turn)[0])]["value"] == "relevant"

    client.force_login(mallory)
    assert client.get(f"/kbs/test-kb/turns/{turn.pk}/judge/").status_code == 404
    assert client.get(f"/kbs/other-kb/turns/{turn.pk}/judge/").status_code == 404
    assert client.get("/kbs/test-kb/suggestions/").status_code == 404
    assert turn_suggestions(knowledge_base=other_kb, turn=turn).passages == {}
    # A submit naming a suggestion the curator could not see is refused by the turn check too.
    response = client.post(f"/kbs/other-kb/turns/{turn.pk}/label/", {"payload": "{}"})
    assert response.status_code == 404


def test_the_review_page_is_for_admins_and_says_when_the_threshold_is_the_default(client, knowledge_base, alice, admin_user):
    turn = ingest(knowledge_base, "t", [0.9, 0.2])
    turn_suggestions_compute(turn_ids=[turn.pk])
    client.force_login(alice)
    assert client.get("/kbs/test-kb/suggestions/").status_code == 403
    client.force_login(admin_user)
    html = client.get("/kbs/test-kb/suggestions/").content.decode()
    assert 'id="calibration-default"' in html and "default threshold" in html and "<strong>0.500</strong>" in html
    assert 'data-agent="retriever:base"' in html

