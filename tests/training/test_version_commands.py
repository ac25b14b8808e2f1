"""The evaluate, versions, promote and rollback commands: their output and exit codes."""

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from knowledge.models import EmbeddingSpace
from training.models import ModelVersion, PromotionEvent

from .conftest import (
    fake_rankings,
    generator_version,
    make_snapshot,
    passage,
    retriever_version,
)


def run(capsys, *arguments) -> str:
    call_command(*arguments)
    return capsys.readouterr().out


def fails(*arguments, match: str) -> None:
    with pytest.raises(CommandError, match=match) as error:
        call_command(*arguments)
    assert error.value.returncode == 2


@pytest.fixture
def snapshot(knowledge_base):
    return make_snapshot(knowledge_base, [
        {"example_id": "q1", "query": "one", "relevant": [passage("a", "A")]},
        {"example_id": "q2", "query": "two", "relevant": [passage("b", "B")]},
    ])


# --- evaluate ---------------------------------------------------------------------------------


def test_evaluate_prints_candidate_and_baseline_side_by_side(monkeypatch, capsys, knowledge_base, snapshot):
    retriever_version(knowledge_base, "retriever-v1", snapshot=snapshot)
    fake_rankings(monkeypatch, {
        "retriever-v1": {"one": ["A"], "two": ["X", "B"]},
        "base": {"one": ["X", "A"], "two": ["B"]},
    })
    result = json.loads(run(capsys, "evaluate", "test-kb", "--version", "retriever-v1", "--json"))
    # q1: rank 1 vs 2, q2: rank 2 vs 1 -> the same means, one improved and one regressed
    ndcg_at_2 = 1 / 1.584962500721156
    assert (result["candidate"], result["baseline"], result["snapshot"], result["queries"]) == ("retriever-v1", "base", snapshot.pk, 2)
    assert result["candidate_metrics"] == pytest.approx({
        "queries": 2, "recall@1": 0.5, "recall@5": 1.0, "recall@10": 1.0, "mrr@10": 0.75, "ndcg@10": (1 + ndcg_at_2) / 2,
    })
    assert result["delta"] == pytest.approx({"recall@1": 0, "recall@5": 0, "recall@10": 0, "mrr@10": 0, "ndcg@10": 0})
    assert (result["improved"], result["regressed"], result["unchanged"]) == (1, 1, 0)
    assert result["headline"] == "ndcg@10"
    # One query up by 1, one down by 1: the paired bootstrap's 95% interval spans both.
    assert result["delta_intervals"]["recall@1"] == pytest.approx({"delta": 0.0, "low": -1.0, "high": 1.0, "queries": 2})
    assert result["heldout_left_out"] == 0

    table = run(capsys, "evaluate", "test-kb", "--version", "retriever-v1", "--snapshot", str(snapshot.pk))
    lines = table.splitlines()
    assert lines[0] == f"retriever-v1 vs base: held-out split of snapshot {snapshot.pk}, 2 queries"
    assert lines[1].split() == ["metric", "retriever-v1", "base", "delta", "95%", "interval"]
    assert lines[2].split() == ["recall@1", "0.5000", "0.5000", "+0.0000", "[-1.0000,", "+1.0000]"]
    assert lines[5].split() == ["mrr@10", "0.7500", "0.7500", "+0.0000", "[-0.5000,", "+0.5000]"]
    assert lines[-1] == "per query (ndcg@10): 1 improved, 1 regressed, 0 unchanged"
    assert ModelVersion.objects.get(name="retriever-v1").metrics["mrr@10"] == 0.75


def test_evaluate_errors_exit_2(knowledge_base, snapshot):
    fails("evaluate", "nope", "--version", "retriever-v1", match="not found")
    fails("evaluate", "test-kb", "--version", "retriever-v9", match="not found")
    building = EmbeddingSpace.objects.create(knowledge_base=knowledge_base, retriever_version="retriever-v1",
                                             model_reference="x", dimensions=384)
    retriever_version(knowledge_base, "retriever-v1", space=building)
    fails("evaluate", "test-kb", "--version", "retriever-v1", match="not embedded yet")
    fails("evaluate", "test-kb", "--version", "retriever-v1", "--snapshot", "999999", match="Snapshot '999999' not found")
    generator_version(knowledge_base, "generator-v1")
    fails("evaluate", "test-kb", "--version", "generator-v1", match="gold answer")


# --- versions ---------------------------------------------------------------------------------


