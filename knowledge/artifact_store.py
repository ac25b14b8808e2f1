"""Where model artifacts live, for every machine: the local artifacts folder (the default, one
machine), or an S3-compatible bucket (RAGLOOP_ARTIFACT_STORE=s3://bucket/prefix) that the
training worker uploads to and web and embedding workers elsewhere download from.

An artifact is a folder written once by a trainer, with a checksum manifest
(rag.training.artifacts) written last; model references (`kb/retriever/7/query_encoder`) and
adapter paths name it or a folder inside it, relative to the artifacts folder. Training writes
under `artifacts_root()` on its own machine and `artifact_publish` uploads the folder, manifest
last, so an object set without a manifest is never loaded. `artifact_local_path` turns a
reference into a folder to load: in the artifacts folder itself without a store; with one, a
copy in the local cache named by the artifact's checksum (the sha256 of its manifest, as
ModelVersion.artifact_checksum), downloaded once per machine and checked against the manifest,
so a partial or tampered download is refused and fetched again, and then refused for good with
the names of the files that differ.

The bucket is reached through fsspec and s3fs (fsspec is already here through datasets and
huggingface_hub, and the same calls would reach another fsspec filesystem); credentials are the
standard AWS variables, read by botocore, never settings. This lives in `knowledge/` because
serving loads artifacts and training imports knowledge, never the reverse.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path, PurePosixPath

from django.conf import settings

from knowledge.errors import ServiceError
from rag.training.artifacts import (
    MANIFEST_NAME,
    ArtifactIntegrityError,
    manifest_checksum,
    parse_manifest,
    read_manifest,
    verify_manifest,
)


class ArtifactUnavailable(ServiceError):
    """A model artifact cannot be loaded: the store cannot be reached, does not hold it, or what
    it holds does not match the artifact's checksum manifest. Serving answers 503: the request
    was fine, the platform's copy of a model is not."""

    status_code = 503


# (store, cache folder, reference) -> local folder, for references already fetched and checked by this
# process: artifacts never change once published, so a request costs no round trip.
_resolved: dict[tuple[str, str, str], Path] = {}
_resolving = threading.Lock()


def artifacts_root() -> Path:
    """The folder training writes artifacts into (and, without a store, serving reads from)."""
    return Path(settings.RAGLOOP_ARTIFACTS_DIR)


def artifact_cache_root() -> Path:
    """Where a machine keeps the artifacts it downloaded from the store, one folder per checksum."""
    configured = settings.RAGLOOP_ARTIFACT_CACHE_DIR
    return Path(configured) if configured else artifacts_root() / ".store-cache"


def artifact_store_url() -> str:
    """The configured store (`s3://bucket/prefix`), or "" for the local folder alone."""
    return settings.RAGLOOP_ARTIFACT_STORE.rstrip("/")


def artifact_relative_path(*, path: str | Path) -> str:
    """A folder under the artifacts folder as references name it: relative to it."""
    try:
        return Path(path).resolve().relative_to(artifacts_root().resolve()).as_posix()
    except ValueError:
        raise ArtifactUnavailable(f"{path} is not inside the artifacts folder {artifacts_root()}.") from None


def _checked_reference(reference: str) -> PurePosixPath:
    relative = PurePosixPath(reference)
    if not reference or not relative.parts or ".." in relative.parts or relative.is_absolute():
        raise ArtifactUnavailable(f"{reference!r} is not an artifact path relative to the artifacts folder.")
    return relative


class _Store:
    """The bucket: fsspec's filesystem and the key prefix that artifact paths hang under."""

    def __init__(self, url: str):
        import fsspec

        options = {}
        if settings.RAGLOOP_ARTIFACT_STORE_ENDPOINT_URL:
            options["client_kwargs"] = {"endpoint_url": settings.RAGLOOP_ARTIFACT_STORE_ENDPOINT_URL}
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url, **options)
        self.root = root.rstrip("/")

    def key(self, relative: PurePosixPath | str, name: str = "") -> str:
        key = f"{self.root}/{relative}"
        return f"{key}/{name}" if name else key

    def read(self, key: str) -> bytes | None:
        """An object's bytes, or None when there is none."""
        try:
            return self.fs.cat_file(key)
        except FileNotFoundError:
            return None


