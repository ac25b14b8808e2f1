"""Queue order, holds and overlap; labels, drafts and history."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from curation.models import Label, LabelDraft, LabelRevision, Membership, TurnHold
from curation.services.labels import (
    LabelInput,
    label_draft_save,
    label_for_editing,
    label_submit,
)
from curation.services.queue import (
    QueueFilter,
    knowledge_base_overlap_set,
    turn_next,
    turn_queue_list,
)
from knowledge.errors import Conflict, InvalidInput
from knowledge.models import Turn
from knowledge.services.turns import (
    PassageRecord,
    TurnRecord,
    turn_feedback_set,
    turns_ingest,
)


@pytest.fixture
def curators(db, django_user_model, knowledge_base):
    group = Group.objects.get(name="curator")
    users = []
    for name in ("alice", "bob", "carol"):
        user = django_user_model.objects.create_user(name, password=f"pw-{name}-123")
        user.groups.add(group)
        Membership.objects.create(knowledge_base=knowledge_base, user=user)
        users.append(user)
    return users


def _turns(knowledge_base, specs):
    """specs: (external id, feedback, [scores])."""
    records = [
        TurnRecord(external_id=eid, query=f"query {eid}", answer="answer",
                   passages=[PassageRecord(text=f"passage {i} of {eid}", score=s) for i, s in enumerate(scores)],
                   feedback=feedback)
        for eid, feedback, scores in specs
    ]
    created = turns_ingest(knowledge_base=knowledge_base, records=records).created
    return {eid: Turn.objects.get(pk=pk) for eid, pk in created.items()}


def test_next_follows_priority_negative_feedback_then_low_margin_then_the_rest(knowledge_base, curators):
    turns = _turns(knowledge_base, [
        ("calm", None, [0.9, 0.3]),
        ("close-call", None, [0.61, 0.60]),
        ("closer-call", None, [0.700, 0.699]),
        ("complaint", -1, [0.9, 0.2]),
    ])
    alice = curators[0]
    order = []
    for _ in range(4):
        turn = turn_next(knowledge_base=knowledge_base, curator=alice)
        order.append(turn.external_id)
        label_submit(turn=turn, curator=alice, data=LabelInput(answer_rating="correct"))
    assert order == ["complaint", "closer-call", "close-call", "calm"]
    assert turn_next(knowledge_base=knowledge_base, curator=alice) is None
    assert Turn.objects.filter(needs_labels=True).count() == 0
    assert turns["calm"].pk


def test_feedback_moves_a_turn_to_the_front(knowledge_base, curators):
    turns = _turns(knowledge_base, [("a", None, [0.9, 0.1]), ("b", None, [0.9, 0.1])])
    turn_feedback_set(turn=turns["b"], feedback=-1)
    assert turn_next(knowledge_base=knowledge_base, curator=curators[0]).external_id == "b"


def test_two_curators_are_never_handed_the_same_turn_with_overlap_one(knowledge_base, curators):
    _turns(knowledge_base, [(f"t{i}", None, [0.9, 0.1]) for i in range(3)])
    alice, bob, carol = curators
    a = turn_next(knowledge_base=knowledge_base, curator=alice)
    b = turn_next(knowledge_base=knowledge_base, curator=bob)
    c = turn_next(knowledge_base=knowledge_base, curator=carol)
    assert len({a.pk, b.pk, c.pk}) == 3
    # asking again returns the turn already held (a reload shows the same turn)
    assert turn_next(knowledge_base=knowledge_base, curator=alice).pk == a.pk
    # with the other two turns held by bob and carol, nothing else is free for alice
    assert turn_next(knowledge_base=knowledge_base, curator=alice, exclude=[a.pk]) is None


def test_overlap_two_hands_each_turn_to_two_curators(knowledge_base, curators):
    knowledge_base_overlap_set(knowledge_base=knowledge_base, labels_per_turn=2)
    _turns(knowledge_base, [("only", None, [0.9, 0.1])])
    alice, bob, carol = curators
    assert turn_next(knowledge_base=knowledge_base, curator=alice).external_id == "only"
    assert turn_next(knowledge_base=knowledge_base, curator=bob).external_id == "only"
    assert turn_next(knowledge_base=knowledge_base, curator=carol) is None


def test_an_expired_hold_returns_the_turn_to_the_queue_and_a_late_label_is_kept(knowledge_base, curators):
    _turns(knowledge_base, [("t", None, [0.9, 0.1])])
    alice, bob, _ = curators
    held = turn_next(knowledge_base=knowledge_base, curator=alice)
    assert turn_next(knowledge_base=knowledge_base, curator=bob) is None
    TurnHold.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert turn_next(knowledge_base=knowledge_base, curator=bob).pk == held.pk
    # alice submits after her hold expired: stored, not dropped
    label = label_submit(turn=held, curator=alice, data=LabelInput(answer_rating="wrong"))
    assert Label.objects.filter(pk=label.pk, curator=alice).exists()


def test_labels_are_edited_with_an_append_only_history(knowledge_base, curators):
    turns = _turns(knowledge_base, [("t", None, [0.9, 0.1])])
    turn, alice = turns["t"], curators[0]
    first, second = turn.passages.order_by("rank")
    label = label_submit(turn=turn, curator=alice, data=LabelInput(passages={first.pk: "relevant"}, answer_rating="partly"))
    label = label_submit(turn=turn, curator=alice, data=LabelInput(
        passages={first.pk: "relevant", second.pk: "not_relevant"}, answer_rating="correct", gold_answer="fixed"))
    assert Label.objects.count() == 1 and label.version == 2
    revisions = list(LabelRevision.objects.filter(label=label))
    assert [r.before is None for r in revisions] == [True, False]
    assert revisions[1].before["answer_rating"] == "partly"
    assert revisions[1].after == {
        "passages": {str(first.pk): "relevant", str(second.pk): "not_relevant"}, "attached": [],
        "answer_rating": "correct", "gold_answer": "fixed", "rationale": "", "has_personal_data": False,
        "comment": "", "rewrite_wrong": False, "corrected_query": "", "skipped": False, "skip_reason": "",
        "failure_tags": [],
    }
    turn.refresh_from_db()
    assert (turn.label_count, turn.needs_labels) == (1, False)


def test_bad_labels_are_refused_and_nothing_is_written(knowledge_base, curators):
    turns = _turns(knowledge_base, [("t", None, [0.9, 0.1]), ("u", None, [0.9, 0.1])])
    other_passage = turns["u"].passages.first()
    alice = curators[0]
    with pytest.raises(InvalidInput, match="do not belong"):
        label_submit(turn=turns["t"], curator=alice, data=LabelInput(passages={other_passage.pk: "relevant"}))
    with pytest.raises(InvalidInput, match="empty"):
        label_submit(turn=turns["t"], curator=alice, data=LabelInput())
    with pytest.raises(InvalidInput, match="reason"):
        label_submit(turn=turns["t"], curator=alice, data=LabelInput(skipped=True))
    with pytest.raises(InvalidInput, match="answer_rating"):
        LabelInput.from_payload({"answer_rating": "great"})
    assert Label.objects.count() == 0 and LabelRevision.objects.count() == 0


def test_a_draft_survives_and_never_overwrites_a_newer_label(knowledge_base, curators):
    turns = _turns(knowledge_base, [("t", None, [0.9, 0.1])])
    turn, alice = turns["t"], curators[0]
    payload, version, source = label_for_editing(turn=turn, curator=alice)
    assert (version, source, payload["gold_answer"]) == (0, "new", "answer")  # pre-filled with the model's answer

    label_draft_save(turn=turn, curator=alice, payload={**payload, "answer_rating": "wrong"}, base_version=0)
    payload, version, source = label_for_editing(turn=turn, curator=alice)
    assert (source, payload["answer_rating"]) == ("draft", "wrong")

    # another tab submits; the old draft is now stale
    label_submit(turn=turn, curator=alice, data=LabelInput(answer_rating="correct"))
    with pytest.raises(Conflict, match="newer label"):
        label_draft_save(turn=turn, curator=alice, payload={"answer_rating": "partly"}, base_version=0)
    payload, version, source = label_for_editing(turn=turn, curator=alice)
    assert (source, version, payload["answer_rating"]) == ("label", 1, "correct")
    assert not LabelDraft.objects.exists()


def test_disagreeing_labels_make_a_turn_disputed(knowledge_base, curators):
    knowledge_base_overlap_set(knowledge_base=knowledge_base, labels_per_turn=2)
    turns = _turns(knowledge_base, [("t", None, [0.9, 0.1])])
    turn = turns["t"]
    passage = turn.passages.first()
    alice, bob, _ = curators
    label_submit(turn=turn, curator=alice, data=LabelInput(passages={passage.pk: "relevant"}, answer_rating="correct"))
    label_submit(turn=turn, curator=bob, data=LabelInput(passages={passage.pk: "not_relevant"}, answer_rating="correct"))
    turn.refresh_from_db()
    assert turn.disputed and not turn.needs_labels
    listed = turn_queue_list(knowledge_base=knowledge_base, curator=alice, queue_filter=QueueFilter(status="disputed"))
    assert [t.pk for t in listed] == [turn.pk]


def test_a_submit_from_a_page_older_than_the_label_is_refused(knowledge_base, curators):
    turns = _turns(knowledge_base, [("t", None, [0.9, 0.1])])
    turn, alice = turns["t"], curators[0]
    label_submit(turn=turn, curator=alice, data=LabelInput(answer_rating="correct"), expected_version=0)
    with pytest.raises(Conflict, match="version 1"):
        label_submit(turn=turn, curator=alice, data=LabelInput(answer_rating="wrong"), expected_version=0)
    assert Label.objects.get().answer_rating == "correct"
    assert label_submit(turn=turn, curator=alice, data=LabelInput(answer_rating="wrong"), expected_version=1).version == 2


def test_opening_a_turn_directly_holds_it(knowledge_base, curators):
    from curation.services.queue import turn_hold_take

    turns = _turns(knowledge_base, [("t", None, [0.9, 0.1])])
    alice, bob, _ = curators
    turn_hold_take(turn=turns["t"], curator=alice)
    assert turn_next(knowledge_base=knowledge_base, curator=bob) is None
    assert turn_next(knowledge_base=knowledge_base, curator=alice).pk == turns["t"].pk


@pytest.mark.parametrize("queue_filter", [
    QueueFilter(),
    QueueFilter(status="unlabelled"),
    QueueFilter(status="disputed"),
    QueueFilter(status="labelled_by_me"),
    QueueFilter(feedback="negative", search="query"),
], ids=["all", "unlabelled", "disputed", "labelled_by_me", "negative+search"])
def test_every_queue_listing_can_walk_an_index_in_queue_order(knowledge_base, curators, queue_filter):
    """A page deep in the queue must not sort all the knowledge base's turns: with sorting
    priced out, the listing reads the index `turn_queue_all`, already in queue order."""
    from django.db import connection

    _turns(knowledge_base, [(f"t{i}", -1 if i % 2 else None, [0.9, 0.1]) for i in range(4)])
    turns = turn_queue_list(knowledge_base=knowledge_base, curator=curators[0], queue_filter=queue_filter)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("SET LOCAL enable_seqscan = off")
    plan = turns.values_list("pk", flat=True)[5000:5050].explain()
    assert "turn_queue_all" in plan and "Sort" not in plan, plan
