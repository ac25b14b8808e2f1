"""A turn a curator flagged as holding personal data stays out of training snapshots until an
admin clears the flag; the snapshot records how many it left out."""

import pytest

from curation.services.labels import LabelInput, label_submit
from curation.services.personal_data import turn_personal_data_clear
from knowledge.errors import InvalidInput
from knowledge.services.turns import PassageRecord, TurnRecord, turns_ingest
from training.models import SnapshotExample
from training.services.snapshots import dataset_snapshot_create


@pytest.fixture
def turns(knowledge_base):
    records = [
        TurnRecord(external_id=f"t-{i}", query=query, answer="a", passages=[PassageRecord(text=text, source_id=f"d-{i}")])
        for i, (query, text) in enumerate([
            ("Which enzyme do statins inhibit?", "Statins inhibit HMG-CoA reductase."),
            ("What does caffeine block?", "Caffeine blocks adenosine receptors."),
        ])
    ]
    created = turns_ingest(knowledge_base=knowledge_base, records=records).created
    return [knowledge_base.turns.get(pk=created[f"t-{i}"]) for i in range(2)]


def _label(turn, curator, *, flagged):
    label_submit(
        turn=turn, curator=curator,
        data=LabelInput(passages={turn.passages.get().pk: "relevant"}, answer_rating="correct", has_personal_data=flagged),
    )


def test_a_flagged_turn_is_excluded_until_an_admin_clears_it(knowledge_base, turns, curator, admin_user):
    flagged, clean = turns
    _label(flagged, curator, flagged=True)
    _label(clean, curator, flagged=False)

    before = dataset_snapshot_create(knowledge_base=knowledge_base, created_by=admin_user)
    assert before.example_count == 1 and before.personal_data_excluded == 1
    assert list(SnapshotExample.objects.filter(snapshot=before).values_list("turn_id", flat=True)) == [clean.pk]
    assert flagged.labels.get().pk not in before.label_ids

    turn_personal_data_clear(turn=flagged, actor=admin_user)
    after = dataset_snapshot_create(knowledge_base=knowledge_base, created_by=admin_user)
    assert after.example_count == 2 and after.personal_data_excluded == 0
    assert set(SnapshotExample.objects.filter(snapshot=after).values_list("turn_id", flat=True)) == {flagged.pk, clean.pk}


def test_a_snapshot_of_only_flagged_turns_is_refused_and_says_why(knowledge_base, turns, curator):
    for turn in turns:
        _label(turn, curator, flagged=True)
    with pytest.raises(InvalidInput, match="personal data"):
        dataset_snapshot_create(knowledge_base=knowledge_base)
