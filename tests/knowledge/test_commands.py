"""The management commands: kb_create, kb_list, ingest, ask, retrieve (one query or a JSONL file
of them) and token_create, including the errors that must stop them before anything is written."""

import json
from io import StringIO

import pytest
from django.core.management import call_command, execute_from_command_line
from django.core.management.base import CommandError
from django.db import connections
from django.test import Client

from knowledge.models import (
    ApiToken,
    Chunk,
    Document,
    EmbeddingJob,
    EmbeddingSpace,
    KnowledgeBase,
    RetrievedPassage,
    Turn,
)
from knowledge.services.documents import documents_ingest
from knowledge.services.knowledge_bases import (
    BASE_MODEL_REFERENCE,
    knowledge_base_create,
)
from knowledge.services.tokens import api_token_authenticate, api_token_can_access
from tests.conftest import embed_everything_now

VITAMIN_D_QUERY = "Does vitamin D prevent hip fractures in elderly adults?"


def run(*args: str) -> str:
    """Run a command in this process; returns its stdout."""
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def run_failing(*args: str, returncode: int = 2) -> str:
    """Run a command that must fail with a CommandError; returns its message."""
    out = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command(*args, stdout=out, stderr=StringIO())
    assert raised.value.returncode == returncode
    assert out.getvalue() == ""  # no half-written output before the error
    return str(raised.value)


def row_counts() -> dict[str, int]:
    models = (KnowledgeBase, Document, Chunk, EmbeddingJob, Turn, RetrievedPassage, ApiToken)
    return {model.__name__: model.objects.count() for model in models}


# --- kb_create and kb_list ----------------------------------------------------------------


def test_kb_create_and_kb_list(embedded_knowledge_base):
    assert run("kb_create", "notes-kb", "--name", "My notes", "--description", "Lab notes").strip() == (
        "created knowledge base notes-kb"
    )
    run("kb_create", "chat-kb", "--generator", "openai", "--generator-model", "gpt-4o-mini")
    Turn.objects.create(knowledge_base=embedded_knowledge_base, source=Turn.Source.INGESTED, external_id="t", query="q")

    rows = json.loads(run("kb_list", "--json"))

    notes = KnowledgeBase.objects.get(slug="notes-kb")
    assert (notes.name, notes.description, notes.live_space.retriever_version) == ("My notes", "Lab notes", "base")
    assert rows == [
        {"slug": "chat-kb", "name": "chat-kb", "documents": 0, "chunks": 0, "turns": 0,
         "live_retriever_version": "base", "generator": "openai:gpt-4o-mini"},
        {"slug": "notes-kb", "name": "My notes", "documents": 0, "chunks": 0, "turns": 0,
         "live_retriever_version": "base", "generator": "extractive"},
        {"slug": "test-kb", "name": "Test KB", "documents": 4, "chunks": embedded_knowledge_base.chunks.count(),
         "turns": 1, "live_retriever_version": "base", "generator": "extractive"},
    ]  # fmt: skip
    table = run("kb_list").splitlines()
    assert [line.split()[0] for line in table] == ["chat-kb", "notes-kb", "test-kb"]
    assert "4 docs" in table[2] and "1 turns" in table[2]


def test_kb_list_shows_retired_spaces_and_embedding_space_restore_brings_one_back(embedded_knowledge_base):
    from knowledge.models import EmbeddingSpace
    from knowledge.services.embedding_spaces import embedding_space_retire

    kb = embedded_knowledge_base
    space = EmbeddingSpace.objects.create(
        knowledge_base=kb, retriever_version="retriever-v1", model_reference="base:all-MiniLM-L6-v2", dimensions=384
    )
    embed_everything_now(kb)
    embedding_space_retire(space=space)

    [row] = json.loads(run("kb_list", "--spaces", "--json"))
    assert [(s["retriever_version"], s["state"], s["vectors"]) for s in row["spaces"]] == [
        ("base", "ready", kb.chunks.count()), ("retriever-v1", "retired", kb.chunks.count()),
    ]  # fmt: skip
    assert row["spaces"][1]["retired_at"] and row["spaces"][1]["vectors_dropped_at"] is None
    assert "space retriever-v1" in run("kb_list", "--spaces") and " retired since " in run("kb_list", "--spaces")

    assert "is ready" in run("embedding_space_restore", "test-kb", "retriever-v1")
    assert "'retriever-v1' is ready, not retired" in run_failing("embedding_space_restore", "test-kb", "retriever-v1")
    assert "no embedding space" in run_failing("embedding_space_restore", "test-kb", "retriever-v9")


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["Bad Slug"], ["'Bad Slug'", "invalid"]),
        (["under_score"], ["invalid"]),
        (["ümlaut"], ["invalid"]),
        (["x" * 65], ["invalid"]),
        (["ok-kb", "--generator", "magic"], ["'magic'", "unknown"]),
        (["ok-kb", "--generator", "openai"], ["'openai'", "needs a model"]),
    ],
)
def test_kb_create_refuses_bad_input(db, args, fragments):
    message = run_failing("kb_create", *args)

    for fragment in fragments:
        assert fragment in message
    assert KnowledgeBase.objects.count() == 0


