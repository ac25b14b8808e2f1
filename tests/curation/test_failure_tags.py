"""Failure tags: each knowledge base's defaults (new and existing), admins' add/rename/retire,
tags toggled on submit and kept in drafts, adjudication, export/import, the dashboard counts,
the judging page's picker, and that one knowledge base's tags are not another's."""

import importlib
import json
from datetime import timedelta
from io import StringIO

import pytest
from django.apps import apps
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from curation.models import DEFAULT_FAILURE_TAGS, FailureTag, Label, LabelRevision, Membership
from curation.selectors import failure_tag_counts, turn_final_judgment
from curation.services.adjudication import adjudication_record
from curation.services.failure_tags import (
    failure_tag_create,
    failure_tag_for,
    failure_tag_rename,
    failure_tag_retire,
)
from curation.services.label_io import label_records_parse, labels_export, labels_import
from curation.services.labels import LabelInput, label_draft_save, label_for_editing, label_submit
from curation.services.queue import knowledge_base_overlap_set
from knowledge.errors import InvalidInput
from knowledge.models import KnowledgeBase, Turn
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.turns import PassageRecord, TurnRecord, turns_ingest

DEFAULT_SLUGS = [slug for slug, _ in DEFAULT_FAILURE_TAGS]


def _curator(django_user_model, name, *knowledge_bases):
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


def _turns(knowledge_base, names, passages=2) -> dict[str, Turn]:
    records = [
        TurnRecord(external_id=name, query=f"query {name}", answer=f"answer {name}",
                   passages=[PassageRecord(text=f"passage {i} of {name}", source_id=f"doc-{i}", score=0.9 - i / 10)
                             for i in range(passages)])
        for name in names
    ]  # fmt: skip
    created = turns_ingest(knowledge_base=knowledge_base, records=records).created
    return {name: Turn.objects.get(pk=pk) for name, pk in created.items()}


def _first_passage(turn) -> int:
    return turn.passages.order_by("rank").first().pk


def _tags(label) -> list[str]:
    return [tag.slug for tag in Label.objects.get(pk=label.pk).failure_tags.all()]


# --- the tag set ---------------------------------------------------------------------------


def test_a_new_knowledge_base_gets_the_default_tags_in_picker_order(db):
    knowledge_base = knowledge_base_create(slug="fresh-kb", name="Fresh")
    tags = list(FailureTag.objects.filter(knowledge_base=knowledge_base))
    assert [(t.slug, t.name) for t in tags] == DEFAULT_FAILURE_TAGS
    assert [t.position for t in tags] == list(range(6))
    assert all(not t.retired for t in tags)


def test_the_data_migration_gives_existing_knowledge_bases_the_defaults_once(knowledge_base):
    migration = importlib.import_module("curation.migrations.0010_failure_tags")
    FailureTag.objects.all().delete()  # as before the migration
    other = KnowledgeBase.objects.create(slug="older-kb", name="Older")  # its receiver's tags, then none
    FailureTag.objects.filter(knowledge_base=other).delete()

    migration.default_tags_for_existing_knowledge_bases(apps, None)
    migration.default_tags_for_existing_knowledge_bases(apps, None)  # idempotent

    for kb in (knowledge_base, other):
        assert list(FailureTag.objects.filter(knowledge_base=kb).values_list("slug", flat=True)) == DEFAULT_SLUGS


def test_admins_add_rename_and_retire_tags_and_a_retired_tag_stays_on_old_labels(knowledge_base, alice):
    added = failure_tag_create(knowledge_base=knowledge_base, name="Wrong language")
    assert (added.slug, added.position) == ("wrong-language", 6)
    with pytest.raises(InvalidInput, match="already has a failure tag 'wrong-language'"):
        failure_tag_create(knowledge_base=knowledge_base, name="Wrong  language")
    with pytest.raises(InvalidInput, match="needs a name"):
        failure_tag_create(knowledge_base=knowledge_base, name="  ")
    stale = failure_tag_for(knowledge_base=knowledge_base, slug="stale-document")
    assert failure_tag_rename(tag=stale, name="Outdated document").slug == "stale-document"

    turn = _turns(knowledge_base, ["a"])["a"]
    label = label_submit(turn=turn, curator=alice, data=LabelInput(
        answer_rating="wrong", failure_tags=("stale-document", "wrong-language")))
    failure_tag_retire(tag=stale)

    # resubmitting keeps the retired tag the label carries ...
    label = label_submit(turn=turn, curator=alice, data=LabelInput(answer_rating="partly", failure_tags=("stale-document",)))
    assert _tags(label) == ["stale-document"]
    # ... but nobody puts it on anew
    other = _turns(knowledge_base, ["b"])["b"]
    with pytest.raises(InvalidInput, match="'stale-document' is retired"):
        label_submit(turn=other, curator=alice, data=LabelInput(answer_rating="wrong", failure_tags=("stale-document",)))
    assert not Label.objects.filter(turn=other).exists()


