"""Checksummed artifact folders: a MANIFEST.json of every file's size and sha256.

A model version's folder is written once by a trainer and then only read; the manifest
lets the registry prove, before serving or promoting it, that nothing changed on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = "ragloop-artifact-manifest/1"


class ArtifactIntegrityError(RuntimeError):
    """An artifact folder does not match its manifest (or has none)."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in blocks so multi-gigabyte weights need no memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _artifact_files(folder: Path) -> dict[str, Path]:
    files = {}
    for path in folder.rglob("*"):
        if path.is_file():
            relative = path.relative_to(folder).as_posix()
            if relative != MANIFEST_NAME:
                files[relative] = path
    return dict(sorted(files.items()))


def write_manifest(folder: str | Path) -> dict[str, Any]:
    """Record the size and sha256 of every file under `folder` in folder/MANIFEST.json.

    Call it last, once the folder is complete. The manifest is written to a temporary
    name and renamed, so a crash never leaves a half-written manifest that looks valid.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"artifact folder not found: {folder}")
    manifest = {
        "format": MANIFEST_FORMAT,
        "algorithm": "sha256",
        "files": {
            relative: {"size": path.stat().st_size, "sha256": file_sha256(path)}
            for relative, path in _artifact_files(folder).items()
        },
    }
    temporary = folder / f".{MANIFEST_NAME}.tmp"
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, folder / MANIFEST_NAME)
    return manifest


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """One sha256 for a whole artifact: the digest of its manifest's canonical JSON. A model
    version records it, and the artifact store names its cached copies by it."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of an artifact folder, checked for shape but not against the files."""
    manifest_path = Path(folder) / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ArtifactIntegrityError(f"artifact folder {folder} has no {MANIFEST_NAME}")
    return parse_manifest(manifest_path.read_bytes(), source=str(manifest_path))


def parse_manifest(content: bytes, *, source: str) -> dict[str, Any]:
    """A manifest from its bytes (a file, or an object downloaded from a store), checked for shape;
    every file name must be a plain relative path, so a manifest cannot point outside its folder."""
    try:
        manifest = json.loads(content.decode("utf-8"))
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError("unknown manifest format")
        for entry in files.values():
            if not isinstance(entry["size"], int) or not isinstance(entry["sha256"], str):
                raise ValueError("bad file entry")
        for name in files:
            parts = PurePosixPath(name).parts
            if not parts or name.startswith("/") or ".." in parts or "\\" in name or name == MANIFEST_NAME:
                raise ValueError(f"bad file name {name!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ArtifactIntegrityError(f"{source} is not a valid manifest: {error}") from None
    return manifest


def verify_manifest(folder: str | Path) -> None:
    """Raise ArtifactIntegrityError naming every file that is missing, extra or changed."""
    folder = Path(folder)
    recorded = read_manifest(folder)["files"]
    present = _artifact_files(folder)
    problems = [f"missing: {name}" for name in sorted(set(recorded) - set(present))]
    problems += [f"not in manifest: {name}" for name in sorted(set(present) - set(recorded))]
    for name in sorted(set(recorded) & set(present)):
        path, expected = present[name], recorded[name]
        # The size check is free and catches truncated copies before hashing gigabytes.
        if path.stat().st_size != expected["size"] or file_sha256(path) != expected["sha256"]:
            problems.append(f"changed: {name}")
    if problems:
        raise ArtifactIntegrityError(f"artifact folder {folder} does not match its manifest: " + "; ".join(problems))