def test_kb_create_refuses_a_duplicate(knowledge_base):
    before = row_counts()

    assert "'test-kb' already exists" in run_failing("kb_create", "test-kb", "--name", "Again")

    assert row_counts() == before
    knowledge_base.refresh_from_db()
    assert knowledge_base.name == "Test KB"


# --- ingest -------------------------------------------------------------------------------


@pytest.fixture
def corpus_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("Folic acid before pregnancy prevents neural tube defects.\n")
    (tmp_path / "guides").mkdir()
    (tmp_path / "guides" / "omega.md").write_text("# Omega-3 guide\n\nFish oil lowers triglycerides.\n")
    (tmp_path / "corpus.jsonl").write_text(
        json.dumps({"_id": "c-1", "title": "Iron", "text": "Iron deficiency causes anaemia."})
        + "\n\n"
        + json.dumps({"_id": "c-2", "title": "Zinc", "text": "Zinc supports the immune system."})
        + "\n"
    )
    (tmp_path / ".hidden.txt").write_text("Hidden files are skipped.")
    (tmp_path / "table.csv").write_text("a,b\n")  # unsupported types in a folder are skipped
    return tmp_path


def test_ingest_a_folder_reports_counts_and_writes_documents(knowledge_base, corpus_folder):
    output = run("ingest", "test-kb", str(corpus_folder))

    chunk_count = Chunk.objects.filter(knowledge_base=knowledge_base).count()
    assert output.strip() == f"test-kb: 4 created, 0 updated, 0 unchanged, {chunk_count} chunks to embed"
    assert chunk_count >= 4
    documents = {d.external_id: d for d in Document.objects.filter(knowledge_base=knowledge_base)}
    assert set(documents) == {"notes.txt", "guides/omega.md", "c-1", "c-2"}
    assert documents["guides/omega.md"].title == "Omega-3 guide"
    assert (documents["c-1"].title, documents["c-1"].text) == ("Iron", "Iron deficiency causes anaemia.")
    [job] = EmbeddingJob.objects.filter(space__knowledge_base=knowledge_base)
    assert (job.status, job.total_chunks) == (EmbeddingJob.Status.QUEUED, chunk_count)

    # Once embedded, ingesting the same files again changes nothing, and --wait has nothing to wait for.
    embed_everything_now(knowledge_base)
    before = row_counts()
    summary = json.loads(run("ingest", "test-kb", str(corpus_folder / "corpus.jsonl"), str(corpus_folder / "notes.txt"), "--json", "--wait"))
    assert summary == {"created": 0, "updated": 0, "unchanged": 3, "chunks_created": 0, "embedding_jobs": []}
    assert row_counts() == before


def test_ingest_json_reports_the_embedding_job(knowledge_base, corpus_folder):
    summary = json.loads(run("ingest", "test-kb", str(corpus_folder / "notes.txt"), "--json"))

    [job] = EmbeddingJob.objects.all()
    assert summary == {"created": 1, "updated": 0, "unchanged": 0, "chunks_created": 1, "embedding_jobs": [job.pk]}


@pytest.mark.parametrize(
    "name,data,fragments",
    [
        pytest.param("latin1.txt", "Café au lait".encode("latin-1"), ["latin1.txt", "UTF-8"], id="not-utf8"),
        pytest.param("binary.txt", b"abc\x00def", ["binary.txt", "NUL"], id="nul-byte"),
        pytest.param("blank.md", b" \n\n ", ["blank.md", "empty"], id="empty-document"),
        pytest.param("bad.jsonl", b'{"_id": "a", "text": "ok"}\n{"_id": \n', ["bad.jsonl", "line 2"], id="bad-jsonl-line"),
        pytest.param("dup.jsonl", b'{"_id": "notes.txt", "text": "clash"}\n', ["notes.txt", "twice"], id="id-clash"),
    ],
)
def test_ingest_with_one_bad_file_writes_nothing(knowledge_base, corpus_folder, name, data, fragments):
    bad = corpus_folder.parent / f"bad-{corpus_folder.name}"
    bad.mkdir()
    (bad / name).write_bytes(data)
    before = row_counts()

    message = run_failing("ingest", "test-kb", str(corpus_folder), str(bad / name))

    for fragment in fragments:
        assert fragment in message
    assert row_counts() == before