def test_the_management_command_keeps_the_tags(knowledge_base):
    def run(*args):
        out = StringIO()
        call_command("failure_tags", "test-kb", *args, stdout=out)
        return out.getvalue()

    assert run("add", "Wrong language", "--slug", "lang") == "added lang (Wrong language)\n"
    assert run("rename", "lang", "Answer in the wrong language") == "renamed lang to Answer in the wrong language\n"
    assert run("retire", "out-of-scope") == "retired out-of-scope\n"
    listing = run("list").splitlines()
    assert listing[-2:] == ["out-of-scope\tOut of scope (retired)", "lang\tAnswer in the wrong language"]
    with pytest.raises(CommandError, match="has no failure tag 'nope'") as raised:
        run("retire", "nope")
    assert raised.value.returncode == 2


# --- labels --------------------------------------------------------------------------------


def test_submit_sets_and_toggles_the_tags_and_the_history_records_them(knowledge_base, alice):
    turn = _turns(knowledge_base, ["a"])["a"]
    pid = _first_passage(turn)
    label = label_submit(turn=turn, curator=alice, data=LabelInput.from_payload(
        {"passages": {str(pid): "not_relevant"}, "failure_tags": ["out-of-scope", "retrieval-miss", "retrieval-miss"]}))
    assert _tags(label) == ["retrieval-miss", "out-of-scope"]  # picker order, once each

    label = label_submit(turn=turn, curator=alice, data=LabelInput.from_payload(
        {"passages": {str(pid): "not_relevant"}, "failure_tags": ["out-of-scope", "answer-incomplete"]}))
    assert _tags(label) == ["answer-incomplete", "out-of-scope"]
    revisions = list(LabelRevision.objects.filter(label=label))
    assert revisions[1].before["failure_tags"] == ["retrieval-miss", "out-of-scope"]
    assert revisions[1].after["failure_tags"] == ["answer-incomplete", "out-of-scope"]

    label = label_submit(turn=turn, curator=alice, data=LabelInput(skipped=True, skip_reason="unclear", failure_tags=("out-of-scope",)))
    assert _tags(label) == []  # a skip is no judgment


@pytest.mark.parametrize("tags", [["nope"], ["retrieval-miss", "only-in-other-kb"]])
def test_an_unknown_tag_or_another_knowledge_bases_tag_is_refused_naming_it_and_nothing_is_written(
    knowledge_base, alice, tags
):
    other = knowledge_base_create(slug="other-kb", name="Other")
    failure_tag_create(knowledge_base=other, name="Only in other KB")
    turn = _turns(knowledge_base, ["a"])["a"]
    with pytest.raises(InvalidInput, match=f"'{tags[-1]}' is not a failure tag of 'test-kb'"):
        label_submit(turn=turn, curator=alice, data=LabelInput(answer_rating="wrong", failure_tags=tuple(tags)))
    assert Label.objects.count() == 0 and LabelRevision.objects.count() == 0


@pytest.mark.parametrize("value", ["retrieval-miss", [1], [""], {"a": 1}])
def test_a_malformed_tag_list_is_refused(value):
    with pytest.raises(InvalidInput, match="failure_tags must be a list"):
        LabelInput.from_payload({"answer_rating": "wrong", "failure_tags": value})


def test_a_draft_keeps_the_tags(knowledge_base, alice):
    turn = _turns(knowledge_base, ["a"])["a"]
    label_draft_save(turn=turn, curator=alice, payload={"answer_rating": "wrong", "failure_tags": ["answer-not-grounded"]},
                     base_version=0)
    payload, version, source = label_for_editing(turn=turn, curator=alice)
    assert (payload["failure_tags"], version, source) == (["answer-not-grounded"], 0, "draft")
    with pytest.raises(InvalidInput):
        label_draft_save(turn=turn, curator=alice, payload={"failure_tags": "answer-not-grounded"}, base_version=0)


# --- final judgment and adjudication --------------------------------------------------------


