"""Upgrading a database whose snapshots were made before conversations: their examples read as
turns on their own and export exactly as they did."""

import json

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE_CONVERSATIONS = [("training", "0008_version_status_reason_run_remote_state")]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor


@pytest.mark.django_db(transaction=True)
def test_a_snapshot_made_before_conversations_still_exports_as_single_turns():
    executor = _migrate(BEFORE_CONVERSATIONS)
    apps = executor.loader.project_state(BEFORE_CONVERSATIONS).apps
    KnowledgeBase = apps.get_model("knowledge", "KnowledgeBase")
    DatasetSnapshot = apps.get_model("training", "DatasetSnapshot")
    SnapshotExample = apps.get_model("training", "SnapshotExample")
    kb = KnowledgeBase.objects.create(slug="old-kb", name="Old KB", generator_backend="extractive")
    old = DatasetSnapshot.objects.create(knowledge_base=kb, example_count=1, train_count=1)
    text = "Statins inhibit HMG-CoA reductase."
    SnapshotExample.objects.create(
        snapshot=old, example_id="turn-1", split="train", query="Which enzyme do statins inhibit?",
        gold_answer="HMG-CoA reductase.", relevant=[{"text": text, "document_id": "d1", "chunk_id": None, "title": ""}],
    )  # fmt: skip

    _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    from rag.generation import SYSTEM_PROMPT, ContextPassage, build_prompt
    from training.models import DatasetSnapshot as Snapshot
    from training.services.exports import dataset_export_files
    from training.services.snapshots import snapshot_dataset_examples

    snapshot = Snapshot.objects.get(pk=old.pk)
    [row] = snapshot.examples.all()
    assert (row.question, row.history) == ("", [])
    [example] = snapshot_dataset_examples(snapshot=snapshot)
    assert (example.user_question, example.history) == ("Which enzyme do statins inhibit?", [])
    export = dataset_export_files(snapshot=snapshot, format="openai")
    prompt = build_prompt(query="Which enzyme do statins inhibit?", passages=[ContextPassage(text=text, source_id="d1")])
    # byte for byte what the export wrote before conversations
    assert export.files["openai.jsonl"] == (json.dumps({"messages": [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": "HMG-CoA reductase."},
    ]}, ensure_ascii=False) + "\n").encode()  # fmt: skip
