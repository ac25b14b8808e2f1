"""`manage.py policy`: set (partial changes, refusals with exit code 2), list, run and cycles, with --json."""

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from training.models import LoopCycle, RetrainingPolicy
from training.services.loop import cycles as loop_cycles

pytestmark = pytest.mark.django_db


def run(capsys, *arguments) -> str:
    call_command(*arguments)
    return capsys.readouterr().out


def test_set_then_list_shows_the_policy_with_its_triggers_and_gate(capsys, knowledge_base):
    out = run(
        capsys, "policy", "set", "test-kb", "--component", "retriever", "--name", "nightly", "--mode", "contrastive",
        "--param", "epochs=2", "--schedule", "0 3 * * *", "--timezone", "Europe/Berlin", "--min-new-labels", "100",
        "--gate-margin", "0.01", "--guard", "recall@10=0.02", "--gate-min-queries", "50", "--auto-promote",
    )  # fmt: skip
    assert "nightly" in out and "labels 0/100" in out and "auto-promote" in out
    [row] = json.loads(run(capsys, "policy", "list", "test-kb", "--json"))
    assert row["parameters"] == {"epochs": 2} and row["schedule"] == "0 3 * * *" and row["timezone"] == "Europe/Berlin"
    assert row["gate"] == {"metric": "ndcg@10", "margin": 0.01, "guards": {"recall@10": 0.02}, "min_queries": 50}
    assert row["auto_promote"] is True and row["next_run_at"] is not None and row["new_final_labels"] == 0

    run(capsys, "policy", "set", "test-kb", "--component", "retriever", "--no-auto-promote", "--min-new-labels", "0")
    policy = RetrainingPolicy.objects.get()
    assert (policy.auto_promote, policy.min_new_labels, policy.gate_margin, policy.parameters) == (False, None, 0.01, {"epochs": 2})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--schedule", "every night"], "must have five fields"),
        (["--guard", "recall@10"], "--guard takes METRIC=TOLERANCE"),
        (["--param", "epochs=0"], "Parameter 'epochs' must be"),
        (["--gate-metric", "f1"], "not a retriever metric"),
    ],
)
def test_bad_settings_are_refused_with_exit_code_2_and_write_nothing(knowledge_base, arguments, message):
    with pytest.raises(CommandError, match=message):
        call_command("policy", "set", "test-kb", "--component", "retriever", *arguments)
    assert not RetrainingPolicy.objects.exists()
    with pytest.raises(CommandError, match="no retriever retraining policy"):
        call_command("policy", "run", "test-kb", "--component", "retriever")


def test_run_starts_a_cycle_and_cycles_lists_it(capsys, knowledge_base, monkeypatch):
    monkeypatch.setattr(loop_cycles, "_enqueue_advance", lambda cycle_id: None)
    run(capsys, "policy", "set", "test-kb", "--component", "retriever", "--name", "nightly")
    started = json.loads(run(capsys, "policy", "run", "test-kb", "--component", "retriever", "--json"))
    assert (started["trigger"], started["status"], started["stage"]) == ("manual", "running", "snapshot")
    [row] = json.loads(run(capsys, "policy", "cycles", "test-kb", "--json"))
    assert row["id"] == started["id"] == LoopCycle.objects.get().pk and row["policy"] == "nightly"
    assert f"#{row['id']}" in run(capsys, "policy", "cycles", "test-kb")
    with pytest.raises(CommandError, match="still running"):
        call_command("policy", "run", "test-kb", "--component", "retriever")
