"""Admins' knowledge base pages: create a knowledge base, upload documents (files and whole
folders) and follow their embedding, delete a document. Each view checks the admin role, calls
the service the CLI calls (`kb_create`, `ingest`), and shows its message on refusal."""

from pathlib import PurePosixPath

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_http_methods, require_POST

from curation.views.access import admin_page, fragment
from curation.views.review import knowledge_base_admin_page
from knowledge.errors import InvalidInput, NotFound, ServiceError
from knowledge.models import ChunkEmbedding, Document, KnowledgeBase
from knowledge.selectors import embedding_jobs_recent
from knowledge.services.documents import document_delete, documents_ingest
from knowledge.services.knowledge_bases import (
    DEFAULT_CHUNK_MAX_TOKENS,
    DEFAULT_CHUNK_OVERLAP_TOKENS,
    knowledge_base_create,
)
from rag.documents import SUPPORTED_SUFFIXES, DocumentParseError, parse_upload

# What one browser upload may hold; the API and the CLI take bigger batches.
MAX_UPLOAD_FILES = 2000


def _text(post, name: str) -> str:
    return post.get(name, "").replace("\x00", "").strip()


def _whole_number(post, name: str, label: str, default: int) -> int:
    text = _text(post, name)
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"{label} must be a whole number of tokens, got {text!r}.") from None


def _create_form(post=None) -> dict:
    if post is None:
        return {
            "name": "", "slug": "", "description": "", "chunk_max_tokens": DEFAULT_CHUNK_MAX_TOKENS,
            "chunk_overlap_tokens": DEFAULT_CHUNK_OVERLAP_TOKENS, "generator_backend": KnowledgeBase.GeneratorBackend.EXTRACTIVE,
            "generator_model": "",
        }  # fmt: skip
    return {name: _text(post, name) for name in (
        "name", "slug", "description", "chunk_max_tokens", "chunk_overlap_tokens", "generator_backend", "generator_model",
    )}  # fmt: skip


@require_http_methods(["GET", "POST"])
@admin_page
def knowledge_base_create_view(request):
    """GET: the form; POST: `knowledge_base_create`, then the new knowledge base's page."""
    context = {"form": _create_form(), "backends": KnowledgeBase.GeneratorBackend.choices, "error": ""}
    if request.method == "POST":
        form = _create_form(request.POST)
        try:
            knowledge_base = knowledge_base_create(
                slug=form["slug"],
                name=form["name"],
                description=form["description"],
                generator_backend=form["generator_backend"],
                generator_model=form["generator_model"],
                chunk_max_tokens=_whole_number(request.POST, "chunk_max_tokens", "Chunk size", DEFAULT_CHUNK_MAX_TOKENS),
                chunk_overlap_tokens=_whole_number(
                    request.POST, "chunk_overlap_tokens", "Chunk overlap", DEFAULT_CHUNK_OVERLAP_TOKENS
                ),
            )
        except ServiceError as error:
            context.update(form=form, error=str(error))
            return render(request, "curation/kb_create.html", context, status=error.status_code)
        messages.success(request, f"Knowledge base {knowledge_base.slug} was created; upload its documents below.")
        return redirect("kb_detail", slug=knowledge_base.slug)
    return render(request, "curation/kb_create.html", context)


def _supported(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return PurePosixPath(name).suffix.lower() in SUPPORTED_SUFFIXES and not any(part.startswith(".") for part in parts)


def _upload_panel(request, knowledge_base, *, error: str = "", result=None, skipped: int = 0, status: int = 200):
    context = {
        "kb": knowledge_base, "jobs": embedding_jobs_recent(knowledge_base=knowledge_base), "upload_error": error,
        "result": result, "skipped": skipped, "supported": ", ".join(SUPPORTED_SUFFIXES),
    }  # fmt: skip
    return fragment(render(request, "curation/_upload.html", context, status=status))


@require_POST
@knowledge_base_admin_page
def documents_upload_view(request, knowledge_base: KnowledgeBase):
    """Files (`files`, each must be a supported format) and folders (`folder`: unsupported and
    hidden files are passed over, as `manage.py ingest FOLDER` does) in one all-or-nothing ingest."""
    files = request.FILES.getlist("files")
    folder = request.FILES.getlist("folder")
    skipped = sum(not _supported(upload.name) for upload in folder)
    chosen = files + [upload for upload in folder if _supported(upload.name)]
    try:
        if not files and not folder:
            raise InvalidInput("Choose files or a folder to upload.")
        if not chosen:
            raise InvalidInput(f"The folder has no supported files ({', '.join(SUPPORTED_SUFFIXES)}).")
        if len(chosen) > MAX_UPLOAD_FILES:
            raise InvalidInput(f"{len(chosen)} files in one upload; the limit is {MAX_UPLOAD_FILES}: upload the folder in parts.")
        documents = []
        for upload in chosen:
            try:
                documents.extend(parse_upload(filename=upload.name, data=upload.read()))
            except DocumentParseError as error:
                raise InvalidInput(f"Nothing was uploaded: {error}") from error
        result = documents_ingest(knowledge_base=knowledge_base, documents=documents)
    except ServiceError as error:
        return _upload_panel(request, knowledge_base, error=str(error), skipped=skipped, status=error.status_code)
    if request.headers.get("HX-Request") != "true":
        messages.success(request, f"{result.created} documents created, {result.updated} updated, {result.unchanged} unchanged.")
        return redirect("kb_detail", slug=knowledge_base.slug)
    return _upload_panel(request, knowledge_base, result=result, skipped=skipped)


def _document_or_404(knowledge_base, document_id: int) -> Document:
    document = Document.objects.filter(pk=document_id, knowledge_base=knowledge_base).first()
    if document is None:
        raise Http404("No such document.")
    return document


@require_http_methods(["GET", "POST"])
@knowledge_base_admin_page
def document_delete_view(request, knowledge_base: KnowledgeBase, document_id: int):
    """GET: the confirmation (what goes with the document); POST: `document_delete`."""
    document = _document_or_404(knowledge_base, document_id)
    if request.method == "POST":
        try:
            deleted = document_delete(document=document, actor=request.user)
        except NotFound:
            raise Http404("No such document.") from None
        messages.success(
            request, f"{deleted.external_id} was deleted with its {deleted.chunks} chunks and {deleted.vectors} vectors."
        )
        return redirect("kb_detail", slug=knowledge_base.slug)
    context = {
        "kb": knowledge_base, "document": document, "chunk_count": document.chunks.count(),
        "vector_count": ChunkEmbedding.objects.filter(chunk__document=document).count(),
    }  # fmt: skip
    return render(request, "curation/document_delete.html", context)


urlpatterns = [
    path("knowledge-bases/new/", knowledge_base_create_view, name="kb_create"),
    path("kbs/<slug:slug>/documents/upload/", documents_upload_view, name="kb_documents_upload"),
    path("kbs/<slug:slug>/documents/<int:document_id>/delete/", document_delete_view, name="document_delete"),
]