def test_the_final_judgment_carries_the_curators_tags_until_an_adjudication_decides_them(knowledge_base, alice, bob, admin_user):
    knowledge_base_overlap_set(knowledge_base=knowledge_base, labels_per_turn=2)
    turn = _turns(knowledge_base, ["a"])["a"]
    pid = _first_passage(turn)
    label_submit(turn=turn, curator=alice, data=LabelInput(passages={pid: "relevant"}, failure_tags=("wrong-passage-first",)))
    label_submit(turn=turn, curator=bob, data=LabelInput(passages={pid: "relevant"}, failure_tags=("answer-incomplete",)))
    judgment = turn_final_judgment(Turn.objects.get(pk=turn.pk))
    assert (judgment.source, judgment.failure_tags) == ("agreement", ("wrong-passage-first", "answer-incomplete"))

    with pytest.raises(InvalidInput, match="'nope' is not a failure tag"):
        adjudication_record(turn=turn, admin=admin_user, passage_relevance={str(pid): "relevant"}, failure_tags=["nope"])
    assert not hasattr(Turn.objects.get(pk=turn.pk), "adjudication")

    adjudication = adjudication_record(
        turn=turn, admin=admin_user, passage_relevance={str(pid): "relevant"}, failure_tags=["retrieval-miss"]
    )
    assert [tag.slug for tag in adjudication.failure_tags.all()] == ["retrieval-miss"]
    judgment = turn_final_judgment(Turn.objects.get(pk=turn.pk))
    assert (judgment.source, judgment.failure_tags) == ("adjudication", ("retrieval-miss",))


def test_the_adjudication_form_offers_the_tags_preselects_the_curators_and_records_the_choice(
    client, knowledge_base, alice, bob, admin_user
):
    knowledge_base_overlap_set(knowledge_base=knowledge_base, labels_per_turn=2)
    turn = _turns(knowledge_base, ["a"])["a"]
    pid = _first_passage(turn)
    label_submit(turn=turn, curator=alice, data=LabelInput(passages={pid: "relevant"}, failure_tags=("wrong-passage-first",)))
    label_submit(turn=turn, curator=bob, data=LabelInput(passages={pid: "not_relevant"}))
    client.force_login(admin_user)
    url = f"/kbs/test-kb/disputes/{turn.pk}/"
    page = client.get(url).content.decode()
    form = page.split('<fieldset id="adjudication-tags">')[1].split("</fieldset>")[0]
    assert form.count('name="failure_tags"') == 6
    assert '<input type="checkbox" name="failure_tags" value="wrong-passage-first" checked>' in form
    assert '<input type="checkbox" name="failure_tags" value="retrieval-miss">' in form

    refused = client.post(url, {f"passage-{pid}": "relevant", "failure_tags": ["made-up"]})
    assert refused.status_code == 422 and "&#x27;made-up&#x27; is not a failure tag" in refused.content.decode()

    response = client.post(url, {f"passage-{pid}": "relevant", "failure_tags": ["retrieval-miss", "answer-incomplete"]})
    assert response.status_code == 302
    assert [t.slug for t in Turn.objects.get(pk=turn.pk).adjudication.failure_tags.all()] == [
        "retrieval-miss", "answer-incomplete",
    ]


# --- export and import ----------------------------------------------------------------------


def test_tags_round_trip_through_export_and_import_and_an_unknown_slug_is_refused_naming_it(
    knowledge_base, alice, django_user_model
):
    turn = _turns(knowledge_base, ["a", "b"])
    label_submit(turn=turn["a"], curator=alice, data=LabelInput(
        passages={_first_passage(turn["a"]): "relevant"}, failure_tags=("answer-not-grounded", "retrieval-miss")))
    label_submit(turn=turn["b"], curator=alice, data=LabelInput(passages={_first_passage(turn["b"]): "relevant"}))
    records = list(labels_export(knowledge_base=knowledge_base))
    assert [r.get("failure_tags") for r in records] == [["retrieval-miss", "answer-not-grounded"], None]

    data = "".join(json.dumps({k: v for k, v in r.items() if k != "turn_id"}) + "\n" for r in records).encode()
    other = knowledge_base_create(slug="other-kb", name="Other")
    Membership.objects.create(knowledge_base=other, user=alice)
    result = labels_import(knowledge_base=other, records=label_records_parse(filename="labels.jsonl", data=data))
    assert result.labels_created == 2
    exported = [r.get("failure_tags") for r in labels_export(knowledge_base=other)]
    assert exported == [["retrieval-miss", "answer-not-grounded"], None]
    again = labels_import(knowledge_base=other, records=label_records_parse(filename="labels.jsonl", data=data))
    assert (again.labels_unchanged, again.labels_updated) == (2, 0)

    bad = data.replace(b'"answer-not-grounded"', b'"not-a-tag"')
    before = (Turn.objects.count(), Label.objects.count())
    third = knowledge_base_create(slug="third-kb", name="Third")
    with pytest.raises(InvalidInput, match=r"labels.jsonl, line 1: \"failure_tags\": 'not-a-tag' is not a failure tag of 'third-kb'"):
        labels_import(knowledge_base=third, records=label_records_parse(filename="labels.jsonl", data=bad), create_curators=True)
    assert (Turn.objects.count(), Label.objects.count()) == before
    with pytest.raises(InvalidInput, match='"failure_tags" must be a list'):
        label_records_parse(filename="x.jsonl", data=b'{"query": "q", "curator": "alice", "gold_answer": "a", "failure_tags": "x"}')


