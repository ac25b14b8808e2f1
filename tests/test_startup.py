"""Processes that load no model must not pay for importing the model stack.

torch, sentence-transformers and transformers take seconds to import (tens of seconds on a
busy box); a command such as `kb_list`, the web process and the worker should start in about
a second and import them only when a model is first used. The imports run in a fresh
interpreter because this test process has long since imported torch.
"""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_STACK = ("torch", "sentence_transformers", "transformers", "peft")

IMPORT_EVERYTHING_A_PROCESS_STARTS_WITH = """
import importlib, os, pkgutil, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
import django
django.setup()
modules = ["config.urls", "config.celery", "config.wsgi"]
for app in ("knowledge", "curation", "training"):
    modules.append(app + ".tasks")
    commands = importlib.import_module(app + ".management.commands")
    modules += [app + ".management.commands." + m.name for m in pkgutil.iter_modules(commands.__path__)]
for name in modules:
    importlib.import_module(name)
print(" ".join(sorted(m for m in {MODEL_STACK!r} if m in sys.modules)) or "-")
"""


def test_commands_web_and_worker_modules_do_not_import_the_model_stack():
    script = IMPORT_EVERYTHING_A_PROCESS_STARTS_WITH.replace("{MODEL_STACK!r}", repr(MODEL_STACK))
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "-", f"imported at start-up: {result.stdout.strip()}"


def test_the_model_stack_is_still_loaded_where_a_model_is_used():
    # The lazy import moved torch into Embedder.__init__: loading an encoder must still work.
    from rag.embedding import base_retriever_path, load_embedder

    embedder = load_embedder(base_retriever_path())
    assert embedder.encode_queries(["a question"]).shape == (1, embedder.dimensions)
