"""Model versions: registering a trained version with its checksummed artifact, and promoting
or rolling back the live version of a component atomically, with an append-only audit log.

Serving never reads these rows: in the same locked transaction that changes which version is
live, promotion and rollback write the live pointers onto the knowledge base (live space, version
names, query encoder, generator backend, model and adapter, reranker folder), which is all that
knowledge.selectors.retriever_for, reranker_for and knowledge.services.turns.generator_for read. So a promotion
takes effect on the next request. Registering a query-only retriever version also records its
query encoder (knowledge.models.QueryEncoder), so it can serve by name before it is live.

A retriever version that stops serving (retired by a promotion or rollback, or rejected by a
policy's gate) has its embedding space retired unless a live version or a candidate still reads
it (knowledge.services.embedding_spaces): new documents are no longer embedded into it and,
after a grace period, its vectors are dropped. Going live again restores a space whose vectors
are still there; one whose vectors were dropped must be re-embedded first.
"""

from pathlib import Path

from django.db import IntegrityError, transaction

from knowledge.artifact_store import ArtifactUnavailable, artifact_publish, artifact_verify
from knowledge.errors import Conflict, InvalidInput
from knowledge.models import EmbeddingSpace, KnowledgeBase, QueryEncoder
from knowledge.services.audit import audit_record
from knowledge.services.embedding_spaces import embedding_space_restore, embedding_space_retire
from knowledge.services.embeddings import embedding_space_index_build_ensure, embedding_space_index_missing
from knowledge.services.knowledge_bases import BASE_RETRIEVER_VERSION
from rag.training.artifacts import manifest_checksum, write_manifest
from training.models import Component, ModelVersion, PromotionEvent, WebhookEndpoint
from training.services.notifications import notify
from training.services.queue_rescoring import turn_queue_rescore_soon


def model_version_next_name(*, knowledge_base: KnowledgeBase, component: str) -> str:
    count = ModelVersion.objects.filter(knowledge_base=knowledge_base, component=component).count()
    return f"{component}-v{count + 1}"


def model_version_register(*, knowledge_base: KnowledgeBase, component: str, artifact_folder: Path | None, **fields) -> ModelVersion:
    """Create a candidate version; its artifact folder gets a checksum manifest written last and
    is published to the artifact store (if one is configured) before the row exists, so a version
    never names an artifact that other machines cannot fetch."""
    checksum = ""
    relative = ""
    if artifact_folder is not None:
        checksum = manifest_checksum(write_manifest(artifact_folder))
        relative = artifact_publish(folder=artifact_folder)
    name = fields.pop("name", None) or model_version_next_name(knowledge_base=knowledge_base, component=component)
    try:
        with transaction.atomic():
            version = ModelVersion.objects.create(
                knowledge_base=knowledge_base,
                component=component,
                name=name,
                artifact_path=relative,
                artifact_checksum=checksum,
                **fields,
            )
            _query_encoder_record(version)
    except IntegrityError:
        raise Conflict(f"A model version named {name!r} already exists in {knowledge_base.slug!r}.") from None
    return version


def _query_encoder_record(version: ModelVersion) -> None:
    """A retriever version with a query encoder of its own over another version's space."""
    space = version.embedding_space
    if version.component != Component.RETRIEVER or space is None or not version.query_model_reference:
        return
    if version.query_model_reference != space.model_reference:
        QueryEncoder.objects.create(
            knowledge_base_id=version.knowledge_base_id,
            retriever_version=version.name,
            space=space,
            model_reference=version.query_model_reference,
        )


def _live_pointers_write(*, knowledge_base_id: int, component: str, version: ModelVersion | None) -> None:
    """Point serving at `version` (None: the base retriever, or the configured generator)."""
    if component == Component.RETRIEVER:
        if version is None:
            base_space = EmbeddingSpace.objects.filter(
                knowledge_base_id=knowledge_base_id, retriever_version=BASE_RETRIEVER_VERSION
            ).first()
            pointers = {"live_space": base_space, "live_retriever_version": "", "live_query_model_reference": ""}
        else:
            pointers = {
                "live_space": version.embedding_space,
                "live_retriever_version": version.name,
                "live_query_model_reference": version.query_model_reference,
            }
    elif component == Component.RERANKER:
        # None: no reranker, the first stage's order serves again.
        pointers = {
            "live_reranker_version": version.name if version else "",
            "live_reranker_path": version.artifact_path if version else "",
        }
    else:
        pointers = {
            "live_generator_version": version.name if version else "",
            "live_generator_backend": version.generator_backend if version else "",
            "live_generator_model": version.generator_model if version else "",
            "live_generator_adapter_path": version.generator_adapter_path if version else "",
        }
    KnowledgeBase.objects.filter(pk=knowledge_base_id).update(**pointers)