def test_an_import_may_carry_a_retired_tag_and_a_line_without_tags_keeps_the_stored_ones(knowledge_base, alice):
    turn = _turns(knowledge_base, ["a"])["a"]
    failure_tag_retire(tag=failure_tag_for(knowledge_base=knowledge_base, slug="stale-document"))
    line = {"query_id": "q1", "query": "q one", "curator": "alice", "gold_answer": "a", "failure_tags": ["stale-document"]}
    labels_import(knowledge_base=knowledge_base, records=label_records_parse(filename="f", data=json.dumps(line).encode()))
    imported = Label.objects.get(turn__external_id="import:q1")
    assert _tags(imported) == ["stale-document"]
    del line["failure_tags"]
    line["gold_answer"] = "changed"
    labels_import(knowledge_base=knowledge_base, records=label_records_parse(filename="f", data=json.dumps(line).encode()))
    assert _tags(imported) == ["stale-document"] and Label.objects.get(pk=imported.pk).gold_answer == "changed"
    assert turn.labels.count() == 0


# --- dashboard ------------------------------------------------------------------------------


def test_the_dashboard_counts_turns_per_tag_for_the_period_and_draws_them(client, knowledge_base, alice, bob):
    turns = _turns(knowledge_base, ["a", "b", "c"])
    for name, curator, tags in [("a", alice, ("retrieval-miss",)), ("a", bob, ("retrieval-miss", "out-of-scope")),
                                ("b", alice, ("retrieval-miss",)), ("c", alice, ("answer-incomplete",))]:
        label_submit(turn=turns[name], curator=curator, data=LabelInput(answer_rating="wrong", failure_tags=tags))
    label_submit(turn=_turns(knowledge_base, ["d"])["d"], curator=alice,
                 data=LabelInput(skipped=True, skip_reason="unclear", failure_tags=("out-of-scope",)))
    Label.objects.filter(turn=turns["c"]).update(updated_at=timezone.now() - timedelta(days=40))
    failure_tag_retire(tag=failure_tag_for(knowledge_base=knowledge_base, slug="stale-document"))  # unused: not listed

    recent = {c.slug: c.turns for c in failure_tag_counts(knowledge_base=knowledge_base, since=timezone.localdate() - timedelta(days=29))}
    all_time = {c.slug: c.turns for c in failure_tag_counts(knowledge_base=knowledge_base)}
    assert recent == {"retrieval-miss": 2, "wrong-passage-first": 0, "answer-not-grounded": 0, "answer-incomplete": 0,
                      "out-of-scope": 1}
    assert all_time == {**recent, "answer-incomplete": 1}

    client.force_login(alice)
    page = client.get("/kbs/test-kb/dashboard/").content.decode()
    section = page.split('<section class="card" id="failure-tags">')[1].split("</section>")[0]
    assert '<svg class="bars tag-bars" role="img" aria-label="Turns per failure tag"' in section
    assert "<title>Retrieval miss: 2 turns</title>" in section and "<title>Answer incomplete: 0 turns</title>" in section
    assert '<tr data-tag="retrieval-miss"><td>Retrieval miss</td><td class="num">2</td></tr>' in section
    assert "<script" not in section
    all_page = client.get("/kbs/test-kb/dashboard/?tags=all").content.decode()
    assert '<tr data-tag="answer-incomplete"><td>Answer incomplete</td><td class="num">1</td></tr>' in all_page


# --- the judging page -----------------------------------------------------------------------