def _store_errors() -> tuple[type[Exception], ...]:
    """What a failed request raises: s3fs turns S3's answers into OSError subclasses, while
    botocore's own failures (no connection, no credentials) arrive as BotoCoreError."""
    from botocore.exceptions import BotoCoreError

    return (OSError, BotoCoreError)


def _store() -> _Store | None:
    url = artifact_store_url()
    return _Store(url) if url else None


def _unreachable(store: _Store, action: str, error: Exception) -> ArtifactUnavailable:
    return ArtifactUnavailable(f"The artifact store {store.url} could not {action}: {type(error).__name__}: {error}")


def artifact_publish(*, folder: str | Path) -> str:
    """Make an artifact folder whose manifest is written loadable from every machine; returns its
    path relative to the artifacts folder. Without a store, the folder is already where serving
    reads. With one, every file is uploaded, then the manifest; publishing the same folder again
    (a retried registration) uploads nothing, and a different artifact already published under
    the same path is never overwritten."""
    folder = Path(folder)
    relative = artifact_relative_path(path=folder)
    store = _store()
    if store is None:
        return relative
    manifest = read_manifest(folder)
    try:
        published = store.read(store.key(relative, MANIFEST_NAME))
        if published is not None:
            if manifest_checksum(parse_manifest(published, source=store.key(relative, MANIFEST_NAME))) == manifest_checksum(manifest):
                return relative
            raise ArtifactUnavailable(
                f"The artifact store {store.url} already holds a different artifact at {relative}; it is never "
                "overwritten (is another installation writing to the same bucket and prefix?)."
            )
        for name in manifest["files"]:
            store.fs.put_file(str(folder / name), store.key(relative, name))
        # Last: an upload cut short leaves no manifest, and an artifact without one is never loaded.
        store.fs.put_file(str(folder / MANIFEST_NAME), store.key(relative, MANIFEST_NAME))
    except ArtifactIntegrityError as error:
        raise ArtifactUnavailable(str(error)) from error
    except (*_store_errors(), ValueError) as error:
        raise _unreachable(store, f"take {relative}", error) from error
    return relative


def artifact_discard(*, folder: str | Path) -> None:
    """Remove a folder that no model version refers to (a failed or cancelled run's) from the
    artifacts folder and from the store. Anything outside the artifacts folder is left alone."""
    folder = Path(folder)
    if not folder.resolve().is_relative_to(artifacts_root().resolve()) or folder.resolve() == artifacts_root().resolve():
        return
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
    store = _store()
    if store is None:
        return
    relative = artifact_relative_path(path=folder)
    try:
        # The manifest first, so what might be left is an artifact that is never loaded.
        if store.fs.exists(store.key(relative, MANIFEST_NAME)):
            store.fs.rm_file(store.key(relative, MANIFEST_NAME))
        if store.fs.exists(store.key(relative)):
            store.fs.rm(store.key(relative), recursive=True)
    except _store_errors():
        pass  # an orphan without a manifest is never loaded; nothing refers to it


def artifact_local_path(*, reference: str) -> Path:
    """The local folder of an artifact, or of a folder inside one, to load a model from.

    An absolute path (versions registered before relative adapter paths) is used as it is.
    Without a store: the folder under the artifacts folder. With one: the machine's cached copy,
    downloaded and checked against its manifest the first time this process needs it."""
    if Path(reference).is_absolute():
        return Path(reference)
    relative = _checked_reference(reference)
    url = artifact_store_url()
    if not url:
        return artifacts_root() / relative
    with _resolving:
        key = (url, str(artifact_cache_root()), str(relative))
        if key not in _resolved:
            store = _Store(url)
            root, manifest_bytes = _manifest_find(store, relative)
            cached = _cached_copy(store, root, manifest_bytes)
            _resolved[key] = cached / relative.relative_to(root)
        return _resolved[key]