def model_version_verify(*, version: ModelVersion) -> None:
    """Refuse to load an artifact whose manifest is missing, is not the one registered, or whose
    files changed (in the artifacts folder, or in this machine's copy from the artifact store)."""
    if not version.artifact_path:
        return
    try:
        artifact_verify(path=version.artifact_path, checksum=version.artifact_checksum)
    except ArtifactUnavailable as error:
        raise InvalidInput(f"Model version {version.name!r} cannot be loaded: {error}") from error


def _serving_ready(version: ModelVersion) -> None:
    if version.status == ModelVersion.Status.FAILED:
        raise Conflict(f"Model version {version.name!r} failed and cannot go live.")
    if version.component == Component.RERANKER and not version.artifact_path:
        raise Conflict(f"Reranker version {version.name!r} has no model folder to serve from.")
    if version.component == Component.RETRIEVER:
        space = version.embedding_space
        if space is not None and space.status == EmbeddingSpace.Status.RETIRED:
            _space_restore_for_serving(version, space)
            space.refresh_from_db()
        if space is None or space.status != EmbeddingSpace.Status.READY:
            raise Conflict(
                f"Model version {version.name!r} cannot go live until its chunks are embedded (space is "
                f"{space.status if space else 'missing'})."
            )
        if embedding_space_index_missing(space):
            # Past RAGLOOP_EXACT_SEARCH_MAX_CHUNKS retrieval without the index scans every vector.
            queued = embedding_space_index_build_ensure(space=space)
            raise Conflict(
                f"Model version {version.name!r} cannot go live yet: the HNSW index of its embedding space "
                f"{space.retriever_version!r} is still being built"
                f"{' (its build was started now)' if queued else ''}; try again once it is built."
            )
    model_version_verify(version=version)


def _space_restore_for_serving(version: ModelVersion, space: EmbeddingSpace) -> None:
    """A retired space can serve again while it keeps its vectors (chunks ingested since it was
    retired are embedded, as after any ingest); once they are dropped it needs a re-embedding."""
    if space.vectors_dropped_at is not None:
        raise Conflict(
            f"Model version {version.name!r} cannot go live: its embedding space {space.retriever_version!r} was "
            f"retired on {space.retired_at:%Y-%m-%d} and its vectors were dropped on "
            f"{space.vectors_dropped_at:%Y-%m-%d}. Re-embed the corpus into it with `manage.py "
            f"embedding_space_restore {version.knowledge_base.slug} {space.retriever_version}`, then try "
            "again once the space is ready."
        )
    embedding_space_restore(space=space)


def _space_retire_if_unused(version: ModelVersion | None) -> None:
    """Retire the space of a retriever version that stopped serving, unless a live version or a
    candidate still reads it (a query-only version reads its parent's space). The knowledge side
    itself keeps the base space and the knowledge base's live space."""
    if version is None or version.component != Component.RETRIEVER or version.embedding_space_id is None:
        return
    still_read = ModelVersion.objects.filter(
        embedding_space_id=version.embedding_space_id,
        status__in=[ModelVersion.Status.LIVE, ModelVersion.Status.CANDIDATE],
    ).exists()
    if not still_read:
        embedding_space_retire(space=EmbeddingSpace.objects.get(pk=version.embedding_space_id))


def model_version_reject(*, version: ModelVersion, reason: str) -> ModelVersion:
    """Mark a candidate refused by a retraining policy's gate; it will never go live, so its
    own embedding space is retired. Rejecting a rejected version again changes nothing."""
    if not reason.strip():
        raise InvalidInput("Say why the version is rejected.")
    with transaction.atomic():
        KnowledgeBase.objects.select_for_update().get(pk=version.knowledge_base_id)  # not during a promotion
        version = ModelVersion.objects.get(pk=version.pk)
        if version.status == ModelVersion.Status.REJECTED:
            return version  # a gate decision delivered twice
        if version.status != ModelVersion.Status.CANDIDATE:
            raise Conflict(f"Model version {version.name!r} is {version.status}; only a candidate can be rejected.")
        version.status = ModelVersion.Status.REJECTED
        version.status_reason = reason.strip()
        version.save(update_fields=["status", "status_reason"])
        _space_retire_if_unused(version)
    return version


