"""The admins' knowledge base pages: create a knowledge base (the CLI's checks and messages),
upload files and folders with the embedding progress, delete a document with its chunks and
vectors. Curators get 403; refused input is a 4xx with the message and writes nothing."""

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from curation.models import Membership
from knowledge.models import AuditEvent, Chunk, ChunkEmbedding, Document, EmbeddingJob, KnowledgeBase

pytestmark = pytest.mark.django_db


@pytest.fixture
def curator_client(client, django_user_model, knowledge_base):
    user = django_user_model.objects.create_user("cora", password="pw-cora-123")
    user.groups.add(Group.objects.get_or_create(name="curator")[0])
    Membership.objects.create(knowledge_base=knowledge_base, user=user)
    client.force_login(user)
    return client


def _kb_form(**changes):
    return {
        "name": "Clinic notes", "slug": "clinic", "description": "Notes", "chunk_max_tokens": "120",
        "chunk_overlap_tokens": "20", "generator_backend": "extractive", "generator_model": "", **changes,
    }  # fmt: skip


# --- create ---------------------------------------------------------------------------------


def test_an_admin_creates_a_knowledge_base_with_its_chunking_and_generator(admin_client):
    page = admin_client.get("/knowledge-bases/new/")
    assert page.status_code == 200 and b'name="chunk_max_tokens" value="200"' in page.content
    response = admin_client.post("/knowledge-bases/new/", _kb_form(generator_backend="openai", generator_model="gpt-4o-mini"))
    assert response.status_code == 302 and response["Location"] == "/kbs/clinic/"
    kb = KnowledgeBase.objects.get(slug="clinic")
    assert (kb.name, kb.chunk_max_tokens, kb.chunk_overlap_tokens, kb.generator_backend, kb.generator_model) == (
        "Clinic notes", 120, 20, "openai", "gpt-4o-mini")
    assert kb.live_space.retriever_version == "base"
    detail = admin_client.get("/kbs/clinic/")
    assert b"Knowledge base clinic was created" in detail.content and b'id="upload-panel"' in detail.content
    assert b"New knowledge base" in admin_client.get("/").content


@pytest.mark.parametrize(
    ("changes", "status", "cli_arguments"),
    [
        ({"slug": "Bad Slug"}, 422, ["Bad Slug"]),
        ({"chunk_overlap_tokens": "60"}, 422, ["clinic", "--chunk-max-tokens", "120", "--chunk-overlap-tokens", "60"]),
        ({"chunk_max_tokens": "5000"}, 422, ["clinic", "--chunk-max-tokens", "5000"]),
        ({"generator_backend": "hf"}, 422, ["clinic", "--generator", "hf"]),
        ({"generator_backend": "nope"}, 422, ["clinic", "--generator", "nope"]),
    ],
)
def test_refused_input_says_what_the_cli_says_and_creates_nothing(admin_client, changes, status, cli_arguments):
    response = admin_client.post("/knowledge-bases/new/", _kb_form(**changes))
    assert response.status_code == status
    with pytest.raises(CommandError) as refused:
        call_command("kb_create", *cli_arguments)
    message = str(refused.value)
    assert message.encode() in response.content.replace(b"&#x27;", b"'")
    assert not KnowledgeBase.objects.exists()
    # what was typed is shown again
    assert b'value="Clinic notes"' in response.content


def test_a_slug_in_use_is_a_conflict(admin_client, knowledge_base):
    response = admin_client.post("/knowledge-bases/new/", _kb_form(slug="test-kb"))
    assert response.status_code == 409 and b"already exists" in response.content
    assert KnowledgeBase.objects.count() == 1


def test_a_chunk_size_that_is_not_a_number_is_refused_by_name(admin_client):
    response = admin_client.post("/knowledge-bases/new/", _kb_form(chunk_max_tokens="lots"))
    assert response.status_code == 422 and b"Chunk size must be a whole number of tokens" in response.content
    assert not KnowledgeBase.objects.exists()


def test_curators_may_not_create_knowledge_bases(curator_client):
    assert curator_client.get("/knowledge-bases/new/").status_code == 403
    assert curator_client.post("/knowledge-bases/new/", _kb_form()).status_code == 403
    assert not KnowledgeBase.objects.filter(slug="clinic").exists()
    assert b"New knowledge base" not in curator_client.get("/").content


# --- upload ---------------------------------------------------------------------------------


def _file(name, text):
    return SimpleUploadedFile(name, text.encode(), content_type="application/octet-stream")