def artifact_verify(*, path: str, checksum: str = "") -> None:
    """Check an artifact against its manifest (and, given one, the checksum a model version
    recorded when it was registered) before it is promoted or evaluated."""
    relative = _checked_reference(path)
    store = _store()
    if store is None:
        folder = artifacts_root() / relative
        try:
            verify_manifest(folder)
            if checksum and manifest_checksum(read_manifest(folder)) != checksum:
                raise ArtifactIntegrityError(f"the manifest of {folder} is not the one registered (checksum {checksum[:12]}...)")
        except ArtifactIntegrityError as error:
            raise ArtifactUnavailable(str(error)) from error
        return
    manifest_bytes = _manifest_read(store, relative)
    if manifest_bytes is None:
        raise ArtifactUnavailable(f"The artifact store {store.url} holds no artifact at {relative} (no {MANIFEST_NAME}).")
    found = _manifest_checksum(store, relative, manifest_bytes)
    if checksum and found != checksum:
        raise ArtifactUnavailable(
            f"The manifest of {relative} in the artifact store {store.url} is not the one registered: its checksum is "
            f"{found[:12]}..., the version recorded {checksum[:12]}...."
        )
    folder = _cached_copy(store, relative, manifest_bytes)
    try:
        verify_manifest(folder)  # the cached copy, once more: this is the gate before serving
    except ArtifactIntegrityError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise ArtifactUnavailable(f"The cached copy of {relative} changed on this machine and was removed: {error}") from error


def artifact_cache_forget() -> None:
    """Forget which references this process already resolved (the files stay cached)."""
    with _resolving:
        _resolved.clear()


def _manifest_read(store: _Store, relative: PurePosixPath) -> bytes | None:
    try:
        return store.read(store.key(relative, MANIFEST_NAME))
    except _store_errors() as error:
        raise _unreachable(store, f"be read for {relative}", error) from error


def _manifest_checksum(store: _Store, relative: PurePosixPath, manifest_bytes: bytes) -> str:
    try:
        return manifest_checksum(parse_manifest(manifest_bytes, source=f"{store.key(relative, MANIFEST_NAME)}"))
    except ArtifactIntegrityError as error:
        raise ArtifactUnavailable(str(error)) from error


def _manifest_find(store: _Store, relative: PurePosixPath) -> tuple[PurePosixPath, bytes]:
    """The artifact holding `relative`: the nearest folder at or above it with a manifest."""
    for candidate in [relative, *relative.parents]:
        if candidate == PurePosixPath("."):
            break
        manifest_bytes = _manifest_read(store, candidate)
        if manifest_bytes is not None:
            return candidate, manifest_bytes
    raise ArtifactUnavailable(
        f"The artifact store {store.url} holds no artifact at {relative} or above it (no {MANIFEST_NAME}); "
        "was it trained on a machine without RAGLOOP_ARTIFACT_STORE set?"
    )


def _cached_copy(store: _Store, relative: PurePosixPath, manifest_bytes: bytes) -> Path:
    """The cached copy of the artifact at `relative` whose manifest is `manifest_bytes`: checked if
    it is there already (and fetched again if it no longer matches), else downloaded and checked."""
    checksum = _manifest_checksum(store, relative, manifest_bytes)
    manifest = parse_manifest(manifest_bytes, source=store.key(relative, MANIFEST_NAME))
    cache = artifact_cache_root()
    final = cache / checksum
    if final.is_dir():
        try:
            verify_manifest(final)
            return final
        except ArtifactIntegrityError:
            # Changed on this disk since (or left by an older copy): never served, fetched again.
            shutil.rmtree(final, ignore_errors=True)
    attempts = max(1, int(settings.RAGLOOP_ARTIFACT_FETCH_ATTEMPTS))
    problem = None
    for _ in range(attempts):
        partial = cache / f".partial-{checksum[:16]}-{uuid.uuid4().hex[:8]}"
        try:
            partial.mkdir(parents=True)
            for name in manifest["files"]:
                target = partial / name
                target.parent.mkdir(parents=True, exist_ok=True)
                store.fs.get_file(store.key(relative, name), str(target))
            (partial / MANIFEST_NAME).write_bytes(manifest_bytes)
            verify_manifest(partial)
        except FileNotFoundError as error:
            shutil.rmtree(partial, ignore_errors=True)
            problem = f"an object is missing from the store: {error}"
            continue
        except ArtifactIntegrityError as error:
            shutil.rmtree(partial, ignore_errors=True)
            problem = str(error).replace(str(partial), str(relative))
            continue
        except _store_errors() as error:
            shutil.rmtree(partial, ignore_errors=True)
            raise _unreachable(store, f"send {relative}", error) from error
        try:
            os.rename(partial, final)  # atomic: a folder named by a checksum is always complete
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)  # another process finished it first
            if not final.is_dir():
                raise
        return final
    raise ArtifactUnavailable(
        f"The artifact {relative} downloaded from {store.url} does not match its checksum manifest "
        f"({attempts} attempt{'s' if attempts != 1 else ''}), so it is refused: {problem}"
    )