def test_the_judging_page_has_the_keyboard_tag_picker_with_a_digit_per_tag_and_the_drafts_tags_checked(
    client, knowledge_base, alice
):
    turn = _turns(knowledge_base, ["a"])["a"]
    failure_tag_retire(tag=failure_tag_for(knowledge_base=knowledge_base, slug="out-of-scope"))
    label_draft_save(turn=turn, curator=alice, payload={"failure_tags": ["answer-incomplete"]}, base_version=0)
    client.force_login(alice)
    page = client.get(f"/kbs/test-kb/turns/{turn.pk}/judge/").content.decode()
    picker = page.split('<fieldset class="wb-tags" id="wb-tags"')[1].split("</fieldset>")[0]
    assert "<legend><kbd>t</kbd> Failure tags</legend>" in picker
    assert picker.count('name="failure_tags"') == 5  # the retired tag is not offered
    assert ('<label class="wb-tag" data-key="1"><input type="checkbox" name="failure_tags" value="retrieval-miss" '
            'tabindex="-1"><kbd>1</kbd> Retrieval miss</label>') in picker
    assert 'value="answer-incomplete" tabindex="-1" checked><kbd>4</kbd> Answer incomplete' in picker
    assert "out-of-scope" not in picker
    assert "<kbd>t</kbd>, then <kbd>1</kbd>–<kbd>9</kbd>" in page  # the shortcuts list


def test_tags_are_submitted_through_the_page_and_another_knowledge_base_cannot_use_them(
    client, knowledge_base, alice, django_user_model
):
    turn = _turns(knowledge_base, ["a"])["a"]
    other = knowledge_base_create(slug="other-kb", name="Other")
    failure_tag_create(knowledge_base=other, name="Only in other KB")
    outsider = _curator(django_user_model, "olga", other)
    url = f"/kbs/test-kb/turns/{turn.pk}/label/"
    body = {"payload": {"answer_rating": "wrong", "failure_tags": ["answer-not-grounded"]}, "base_version": 0}

    client.force_login(outsider)  # a curator of the other knowledge base: this one does not exist for her
    assert client.post(url, json.dumps(body), content_type="application/json").status_code == 404
    assert client.post(f"/kbs/test-kb/turns/{turn.pk}/draft/", json.dumps(body), content_type="application/json").status_code == 404

    client.force_login(alice)
    foreign = {"payload": {"answer_rating": "wrong", "failure_tags": ["only-in-other-kb"]}, "base_version": 0}
    response = client.post(url, json.dumps(foreign), content_type="application/json")
    assert response.status_code == 422
    assert response.json()["error"].startswith("failure_tags: 'only-in-other-kb' is not a failure tag of 'test-kb'")
    assert not Label.objects.exists()

    response = client.post(url, json.dumps(body), content_type="application/json")
    assert response.status_code == 200
    assert _tags(Label.objects.get(pk=response.json()["label_id"])) == ["answer-not-grounded"]


def test_admins_keep_the_tags_on_the_settings_page_and_curators_may_not(client, knowledge_base, alice, admin_user):
    url = "/kbs/test-kb/settings/failure-tags/"
    client.force_login(alice)
    assert client.post(url, {"action": "add", "name": "Sneaky"}).status_code == 403
    assert not FailureTag.objects.filter(slug="sneaky").exists()

    client.force_login(admin_user)
    page = client.get("/kbs/test-kb/settings/").content.decode()
    assert '<tr data-tag="retrieval-miss"><td><code>retrieval-miss</code></td>' in page
    assert client.post(url, {"action": "add", "name": "Wrong language"}).status_code == 302
    assert client.post(url, {"action": "rename", "slug": "wrong-language", "name": "Foreign language"}).status_code == 302
    assert client.post(url, {"action": "retire", "slug": "out-of-scope"}).status_code == 302
    tags = {t.slug: t for t in FailureTag.objects.filter(knowledge_base=knowledge_base)}
    assert tags["wrong-language"].name == "Foreign language" and tags["wrong-language"].position == 6
    assert tags["out-of-scope"].retired
    assert client.post(url, {"action": "restore", "slug": "out-of-scope"}).status_code == 302
    assert not FailureTag.objects.get(knowledge_base=knowledge_base, slug="out-of-scope").retired

    refused = client.post(url, {"action": "add", "name": "Wrong language"})
    assert refused.status_code == 422 and "already has a failure tag" in refused.content.decode()
    assert client.post(url, {"action": "retire", "slug": "nope"}).status_code == 422
    assert client.post(url, {"action": "drop", "slug": "retrieval-miss"}).status_code == 422
    assert FailureTag.objects.filter(knowledge_base=knowledge_base).count() == 7