def test_ingest_of_a_folder_with_a_bad_file_writes_nothing(knowledge_base, corpus_folder):
    (corpus_folder / "zz-latin1.md").write_bytes("Crème brûlée".encode("latin-1"))

    message = run_failing("ingest", "test-kb", str(corpus_folder))

    assert "zz-latin1.md" in message and "UTF-8" in message
    assert Document.objects.count() == 0


@pytest.mark.parametrize(
    "path,fragments",
    [
        ("missing.txt", ["missing.txt", "no such file"]),
        ("empty-folder", ["empty-folder", "no supported files"]),
        ("n" * 5000 + ".txt", ["cannot read"]),
    ],
)
def test_ingest_of_a_path_that_cannot_be_read_writes_nothing(knowledge_base, corpus_folder, tmp_path_factory, path, fragments):
    elsewhere = tmp_path_factory.mktemp("more")
    (elsewhere / "empty-folder").mkdir()
    before = row_counts()

    message = run_failing("ingest", "test-kb", str(corpus_folder), str(elsewhere / path))

    for fragment in fragments:
        assert fragment in message
    assert row_counts() == before


def test_ingest_of_an_overlong_document_id_fails_cleanly(knowledge_base, tmp_path):
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "x" * 600, "text": "Too long an id."}) + "\n")

    message = run_failing("ingest", "test-kb", str(tmp_path / "corpus.jsonl"))

    assert "corpus.jsonl, line 1" in message and "512" in message
    assert Document.objects.count() == 0


def test_ingest_into_an_unknown_kb_fails(db, corpus_folder):
    assert "'no-such-kb' not found" in run_failing("ingest", "no-such-kb", str(corpus_folder))
    assert Document.objects.count() == 0


# --- ask and retrieve ---------------------------------------------------------------------


def test_ask_json_returns_the_stored_turn(embedded_knowledge_base):
    answer = json.loads(run("ask", "test-kb", VITAMIN_D_QUERY, "-k", "3", "--json"))

    turn = Turn.objects.get(pk=answer["turn_id"])
    assert (turn.source, turn.query, turn.answer) == (Turn.Source.SERVED, VITAMIN_D_QUERY, answer["answer"])
    assert "hip fractures" in answer["answer"]
    assert (answer["retriever_version"], answer["generator_version"]) == ("base", "extractive")
    assert [p["rank"] for p in answer["passages"]] == [1, 2, 3]
    assert answer["passages"][0]["document"] == "d-vitd"
    stored = [
        {"rank": p.rank, "document": p.source_id, "chunk": p.chunk_id, "score": p.score, "text": p.text}
        for p in turn.passages.order_by("rank")
    ]
    assert stored == answer["passages"]
    scores = [p["score"] for p in stored]
    assert scores == sorted(scores, reverse=True)


def test_ask_in_a_conversation_rewrites_the_follow_up_and_says_what_it_searched_for(embedded_knowledge_base):
    first = json.loads(run("ask", "test-kb", "Which enzyme do statins inhibit?", "--conversation", "cli-1", "--json"))
    printed = run("ask", "test-kb", "Does it cause muscle pain?", "--conversation", "cli-1", "-k", "1")

    assert (first["conversation"], first["position"], first["rewritten_query"]) == ("cli-1", 0, "")
    follow_up = Turn.objects.get(conversation__external_id="cli-1", position=1)
    assert printed.splitlines()[0] == f"(searched for: {follow_up.rewritten_query})"
    assert "statins" in follow_up.rewritten_query.lower() and "d-statins" in printed


def test_ask_prints_the_answer_and_its_passages(embedded_knowledge_base):
    lines = run("ask", "test-kb", VITAMIN_D_QUERY, "-k", "2").splitlines()

    turn = Turn.objects.get()
    assert lines[0] == turn.answer
    assert lines[1].startswith("[1] ") and "d-vitd" in lines[1]
    assert lines[2].startswith("[2] ")
    assert lines[-1].startswith(f"(turn {turn.pk}, ")


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["no-such-kb", VITAMIN_D_QUERY], ["'no-such-kb' not found"]),
        (["test-kb", VITAMIN_D_QUERY, "-k", "0"], ["k must be between 1 and"]),
        (["test-kb", "   "], ["query is empty"]),
    ],
)
def test_ask_errors_store_no_turn(knowledge_base, args, fragments):
    message = run_failing("ask", *args)

    for fragment in fragments:
        assert fragment in message
    assert Turn.objects.count() == 0


