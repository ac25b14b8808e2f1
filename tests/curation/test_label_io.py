"""Label import (labels JSONL, BEIR queries + qrels) and export (command and download): exact
values, idempotent re-imports, errors that name the line and write nothing, a round trip."""

import json
from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command, execute_from_command_line
from django.core.management.base import CommandError
from django.db import connections

from curation.models import Label, LabelRevision, Membership, PassageJudgment
from curation.services.label_io import import_external_id, labels_export
from curation.services.labels import LabelInput, label_submit
from knowledge.models import Chunk, RetrievedPassage, Turn
from knowledge.services.documents import documents_ingest
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.turns import PassageRecord, TurnRecord, turns_ingest
from tests.conftest import REPO_ROOT, SAMPLE_DOCUMENTS

DOCUMENTS = {d["_id"]: d for d in SAMPLE_DOCUMENTS}


@pytest.fixture
def kb(knowledge_base, sample_documents):
    """The test knowledge base with the four sample documents (not embedded: not needed here)."""
    documents_ingest(knowledge_base=knowledge_base, documents=sample_documents)
    return knowledge_base


@pytest.fixture
def curators(db, django_user_model, knowledge_base):
    group = Group.objects.get(name="curator")
    users = {}
    for name in ("alice", "bob"):
        user = django_user_model.objects.create_user(name, password=f"pw-{name}-123")
        user.groups.add(group)
        Membership.objects.create(knowledge_base=knowledge_base, user=user)
        users[name] = user
    return users


