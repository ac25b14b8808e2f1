"""curation announces new final labels (labels_finalised) after commit: once per submitted label,
once per import that changed something (not once per imported line), once per adjudication."""

import pytest
from django.contrib.auth.models import Group

from curation.services.adjudication import adjudication_record
from curation.services.labels import LabelInput, label_submit
from curation.signals import labels_finalised
from tests.curation.test_label_io import LINES, write_lines
from tests.curation.test_label_io import run as run_command
from tests.curation.test_review import make_turns, passage_ids

pytestmark = pytest.mark.django_db


@pytest.fixture
def announced():
    seen = []

    def record(sender, *, knowledge_base_id, **kwargs):
        seen.append(knowledge_base_id)

    labels_finalised.connect(record, dispatch_uid="test-signals")
    yield seen
    labels_finalised.disconnect(dispatch_uid="test-signals")


@pytest.fixture
def kb(knowledge_base, sample_documents):
    from knowledge.services.documents import documents_ingest

    documents_ingest(knowledge_base=knowledge_base, documents=sample_documents)
    return knowledge_base


@pytest.fixture
def users(db, django_user_model, knowledge_base):
    from curation.models import Membership

    group = Group.objects.get_or_create(name="curator")[0]
    curators = {}
    for name in ("alice", "bob"):
        user = django_user_model.objects.create_user(name, password=f"pw-{name}-123")
        user.groups.add(group)
        Membership.objects.create(knowledge_base=knowledge_base, user=user)
        curators[name] = user
    return curators


def test_a_submitted_label_is_announced_after_commit_only(kb, users, announced, django_capture_on_commit_callbacks):
    turn = make_turns(kb, ["t"], passages=2)["t"]
    with django_capture_on_commit_callbacks(execute=True):
        label_submit(turn=turn, curator=users["alice"], data=LabelInput(passages={passage_ids(turn)[0]: "relevant"}))
        assert announced == []  # not before the transaction commits
    assert announced == [kb.pk]


def test_an_import_is_announced_once_and_an_unchanged_reimport_not_at_all(kb, users, announced, tmp_path, django_capture_on_commit_callbacks):
    path = write_lines(tmp_path / "labels.jsonl", LINES)  # three labels on two turns
    with django_capture_on_commit_callbacks(execute=True):
        run_command("import_labels", "test-kb", path)
    assert announced == [kb.pk]
    with django_capture_on_commit_callbacks(execute=True):
        run_command("import_labels", "test-kb", path)
    assert announced == [kb.pk]


def test_an_adjudication_is_announced(kb, users, admin_user, announced, django_capture_on_commit_callbacks):
    turn = make_turns(kb, ["t"], passages=2)["t"]
    first = passage_ids(turn)[0]
    with django_capture_on_commit_callbacks(execute=True):
        adjudication_record(turn=turn, admin=admin_user, passage_relevance={first: "relevant"}, answer_rating="correct")
    assert announced == [kb.pk]
