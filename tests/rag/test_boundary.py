"""The rag package must stay free of Django so it can run and be tested without a database."""

import json
import os
import subprocess
import sys
from pathlib import Path

import rag

RAG_DIR = Path(rag.__file__).parent
REPO_ROOT = RAG_DIR.parent

IMPORT_EVERYTHING = """
import json, pkgutil, importlib, sys
import rag
modules = [info.name for info in pkgutil.walk_packages(rag.__path__, prefix="rag.")]
for name in modules:
    importlib.import_module(name)
print(json.dumps({"modules": modules, "django": sorted(m for m in sys.modules if m.split(".")[0] == "django")}))
"""


def test_importing_every_rag_module_never_imports_django():
    # A fresh interpreter: this pytest process may already have Django loaded by pytest-django.
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    completed = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert {"rag.documents", "rag.chunking", "rag.embedding", "rag.generation"} <= set(report["modules"])
    assert report["django"] == []


def test_no_rag_source_mentions_a_django_import():
    # Catches imports hidden inside functions, which the import test above cannot see.
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in RAG_DIR.rglob("*.py")
        if any(
            line.strip().startswith(("import django", "from django"))
            for line in path.read_text(encoding="utf-8").splitlines()
        )
    ]

    assert offenders == []


def test_every_rag_module_has_a_docstring():
    missing = [
        str(path.relative_to(REPO_ROOT))
        for path in RAG_DIR.rglob("*.py")
        if not path.read_text(encoding="utf-8").lstrip().startswith('"""')
    ]

    assert missing == []