def write_lines(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return str(path)


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def run_failing(*args: str, returncode: int = 2) -> str:
    out = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command(*args, stdout=out, stderr=StringIO())
    assert raised.value.returncode == returncode
    assert out.getvalue() == ""
    return str(raised.value)


def row_counts(django_user_model=None) -> dict[str, int]:
    from django.contrib.auth import get_user_model

    models = (Turn, RetrievedPassage, Label, PassageJudgment, LabelRevision, Membership, get_user_model())
    return {model.__name__: model.objects.count() for model in models}


VITAMIN_D = "Does vitamin D prevent hip fractures?"
LINES = [
    {"query_id": "q1", "query": VITAMIN_D, "curator": "alice",
     "relevant": [{"document": "d-vitd"}],
     "irrelevant": ["d-coffee", {"text": "Bones are made of calcium.", "title": "Note"}],
     "answer_rating": "partly", "gold_answer": "Yes: daily vitamin D cut hip fractures by a fifth."},
    {"query_id": "q1", "query": VITAMIN_D, "curator": "bob",
     "relevant": [{"document": "d-vitd"}], "partly": [{"document": "d-sleep", "text": "Sleep and memory."}],
     "gold_answer": "Yes."},
    {"query": "Which enzyme do statins inhibit?", "curator": "alice",
     "relevant": [{"text": "Statins inhibit HMG-CoA reductase."}]},
]


def passages_of(turn) -> list[tuple]:
    return [(p.rank, p.document.external_id if p.document else None, p.source_id, p.title, p.text, p.score)
            for p in turn.passages.select_related("document")]


def judgments_of(label) -> dict[int, str]:
    return {j.retrieved_passage.rank: j.relevance for j in label.passage_judgments.select_related("retrieved_passage")}


# --- JSONL import ---------------------------------------------------------------------------


def test_a_labels_file_becomes_imported_turns_with_curator_labels(kb, curators, tmp_path):
    path = write_lines(tmp_path / "labels.jsonl", LINES)

    output = run("import_labels", "test-kb", path)

    assert output.strip() == (
        "test-kb: turns 2 created, 0 existing; passages 5 added; labels 3 created, 0 updated, 0 unchanged"
    )
    vitamin = Turn.objects.get(external_id="import:q1")
    assert (vitamin.source, vitamin.imported, vitamin.query, vitamin.answer, vitamin.feedback) == (
        "ingested", True, VITAMIN_D, "", None)
    # the passages: every item of the turn's lines, in the order they first appear
    assert passages_of(vitamin) == [
        (1, "d-vitd", "d-vitd", DOCUMENTS["d-vitd"]["title"], DOCUMENTS["d-vitd"]["text"], None),
        (2, "d-coffee", "d-coffee", DOCUMENTS["d-coffee"]["title"], DOCUMENTS["d-coffee"]["text"], None),
        (3, None, "", "Note", "Bones are made of calcium.", None),
        (4, "d-sleep", "d-sleep", DOCUMENTS["d-sleep"]["title"], "Sleep and memory.", None),
    ]
    alice = Label.objects.get(turn=vitamin, curator=curators["alice"])
    assert (alice.imported, alice.answer_rating, alice.gold_answer, alice.version, alice.skipped) == (
        True, "partly", "Yes: daily vitamin D cut hip fractures by a fifth.", 1, False)
    assert judgments_of(alice) == {1: "relevant", 2: "not_relevant", 3: "not_relevant"}
    bob = Label.objects.get(turn=vitamin, curator=curators["bob"])
    assert (bob.imported, bob.answer_rating, bob.gold_answer) == (True, "", "Yes.")
    assert judgments_of(bob) == {1: "relevant", 4: "partly"}
    vitamin.refresh_from_db()
    assert (vitamin.label_count, vitamin.needs_labels) == (2, False)

    # no query_id: the turn is named by a hash of the query
    statins = Turn.objects.get(external_id=import_external_id(query_id=None, query="Which enzyme do statins inhibit?"))
    assert statins.external_id.startswith("import:query-sha256:") and statins.imported
    assert passages_of(statins) == [(1, None, "", "", "Statins inhibit HMG-CoA reductase.", None)]
    assert judgments_of(statins.labels.get()) == {1: "relevant"}
    assert LabelRevision.objects.count() == 3


def test_importing_the_same_file_again_changes_nothing_and_a_changed_line_updates_one_label(kb, curators, tmp_path):
    path = write_lines(tmp_path / "labels.jsonl", LINES)
    run("import_labels", "test-kb", path)
    before = row_counts()
    label_ids = set(Label.objects.values_list("pk", flat=True))

    output = run("import_labels", "test-kb", path)

    assert output.strip() == (
        "test-kb: turns 0 created, 2 existing; passages 0 added; labels 0 created, 0 updated, 3 unchanged"
    )
    assert row_counts() == before
    assert set(Label.objects.values_list("pk", flat=True)) == label_ids

    # alice adds a comment in the workbench; then her line changes: a new passage, another answer
    alice_label = Label.objects.get(turn__external_id="import:q1", curator=curators["alice"])
    Label.objects.filter(pk=alice_label.pk).update(comment="checked the paper")
    changed = [dict(LINES[0], gold_answer="Yes.", relevant=["d-vitd", "d-statins"]), *LINES[1:]]
    output = run("import_labels", "test-kb", write_lines(tmp_path / "changed.jsonl", changed))

    assert output.strip() == (
        "test-kb: turns 0 created, 2 existing; passages 1 added; labels 0 created, 1 updated, 2 unchanged"
    )
    alice_label.refresh_from_db()
    assert (alice_label.version, alice_label.gold_answer, alice_label.comment) == (2, "Yes.", "checked the paper")
    turn = alice_label.turn
    assert [p.document.external_id if p.document else None for p in turn.passages.all()] == [
        "d-vitd", "d-coffee", None, "d-sleep", "d-statins"]
    assert judgments_of(alice_label) == {1: "relevant", 5: "relevant", 2: "not_relevant", 3: "not_relevant"}
    assert LabelRevision.objects.filter(label=alice_label).count() == 2
    assert LabelRevision.objects.count() == 4  # the other two labels were not touched


def test_unknown_curators_are_refused_or_created_on_request(kb, curators, tmp_path, django_user_model):
    path = write_lines(tmp_path / "labels.jsonl", [dict(LINES[0], curator="dora")])
    before = row_counts()

    message = run_failing("import_labels", "test-kb", path)

    assert "'dora'" in message and "labels.jsonl, line 1" in message and "--create-curators" in message
    assert row_counts() == before

    output = run("import_labels", "test-kb", path, "--create-curators")
    assert "curators created (no password yet): dora" in output
    dora = django_user_model.objects.get(username="dora")
    assert not dora.has_usable_password()
    assert list(dora.groups.values_list("name", flat=True)) == ["curator"]
    assert Membership.objects.filter(user=dora, knowledge_base=kb).exists()
    assert Label.objects.get(curator=dora).imported

    bad = write_lines(tmp_path / "bad-name.jsonl", ["", json.dumps(dict(LINES[0], curator="dora smith"))])
    message = run_failing("import_labels", "test-kb", bad, "--create-curators")
    assert "bad-name.jsonl, line 2" in message and "'dora smith'" in message


# --- BEIR import ----------------------------------------------------------------------------


@pytest.fixture
def beir_files(tmp_path):
    queries = tmp_path / "queries.jsonl"
    write_lines(queries, [
        {"_id": "1", "text": "Vitamin D lowers hip fracture rates.", "metadata": {}},
        {"_id": "2", "text": "Statins lower LDL cholesterol.", "metadata": {"x": 1}},
        {"_id": "3", "text": "A claim nobody judged.", "metadata": {}},
    ])
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n1\td-vitd\t1\n2\td-statins\t2\n1\td-coffee\t0\n", encoding="utf-8")
    return str(queries), str(qrels)


def test_beir_queries_and_qrels_become_imported_labels_of_one_curator(kb, curators, beir_files):
    queries, qrels = beir_files

    output = run("import_labels", "test-kb", "--beir-queries", queries, "--beir-qrels", qrels, "--curator", "alice")

    assert output.strip() == (
        "test-kb: turns 2 created, 0 existing; passages 3 added; labels 2 created, 0 updated, 0 unchanged"
    )
    assert sorted(Turn.objects.values_list("external_id", "query", "imported", "answer")) == [
        ("import:1", "Vitamin D lowers hip fracture rates.", True, ""),
        ("import:2", "Statins lower LDL cholesterol.", True, ""),
    ]
    first = Turn.objects.get(external_id="import:1")
    assert passages_of(first) == [
        (1, "d-vitd", "d-vitd", DOCUMENTS["d-vitd"]["title"], DOCUMENTS["d-vitd"]["text"], None),
        (2, "d-coffee", "d-coffee", DOCUMENTS["d-coffee"]["title"], DOCUMENTS["d-coffee"]["text"], None),
    ]
    label = first.labels.get()
    assert (label.curator, label.imported, label.gold_answer, label.answer_rating) == (curators["alice"], True, "", "")
    assert judgments_of(label) == {1: "relevant", 2: "not_relevant"}  # score 0: judged not relevant
    assert judgments_of(Turn.objects.get(external_id="import:2").labels.get()) == {1: "relevant"}

    again = run("import_labels", "test-kb", "--beir-queries", queries, "--beir-qrels", qrels, "--curator", "alice")
    assert "labels 0 created, 0 updated, 2 unchanged" in again


def test_beir_documents_missing_from_the_knowledge_base_are_named_or_skipped(kb, curators, beir_files, tmp_path):
    queries, _ = beir_files
    qrels = tmp_path / "qrels-missing.tsv"
    qrels.write_text("1\td-vitd\t1\n1\tnot-here\t1\n2\talso-gone\t1\n", encoding="utf-8")  # no header: fine
    args = ("import_labels", "test-kb", "--beir-queries", queries, "--beir-qrels", str(qrels), "--curator", "alice")
    before = row_counts()

    message = run_failing(*args)

    assert "'not-here' (" in message and "qrels-missing.tsv, line 2" in message
    assert "'also-gone' (" in message and "qrels-missing.tsv, line 3" in message and "--skip-missing" in message
    assert row_counts() == before

    output = run(*args, "--skip-missing")
    assert output.splitlines()[1:] == [
        f"skipped: document 'not-here' is not in test-kb ({qrels}, line 2)",
        f"skipped: document 'also-gone' is not in test-kb ({qrels}, line 3)",
        f"skipped: nothing left to import on {qrels}, line 3",
    ]
    assert list(Turn.objects.values_list("external_id", flat=True)) == ["import:1"]
    assert judgments_of(Label.objects.get()) == {1: "relevant"}


def test_the_demo_scifact_qrels_import_whole(knowledge_base, curators):
    """The demo subset (300 abstracts, 120 claims, 139 judgments): every qrels line a judgment."""
    from rag.documents import parse_path

    demo = REPO_ROOT / "demo" / "scifact"
    documents_ingest(knowledge_base=knowledge_base, documents=parse_path(demo / "corpus.jsonl"))

    output = run("import_labels", "test-kb", "--beir-queries", str(demo / "queries.jsonl"),
                 "--beir-qrels", str(demo / "qrels.tsv"), "--curator", "bob")

    assert output.strip() == (
        "test-kb: turns 120 created, 0 existing; passages 139 added; labels 120 created, 0 updated, 0 unchanged"
    )
    assert PassageJudgment.objects.filter(relevance="relevant", label__curator=curators["bob"]).count() == 139
    assert RetrievedPassage.objects.filter(document__isnull=True).count() == 0
    assert Turn.objects.filter(imported=True, needs_labels=False, answer="").count() == 120


@pytest.mark.parametrize(
    "qrels, problem",
    [
        ("query-id\tcorpus-id\tscore\n1\td-vitd\t-1\n", "line 2: unknown relevance value -1"),
        ("1\td-vitd\thigh\n", "line 1: score 'high' is not an integer"),
        ("1\td-vitd\t1\n9\td-vitd\t1\n", "line 2: query '9' is not in"),
        ("1\td-vitd\n", "line 1: expected 3 tab-separated columns"),
        ("1\td-vitd\t1\n1\td-vitd\t0\n", "line 2: query '1' and document 'd-vitd' are judged twice"),
    ],
)
def test_bad_qrels_name_the_line_and_write_nothing(kb, curators, beir_files, tmp_path, qrels, problem):
    queries, _ = beir_files
    path = tmp_path / "bad.tsv"
    path.write_text(qrels, encoding="utf-8")
    before = row_counts()

    message = run_failing("import_labels", "test-kb", "--beir-queries", queries, "--beir-qrels", str(path), "--curator", "alice")

    assert f"{path}, {problem}" in message
    assert row_counts() == before


# --- validation -----------------------------------------------------------------------------


GOOD = json.dumps(LINES[0])


@pytest.mark.parametrize(
    "lines, problem",
    [
        ([GOOD, "{not json"], "line 2: not valid JSON"),
        ([GOOD, "[1, 2]"], "line 2: expected a JSON object, got a list"),
        ([GOOD, json.dumps(dict(LINES[0], query=7))], 'line 2: "query" must be a string, got a number'),
        ([json.dumps({k: v for k, v in LINES[0].items() if k != "query"})], 'line 1: "query" is missing'),
        ([json.dumps(dict(LINES[0], relevant="d-vitd"))], 'line 1: "relevant" must be a list, got a string'),
        ([json.dumps(dict(LINES[0], relevant=[{"doc": "d-vitd"}]))], 'line 1: "relevant": unknown field "doc"'),
        ([json.dumps(dict(LINES[0], relevant=[{}]))], 'line 1: "relevant": an item needs a "document"'),
        ([json.dumps(dict(LINES[0], relevant=[None]))], 'line 1: "relevant": each item must be an object'),
        ([json.dumps(dict(LINES[0], partially=["d-vitd"]))], 'line 1: unknown field "partially"'),
        ([json.dumps(dict(LINES[0], answer_rating="great"))], "line 1: \"answer_rating\": 'great' is not one of"),
        ([json.dumps({"query": "q", "curator": "alice"})], "line 1: nothing to import"),
        ([GOOD, "", json.dumps(dict(LINES[0], relevant=["d-vitd", "d-vitd"]))], "line 3: the same passage is listed twice"),
        ([GOOD, json.dumps(LINES[0])], "line 2: curator 'alice' judges this query twice (first on"),
        ([GOOD, json.dumps(dict(LINES[1], query="another text"))], "line 2: query_id 'q1' has another query here"),
        ([GOOD, json.dumps(dict(LINES[1], relevant=["d-nope"]))], "'d-nope' ("),
        ([GOOD, json.dumps(dict(LINES[1], gold_answer="x\u0000y"))], 'line 2: "gold_answer" contains NUL'),
    ],
)
def test_bad_lines_are_named_and_nothing_is_written(kb, curators, tmp_path, lines, problem):
    path = write_lines(tmp_path / "labels.jsonl", lines)
    before = row_counts()

    message = run_failing("import_labels", "test-kb", path)

    assert problem in message
    assert "labels.jsonl" in message
    assert row_counts() == before


def test_a_file_that_is_not_utf8_is_refused_with_its_line(kb, curators, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes((GOOD + "\n").encode() + json.dumps({"query": "café", "curator": "alice"}, ensure_ascii=False).encode("latin-1"))

    message = run_failing("import_labels", "test-kb", str(path))

    assert f"{path}, line 2: not valid UTF-8" in message
    assert Turn.objects.count() == 0


def test_a_later_bad_line_leaves_the_earlier_good_ones_unwritten(kb, curators, tmp_path):
    """All or nothing: the good lines before a line that fails against the database are not kept."""
    lines = [GOOD, json.dumps(LINES[2]), json.dumps(dict(LINES[1], curator="nobody"))]
    path = write_lines(tmp_path / "labels.jsonl", lines)

    assert "'nobody' (" in run_failing("import_labels", "test-kb", path)
    assert row_counts()["Turn"] == 0 and row_counts()["Label"] == 0


def test_an_existing_turn_that_was_not_imported_is_not_taken_over(kb, curators, tmp_path):
    turns_ingest(knowledge_base=kb, records=[TurnRecord(external_id="import:q1", query=VITAMIN_D, answer="a")])
    path = write_lines(tmp_path / "labels.jsonl", [GOOD])

    message = run_failing("import_labels", "test-kb", path)

    assert "line 1: turn 'import:q1' exists in 'test-kb' and was not imported" in message
    assert Label.objects.count() == 0


# --- export ---------------------------------------------------------------------------------


@pytest.fixture
def curated(kb, curators):
    """An ingested turn judged by alice (with a passage she attached) and skipped by bob."""
    created = turns_ingest(knowledge_base=kb, records=[TurnRecord(
        external_id="chat-42", query="Is coffee bad for you?", answer="No.",
        passages=[PassageRecord(text="Caffeine blocks adenosine receptors.", source_id="d-coffee", title="Coffee", score=0.8),
                  PassageRecord(text="Statins inhibit HMG-CoA reductase.", source_id="ext-9", score=0.4),
                  PassageRecord(text="Unjudged passage.", score=0.1)],
    )]).created
    turn = Turn.objects.get(pk=created["chat-42"])
    first, second, _ = turn.passages.all()
    chunk = Chunk.objects.get(document__external_id="d-sleep", order=0)
    label_submit(turn=turn, curator=curators["alice"], data=LabelInput(
        passages={first.pk: "relevant", second.pk: "not_relevant"}, attached={chunk.pk: "partly"},
        answer_rating="correct", gold_answer="No, moderate coffee is fine.", rationale="not associated with higher mortality"))
    label_submit(turn=turn, curator=curators["bob"], data=LabelInput(skipped=True, skip_reason="unsure"))
    return turn, chunk


def test_export_writes_one_record_per_submitted_label(curated, tmp_path):
    turn, chunk = curated
    target = tmp_path / "out.jsonl"

    call_command("export_labels", "test-kb", "--output", str(target), stdout=StringIO(), stderr=(err := StringIO()))

    assert err.getvalue().strip() == f"test-kb: 1 labels written to {target}"
    records = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert records == [{
        "turn_id": turn.pk, "query_id": "chat-42", "query": "Is coffee bad for you?", "curator": "alice",
        "relevant": [{"document": "d-coffee", "title": "Coffee", "text": "Caffeine blocks adenosine receptors."}],
        "partly": [{"document": "d-sleep", "title": "Sleep and memory", "text": chunk.text}],
        "irrelevant": [{"text": "Statins inhibit HMG-CoA reductase."}],
        "answer_rating": "correct", "gold_answer": "No, moderate coffee is fine.",
        "rationale": "not associated with higher mortality",
    }]
    assert run("export_labels", "test-kb") == target.read_text(encoding="utf-8")  # standard output, same lines
    assert run("export_labels", "test-kb", "--curator", "bob") == ""  # bob only skipped
    assert "user 'nobody' not found" in run_failing("export_labels", "test-kb", "--curator", "nobody")
    assert "not found" in run_failing("export_labels", "no-such-kb")


def test_round_trip_export_import_into_a_fresh_knowledge_base_export(curated, tmp_path, sample_documents):
    """Exported labels imported into another knowledge base with the same documents export the
    same records (turn ids aside); importing the export again there changes nothing."""
    run("import_labels", "test-kb", write_lines(tmp_path / "labels.jsonl", LINES))
    first = tmp_path / "first.jsonl"
    call_command("export_labels", "test-kb", "--output", str(first), stdout=StringIO(), stderr=StringIO())
    other = knowledge_base_create(slug="other-kb")
    documents_ingest(knowledge_base=other, documents=sample_documents)

    output = run("import_labels", "other-kb", str(first))
    second = run("export_labels", "other-kb")

    assert "turns 3 created" in output and "labels 4 created" in output
    strip_ids = lambda text: [{k: v for k, v in json.loads(line).items() if k != "turn_id"} for line in text.splitlines()]  # noqa: E731
    exported = strip_ids(first.read_text(encoding="utf-8"))
    assert len(exported) == 4 and strip_ids(second) == exported
    assert Turn.objects.filter(knowledge_base=other, imported=True).count() == 3
    assert "labels 0 created, 0 updated, 4 unchanged" in run("import_labels", "other-kb", str(first))


# --- download ---------------------------------------------------------------------------------


def test_download_is_for_admins_only_and_streams_jsonl(client, curated, curators, admin_user):
    url = "/kbs/test-kb/labels.jsonl"
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    client.force_login(curators["alice"])  # a member, but not an admin
    assert client.get(url).status_code == 403
    assert client.get("/kbs/no-such-kb/labels.jsonl").status_code == 403

    client.force_login(admin_user)
    assert client.get("/kbs/no-such-kb/labels.jsonl").status_code == 404
    assert client.get(url + "?curator=nobody").status_code == 404
    assert client.post(url).status_code == 405
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="test-kb-labels.jsonl"'
    body = b"".join(response.streaming_content).decode("utf-8")
    assert body == run("export_labels", "test-kb")
    assert [json.loads(line)["curator"] for line in body.splitlines()] == ["alice"]
    assert b"".join(client.get(url + "?curator=bob").streaming_content) == b""
    assert list(labels_export(knowledge_base=curated[0].knowledge_base)) == [json.loads(body)]


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["import_labels", "test-kb"], "give a labels JSONL file"),
        (["import_labels", "test-kb", "/no/such/file.jsonl"], "/no/such/file.jsonl: no such file"),
        (["import_labels", "no-such-kb", "FILE"], "Knowledge base 'no-such-kb' not found"),
        (["import_labels", "test-kb", "--beir-queries", "q.jsonl"], "BEIR input needs --beir-queries, --beir-qrels and --curator"),
        (["import_labels", "test-kb", "FILE", "--curator", "alice"], "--curator is for BEIR input"),
        (["import_labels", "test-kb", "BAD"], "line 1: not valid JSON"),
        (["export_labels", "test-kb", "--output", "/no/such/folder/x.jsonl"], "no such folder"),
    ],
)
def test_command_errors_exit_2_with_the_message(kb, curators, tmp_path, capsys, monkeypatch, argv, message):
    # run_from_argv closes the connections when done; this test's transaction lives on one.
    monkeypatch.setattr(connections, "close_all", lambda: None)
    good, bad = write_lines(tmp_path / "good.jsonl", [GOOD]), write_lines(tmp_path / "bad.jsonl", ["{"])
    argv = [good if a == "FILE" else bad if a == "BAD" else a for a in argv]

    with pytest.raises(SystemExit) as exited:
        execute_from_command_line(["manage.py", *argv])

    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert captured.out == ""
    assert Turn.objects.count() == 0


def test_the_json_summary(kb, curators, tmp_path):
    summary = json.loads(run("import_labels", "test-kb", write_lines(tmp_path / "l.jsonl", LINES), "--json"))
    assert summary == {
        "turns_created": 2, "turns_existing": 0, "passages_added": 5, "labels_created": 3, "labels_updated": 0,
        "labels_unchanged": 0, "curators_created": [], "skipped_documents": [], "skipped_records": [],
    }