def test_versions_lists_live_marker_lineage_and_figures(capsys, knowledge_base, snapshot):
    assert run(capsys, "versions", "test-kb") == "test-kb: no model versions yet; the base models serve.\n"
    v1 = retriever_version(knowledge_base, "retriever-v1", snapshot=snapshot, metrics={"ndcg@10": 0.5, "recall@10": 0.75})
    retriever_version(knowledge_base, "retriever-v2", parent=v1)
    generator_version(knowledge_base, "generator-v1")
    call_command("promote", "test-kb", "retriever-v1")
    capsys.readouterr()
    lines = run(capsys, "versions", "test-kb").splitlines()
    [live] = [line for line in lines if line[2:].startswith("retriever-v1 ")]
    assert live.startswith("* retriever-v1") and "live" in live and f"snapshot={snapshot.pk}" in live
    assert "ndcg@10=0.5000 recall@10=0.7500" in live
    [child] = [line for line in lines if line[2:].startswith("retriever-v2 ")]
    assert child.startswith("  retriever-v2") and "parent=retriever-v1" in child and "candidate" in child

    listed = json.loads(run(capsys, "versions", "test-kb", "--component", "retriever", "--json"))
    assert [(v["name"], v["status"], v["live"], v["parent"]) for v in listed] == [
        ("retriever-v2", "candidate", False, "retriever-v1"),
        ("retriever-v1", "live", True, None),
    ]
    assert listed[1]["metrics"] == {"ndcg@10": 0.5, "recall@10": 0.75} and listed[1]["snapshot"] == snapshot.pk
    fails("versions", "test-kb", "--component", "ranker", match="Component must be one of")
    fails("versions", "nope", match="not found")


# --- promote and rollback ---------------------------------------------------------------------


def test_promote_and_rollback(capsys, knowledge_base):
    retriever_version(knowledge_base, "retriever-v1")
    retriever_version(knowledge_base, "retriever-v2")
    assert run(capsys, "promote", "test-kb", "retriever-v1", "--reason", "better") == (
        "test-kb: retriever-v1 is the live retriever (was the base model).\n")
    promoted = json.loads(run(capsys, "promote", "test-kb", "retriever-v2", "--json"))
    assert (promoted["live"], promoted["previous"], promoted["component"]) == ("retriever-v2", "retriever-v1", "retriever")
    assert PromotionEvent.objects.get(to_version__name="retriever-v1").reason == "better"
    fails("promote", "test-kb", "retriever-v2", match="already live")
    fails("promote", "test-kb", "retriever-v9", match="not found")

    assert run(capsys, "rollback", "test-kb", "--component", "retriever", "--reason", "regressed") == (
        "test-kb: retriever-v2 rolled back; the live retriever is retriever-v1.\n")
    assert PromotionEvent.objects.get(action="rollback").reason == "regressed"
    rolled = json.loads(run(capsys, "rollback", "test-kb", "--component", "retriever", "--json"))
    assert (rolled["retired"], rolled["live"]) == ("retriever-v1", None)
    fails("rollback", "test-kb", "--component", "retriever", match="already serves the base model")
    fails("rollback", "test-kb", "--component", "ranker", match="Component must be one of")
    fails("rollback", "nope", "--component", "retriever", match="not found")
    assert ModelVersion.objects.filter(status="live").count() == 0


def test_a_retriever_still_embedding_cannot_be_promoted_from_the_cli(knowledge_base):
    building = EmbeddingSpace.objects.create(knowledge_base=knowledge_base, retriever_version="retriever-v1",
                                             model_reference="x", dimensions=384)
    retriever_version(knowledge_base, "retriever-v1", space=building)
    fails("promote", "test-kb", "retriever-v1", match="embedded")
    assert not PromotionEvent.objects.exists()


def test_evaluation_set_pins_shows_and_unpins(capsys, knowledge_base, snapshot):
    assert json.loads(run(capsys, "evaluation_set", "test-kb", "--json"))["snapshot"] is None
    pinned = json.loads(run(capsys, "evaluation_set", "test-kb", "--pin", "latest", "--json"))
    assert pinned == {"knowledge_base": "test-kb", "snapshot": snapshot.pk, "heldout": 2}
    assert f"held-out examples of snapshot #{snapshot.pk}" in run(capsys, "evaluation_set", "test-kb")
    fails("evaluation_set", "test-kb", "--pin", "999999", match="not found")
    assert json.loads(run(capsys, "evaluation_set", "test-kb", "--unpin", "--json"))["snapshot"] is None
    fails("evaluation_set", "test-kb", "--unpin", match="no pinned evaluation set")


def test_promote_and_rollback_from_the_cli_record_their_actor(capsys, knowledge_base, admin_client, monkeypatch):
    import getpass

    retriever_version(knowledge_base, "retriever-v1")
    run(capsys, "promote", "test-kb", "retriever-v1", "--actor", "ops-oncall", "--reason", "better nDCG")
    monkeypatch.setattr(getpass, "getuser", lambda: "deploy")
    run(capsys, "rollback", "test-kb", "--component", "retriever")  # no --actor: the operating-system user
    events = PromotionEvent.objects.filter(knowledge_base=knowledge_base).order_by("pk")
    assert [(e.action, e.actor_id, e.actor_name) for e in events] == [
        ("promote", None, "cli:ops-oncall"),
        ("rollback", None, "cli:deploy"),
    ]
    page = admin_client.get("/kbs/test-kb/models/").content.decode()
    assert "cli:ops-oncall" in page and "cli:deploy" in page