def test_ask_with_a_failing_generator_stores_no_turn(db, sample_documents):
    broken = knowledge_base_create(slug="hf-kb", generator_backend="hf", generator_model="/no/such/model")
    documents_ingest(knowledge_base=broken, documents=sample_documents)
    embed_everything_now(broken)

    message = run_failing("ask", "hf-kb", VITAMIN_D_QUERY, "--json")

    assert "generator (hf:/no/such/model) failed" in message
    assert Turn.objects.count() == 0


def test_retrieve_json_logs_nothing(embedded_knowledge_base):
    before = row_counts()

    result = json.loads(run("retrieve", "test-kb", VITAMIN_D_QUERY, "-k", "2", "--json"))

    assert result["retriever_version"] == "base"
    assert [p["rank"] for p in result["passages"]] == [1, 2]
    assert result["passages"][0]["document"] == "d-vitd"
    for passage in result["passages"]:
        chunk = Chunk.objects.select_related("document").get(pk=passage["chunk"])
        assert (chunk.document.external_id, chunk.text) == (passage["document"], passage["text"])
    everything = json.loads(run("retrieve", "test-kb", VITAMIN_D_QUERY, "--json"))  # -k defaults to 10
    assert len(everything["passages"]) == min(10, embedded_knowledge_base.chunks.count())
    lines = run("retrieve", "test-kb", VITAMIN_D_QUERY, "-k", "1").splitlines()
    assert len(lines) == 1 and lines[0].startswith("[1] ") and "d-vitd" in lines[0]
    assert row_counts() == before


def test_retrieve_with_a_retriever_version(embedded_knowledge_base):
    EmbeddingSpace.objects.create(
        knowledge_base=embedded_knowledge_base,
        retriever_version="v2",
        model_reference=BASE_MODEL_REFERENCE,
        dimensions=embedded_knowledge_base.live_space.dimensions,
        status=EmbeddingSpace.Status.READY,
    )
    embed_everything_now(embedded_knowledge_base)

    live = json.loads(run("retrieve", "test-kb", VITAMIN_D_QUERY, "-k", "3", "--json"))
    v2 = json.loads(run("retrieve", "test-kb", VITAMIN_D_QUERY, "-k", "3", "--json", "--version", "v2"))

    assert v2["retriever_version"] == "v2"
    assert [p["chunk"] for p in v2["passages"]] == [p["chunk"] for p in live["passages"]]
    message = run_failing("retrieve", "test-kb", VITAMIN_D_QUERY, "--version", "v9")
    assert "'v9'" in message and "not found" in message


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["test-kb"], "either a query or --queries"),
        (["test-kb", "vitamin", "--queries", "q.jsonl"], "either a query or --queries"),
        (["no-such-kb", "vitamin"], "'no-such-kb' not found"),
        (["test-kb", "vitamin", "-k", "1000"], "k must be between 1 and"),
    ],
)
def test_retrieve_refuses_bad_arguments(knowledge_base, args, fragment):
    assert fragment in run_failing("retrieve", *args)


def test_retrieve_queries_file_gives_one_line_per_query_in_order(embedded_knowledge_base, tmp_path):
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        "\n".join(
            [
                json.dumps({"id": "q-coffee", "text": "Why does coffee make me alert?"}),
                "",
                json.dumps({"id": 2, "text": VITAMIN_D_QUERY}),
                json.dumps({"id": "q-sleep", "text": "How does sleep help memory?", "extra": "ignored"}),
            ]
        )
        + "\n"
    )
    before = row_counts()

    lines = run("retrieve", "test-kb", "--queries", str(queries), "-k", "3", "--json").splitlines()

    assert row_counts() == before
    assert len(lines) == 3
    results = [json.loads(line) for line in lines]
    assert [r["id"] for r in results] == ["q-coffee", "2", "q-sleep"]
    assert [r["passages"][0]["document"] for r in results] == ["d-coffee", "d-vitd", "d-sleep"]
    chunk_documents = dict(Chunk.objects.values_list("pk", "document__external_id"))
    for result in results:
        assert set(result) == {"id", "passages"}
        assert len(result["passages"]) == 3
        assert all(set(p) == {"document", "chunk", "score"} for p in result["passages"])
        assert all(chunk_documents[p["chunk"]] == p["document"] for p in result["passages"])
        scores = [p["score"] for p in result["passages"]]
        assert scores == sorted(scores, reverse=True)
    # The same passages as retrieving the query on its own.
    single = json.loads(run("retrieve", "test-kb", VITAMIN_D_QUERY, "-k", "3", "--json"))
    assert [(p["document"], p["chunk"]) for p in single["passages"]] == [
        (p["document"], p["chunk"]) for p in results[1]["passages"]
    ]