def test_an_admin_uploads_files_and_a_folder_and_sees_the_embedding_job(admin_client, knowledge_base):
    response = admin_client.post(
        "/kbs/test-kb/documents/upload/",
        {
            "files": [_file("vitamins.txt", "Vitamin D helps calcium absorption."), _file("sleep.md", "# Sleep\n\nSleep consolidates memory.")],
            "folder": [_file("notes.md", "# Notes\n\nCoffee blocks adenosine."), _file("photo.png", "not text"), _file(".hidden.txt", "x")],
        },
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200, response.content
    assert b"3 created, 0 updated, 0 unchanged" in response.content
    assert b"2 files of the folder passed over" in response.content
    assert response["Vary"] == "HX-Request" or "HX-Request" in response["Vary"]
    assert sorted(Document.objects.values_list("title", flat=True)) == ["Notes", "Sleep", "vitamins"]
    job = EmbeddingJob.objects.get()
    assert job.total_chunks == Chunk.objects.count() == 3
    # the progress comes along, out of band, and polls while the job is unfinished
    assert b'id="progress" hx-swap-oob="true"' in response.content and b'hx-get="/kbs/test-kb/progress/"' in response.content
    assert b"0/3 chunks" in response.content


def test_an_upload_with_one_bad_file_writes_nothing(admin_client, knowledge_base):
    response = admin_client.post(
        "/kbs/test-kb/documents/upload/",
        {"files": [_file("good.txt", "Fine text."), _file("table.xlsx", "binary")]},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 422
    assert b"Nothing was uploaded: table.xlsx: unsupported file type" in response.content.replace(b"&#x27;", b"'")
    assert not Document.objects.exists() and not EmbeddingJob.objects.exists()

    empty = admin_client.post("/kbs/test-kb/documents/upload/", {}, HTTP_HX_REQUEST="true")
    assert empty.status_code == 422 and b"Choose files or a folder to upload." in empty.content
    only_images = admin_client.post("/kbs/test-kb/documents/upload/", {"folder": [_file("a.png", "x")]}, HTTP_HX_REQUEST="true")
    assert only_images.status_code == 422 and b"The folder has no supported files" in only_images.content


def test_the_progress_fragment_shows_an_eta_while_a_job_runs(admin_client, knowledge_base):
    from datetime import timedelta

    from django.utils import timezone

    EmbeddingJob.objects.create(
        space=knowledge_base.live_space, status="running", total_chunks=100, embedded_chunks=25,
        started_at=timezone.now() - timedelta(seconds=60),
    )  # fmt: skip
    response = admin_client.get("/kbs/test-kb/progress/")
    # 25 chunks a minute, 75 to go: about 3 minutes
    assert b"25% \xc2\xb7 25/100 chunks \xc2\xb7 <span class=\"eta\">about 3 min left</span>" in response.content


def test_curators_may_not_upload(curator_client, knowledge_base):
    response = curator_client.post("/kbs/test-kb/documents/upload/", {"files": [_file("a.txt", "text")]})
    assert response.status_code == 403
    assert not Document.objects.exists()
    assert b'id="upload-panel"' not in curator_client.get("/kbs/test-kb/").content


# --- delete ---------------------------------------------------------------------------------


def test_an_admin_deletes_a_document_with_its_chunks_and_vectors_after_confirming(admin_client, embedded_knowledge_base):
    document = Document.objects.get(external_id="d-statins")
    chunks = list(document.chunks.values_list("pk", flat=True))
    assert chunks and ChunkEmbedding.objects.filter(chunk_id__in=chunks).count() == len(chunks)
    others = ChunkEmbedding.objects.exclude(chunk_id__in=chunks).count()

    confirmation = admin_client.get(f"/kbs/test-kb/documents/{document.pk}/delete/")
    assert confirmation.status_code == 200
    assert f"its {len(chunks)} chunks and their {len(chunks)} vectors".encode() in confirmation.content
    assert Document.objects.filter(pk=document.pk).exists()  # looking is not deleting

    response = admin_client.post(f"/kbs/test-kb/documents/{document.pk}/delete/", follow=True)
    assert response.redirect_chain == [("/kbs/test-kb/", 302)]
    assert f"d-statins was deleted with its {len(chunks)} chunks and {len(chunks)} vectors".encode() in response.content
    assert not Document.objects.filter(pk=document.pk).exists()
    assert not Chunk.objects.filter(pk__in=chunks).exists()
    assert ChunkEmbedding.objects.count() == others
    event = AuditEvent.objects.get(action="document.delete")
    assert (event.actor, event.before["external_id"], event.before["chunks"]) == ("root", "d-statins", len(chunks))
    assert admin_client.post(f"/kbs/test-kb/documents/{document.pk}/delete/").status_code == 404


def test_curators_may_not_delete_documents(curator_client, embedded_knowledge_base):
    document = Document.objects.get(external_id="d-statins")
    assert curator_client.get(f"/kbs/test-kb/documents/{document.pk}/delete/").status_code == 403
    assert curator_client.post(f"/kbs/test-kb/documents/{document.pk}/delete/").status_code == 403
    assert Document.objects.filter(pk=document.pk).exists()
    assert b"Delete" not in curator_client.get(f"/kbs/test-kb/documents/{document.pk}/").content