def model_version_promote(
    *, version: ModelVersion, actor=None, reason: str = "", automatic: bool = False, actor_name: str = ""
) -> PromotionEvent:
    """Make `version` live and retire the previous live version, in one transaction.

    `actor_name` says who acted when no person did ("policy nightly-retriever")."""
    with transaction.atomic():
        knowledge_base = KnowledgeBase.objects.select_for_update().get(pk=version.knowledge_base_id)  # one promotion at a time
        version = ModelVersion.objects.select_related("embedding_space").get(pk=version.pk)
        if version.status == ModelVersion.Status.LIVE:
            raise Conflict(f"Model version {version.name!r} is already live.")
        _serving_ready(version)
        previous = ModelVersion.objects.filter(
            knowledge_base_id=version.knowledge_base_id, component=version.component, status=ModelVersion.Status.LIVE
        ).first()
        if previous is not None:
            ModelVersion.objects.filter(pk=previous.pk).update(status=ModelVersion.Status.RETIRED)
        ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.LIVE)
        _live_pointers_write(knowledge_base_id=version.knowledge_base_id, component=version.component, version=version)
        _space_retire_if_unused(previous)
        promotion = PromotionEvent.objects.create(
            knowledge_base_id=version.knowledge_base_id,
            component=version.component,
            action=PromotionEvent.Action.AUTO_PROMOTE if automatic else PromotionEvent.Action.PROMOTE,
            from_version=previous,
            to_version=version,
            actor=actor,
            actor_name=actor_name or (actor.get_username() if actor else ""),
            reason=reason,
        )
        audit_record(
            action="model_version.promote", object_type="model_version", object_id=version.pk,
            knowledge_base=knowledge_base, actor=actor, actor_name=actor_name,
            before={"live": previous.name if previous else None},
            after={"live": version.name, "component": version.component, "automatic": automatic, "reason": reason},
        )  # fmt: skip
        notify(knowledge_base=knowledge_base, event=WebhookEndpoint.Event.VERSION_PROMOTED, payload={
            "component": version.component,
            "version": version.name,
            "previous": previous.name if previous else None,
            "actor": _actor_name(actor) or actor_name or None,
            "automatic": automatic,
            "reason": reason,
        })
        if version.component == Component.RETRIEVER:
            # A new live retriever ranks the open turns differently: place them again.
            turn_queue_rescore_soon(knowledge_base_id=version.knowledge_base_id)
        return promotion


def rollback_target(*, knowledge_base: KnowledgeBase, component: str, current: ModelVersion) -> ModelVersion | None:
    """The version a rollback of `current` puts back: what was live before `current` was
    *promoted* (not before a rollback put it back), so rolling back twice walks down the
    promotion history instead of flip-flopping; None: the base model."""
    went_live = (
        PromotionEvent.objects.filter(knowledge_base=knowledge_base, component=component, to_version=current)
        .exclude(action=PromotionEvent.Action.ROLLBACK)
        .order_by("-created_at", "-pk")
        .first()
    )
    return went_live.from_version if went_live else None


def model_version_rollback(
    *, knowledge_base: KnowledgeBase, component: str, actor=None, reason: str = "", actor_name: str = ""
) -> PromotionEvent:
    """Put back the version that was live before the current one (or the base model).

    `actor_name` says who acted when no person did ("cli:alice")."""
    if component not in Component.values:
        raise InvalidInput(f"Component must be one of {', '.join(Component.values)}.")
    with transaction.atomic():
        KnowledgeBase.objects.select_for_update().get(pk=knowledge_base.pk)
        current = ModelVersion.objects.filter(
            knowledge_base=knowledge_base, component=component, status=ModelVersion.Status.LIVE
        ).first()
        if current is None:
            raise Conflict(f"No {component} version is live in {knowledge_base.slug!r}: it already serves the base model.")
        previous = rollback_target(knowledge_base=knowledge_base, component=component, current=current)
        if previous is not None:
            _serving_ready(previous)
        ModelVersion.objects.filter(pk=current.pk).update(status=ModelVersion.Status.RETIRED)
        if previous is not None:
            ModelVersion.objects.filter(pk=previous.pk).update(status=ModelVersion.Status.LIVE)
        _live_pointers_write(knowledge_base_id=knowledge_base.pk, component=component, version=previous)
        _space_retire_if_unused(current)
        rollback = PromotionEvent.objects.create(
            knowledge_base=knowledge_base,
            component=component,
            action=PromotionEvent.Action.ROLLBACK,
            from_version=current,
            to_version=previous,
            actor=actor,
            actor_name=actor_name or (actor.get_username() if actor else ""),
            reason=reason,
        )
        audit_record(
            action="model_version.rollback", object_type="model_version", object_id=current.pk,
            knowledge_base=knowledge_base, actor=actor, before={"live": current.name},
            after={"live": previous.name if previous else None, "component": component, "reason": reason},
        )  # fmt: skip
        notify(knowledge_base=knowledge_base, event=WebhookEndpoint.Event.VERSION_ROLLED_BACK, payload={
            "component": component,
            "version": current.name,
            "restored": previous.name if previous else None,
            "actor": _actor_name(actor) or actor_name or None,
            "reason": reason,
        })
        if component == Component.RETRIEVER:
            turn_queue_rescore_soon(knowledge_base_id=knowledge_base.pk)
        return rollback


def _actor_name(actor) -> str | None:
    return actor.get_username() if actor is not None and actor.is_authenticated else None