@pytest.mark.parametrize(
    "content,fragments",
    [
        pytest.param(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": \n', [":2:", "not valid JSON"], id="bad-json"),
        pytest.param(b'{"id": "a", "text": "ok"}\n\n{"id": "c"}\n', [":3:", '"text"'], id="missing-text"),
        pytest.param(b'{"text": "no id"}\n', [":1:", '"id"'], id="missing-id"),
        pytest.param(b'{"id": "a", "text": 42}\n', [":1:", '"text"'], id="text-not-a-string"),
        pytest.param(b'["a", "text"]\n', [":1:", "object"], id="not-an-object"),
        pytest.param(b'{"id": "a", "text": "ok"}\n{"id": ["b"], "text": "ok"}\n', [":2:", '"id"'], id="id-a-list"),
        pytest.param(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "  "}\n', [":2:", "empty"], id="blank-text"),
        pytest.param("Café".encode("latin-1"), ["cannot read"], id="not-utf8"),
    ],
)
def test_a_malformed_queries_file_fails_naming_the_line(knowledge_base, tmp_path, content, fragments):
    queries = tmp_path / "queries.jsonl"
    queries.write_bytes(content)

    message = run_failing("retrieve", "test-kb", "--queries", str(queries), "--json")

    assert str(queries) in message
    for fragment in fragments:
        assert fragment in message


def test_a_missing_queries_file_fails(knowledge_base, tmp_path):
    message = run_failing("retrieve", "test-kb", "--queries", str(tmp_path / "nope.jsonl"))
    assert "nope.jsonl" in message and "cannot read" in message


@pytest.mark.parametrize(
    "argv,message",
    [
        (["retrieve", "no-such-kb", "vitamin D"], "CommandError: Knowledge base 'no-such-kb' not found."),
        (["retrieve", "test-kb", "vitamin D", "--version", "v9"], "CommandError: Retriever version 'v9' not found"),
        (["ingest", "test-kb", "/no/such/folder"], "CommandError: /no/such/folder: no such file or folder"),
    ],
)
def test_command_errors_exit_with_their_code_and_message(knowledge_base, capsys, monkeypatch, argv, message):
    """`manage.py` as a shell runs it (a new process would spend seconds importing torch)."""
    # run_from_argv closes the connections when done; this test's transaction lives on one.
    monkeypatch.setattr(connections, "close_all", lambda: None)

    with pytest.raises(SystemExit) as exited:
        execute_from_command_line(["manage.py", *argv])

    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


# --- token_create -------------------------------------------------------------------------


def test_token_create_prints_a_token_that_authenticates_with_its_scope(admin_user, knowledge_base):
    other = knowledge_base_create(slug="other-kb")

    plain = run("token_create", "root", "ci-bot", "--kb", "test-kb").strip()

    token = api_token_authenticate(plain=plain)
    assert token is not None
    assert (token.name, token.user, token.all_knowledge_bases) == ("ci-bot", admin_user, False)
    assert list(token.knowledge_bases.all()) == [knowledge_base]
    assert api_token_can_access(token=token, knowledge_base=knowledge_base)
    assert not api_token_can_access(token=token, knowledge_base=other)
    assert plain not in ApiToken.objects.filter(pk=token.pk).values_list("key_hash", flat=True)
    response = Client(HTTP_AUTHORIZATION=f"Bearer {plain}").get("/api/v1/kbs")
    assert [kb["slug"] for kb in response.json()] == ["test-kb"]

    every = api_token_authenticate(plain=run("token_create", "root", "admin", "--all").strip())
    assert every.all_knowledge_bases and api_token_can_access(token=every, knowledge_base=other)
    both = api_token_authenticate(plain=run("token_create", "root", "two", "--kb", "test-kb", "--kb", "other-kb").strip())
    assert set(both.knowledge_bases.values_list("slug", flat=True)) == {"test-kb", "other-kb"}


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["nobody", "t", "--kb", "test-kb"], "user 'nobody' not found"),
        (["root", "t"], "--kb SLUG"),
        (["root", "t", "--kb", "test-kb", "--kb", "no-such-kb"], "no-such-kb"),
    ],
)
def test_token_create_refuses_bad_input(admin_user, knowledge_base, args, fragment):
    assert fragment in run_failing("token_create", *args)
    assert ApiToken.objects.count() == 0
