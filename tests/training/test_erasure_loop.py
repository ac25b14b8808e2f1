"""A live version trained on erased data and the retraining policy's erased-data rule: retrained at
the next check whatever the label threshold says, or replaced by a deadline that the loop page
and the models page show and that starts a cycle when it passes."""

from datetime import UTC, timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from knowledge.errors import InvalidInput
from training.models import ErasureReceipt, LoopCycle, ModelVersion
from training.services import loop
from training.services.loop import cycles as loop_cycles
from training.services.loop import retraining_policy_set

from .conftest import make_snapshot, retriever_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_advance(monkeypatch):
    sent = []
    monkeypatch.setattr(loop_cycles, "_enqueue_advance", sent.append)
    return sent


def _policy(knowledge_base, **changes):
    # A threshold no label count here reaches, and no schedule: only the erased-data rule can fire.
    return retraining_policy_set(
        knowledge_base=knowledge_base, component="retriever",
        changes={"name": "nightly", "mode": "contrastive", "min_new_labels": 1000, **changes},
    )  # fmt: skip


def _flagged_live(knowledge_base, *, erased_days_ago: float = 0.0):
    snapshot = make_snapshot(knowledge_base, [{"example_id": "e1", "query": "q"}])
    version = retriever_version(knowledge_base, "retriever-v1", snapshot=snapshot)
    receipt = ErasureReceipt.objects.create(knowledge_base=knowledge_base, selector="turn", selector_value="1")
    ErasureReceipt.objects.filter(pk=receipt.pk).update(created_at=timezone.now() - timedelta(days=erased_days_ago))
    ModelVersion.objects.filter(pk=version.pk).update(status="live", trained_on_erased_data=True, erasure_receipt=receipt)
    return version, ErasureReceipt.objects.get(pk=receipt.pk)


def test_without_a_flag_the_label_threshold_holds(knowledge_base, no_advance):
    _policy(knowledge_base)
    snapshot = make_snapshot(knowledge_base, [{"example_id": "e1", "query": "q"}])
    version = retriever_version(knowledge_base, "retriever-v1", snapshot=snapshot)
    ModelVersion.objects.filter(pk=version.pk).update(status="live")
    assert loop.loop_policies_check(knowledge_base_id=knowledge_base.pk) == []


def test_next_cycle_retrains_a_flagged_live_version_at_once_and_only_once(knowledge_base, no_advance):
    policy = _policy(knowledge_base)
    assert policy.erased_data_action == "next_cycle"
    _flagged_live(knowledge_base)

    [cycle] = loop.loop_policies_check(knowledge_base_id=knowledge_base.pk)
    assert cycle.trigger == LoopCycle.Trigger.ERASURE and "retriever-v1 was trained on erased data" in cycle.log
    # The cycle ends (say the gate refused its candidate): the next check does not start another.
    LoopCycle.objects.filter(pk=cycle.pk).update(status=LoopCycle.Status.REFUSED, stage=LoopCycle.Stage.DONE)
    assert loop.loop_policies_check(knowledge_base_id=knowledge_base.pk) == []
    assert LoopCycle.objects.count() == 1


def test_a_new_erasure_flagging_a_new_live_version_starts_a_new_cycle(knowledge_base, no_advance):
    _policy(knowledge_base)
    old, _ = _flagged_live(knowledge_base, erased_days_ago=2)
    [first] = loop.loop_policies_check(knowledge_base_id=knowledge_base.pk)
    LoopCycle.objects.filter(pk=first.pk).update(status=LoopCycle.Status.PROMOTED, stage=LoopCycle.Stage.DONE)
    LoopCycle.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(days=1))
    ModelVersion.objects.filter(pk=old.pk).update(status="retired")
    newer = retriever_version(knowledge_base, "retriever-v2")
    receipt = ErasureReceipt.objects.create(knowledge_base=knowledge_base, selector="turn", selector_value="2")
    ModelVersion.objects.filter(pk=newer.pk).update(status="live", trained_on_erased_data=True, erasure_receipt=receipt)
    [second] = loop.loop_policies_check(knowledge_base_id=knowledge_base.pk)
    assert second.trigger == LoopCycle.Trigger.ERASURE and "retriever-v2" in second.log


def test_deadline_waits_until_the_deadline_then_starts_a_cycle(knowledge_base, no_advance, admin_client):
    _policy(knowledge_base, erased_data_action="deadline", erased_data_deadline_days=7)
    version, receipt = _flagged_live(knowledge_base, erased_days_ago=1)
    deadline = receipt.created_at + timedelta(days=7)

    assert loop.loop_policies_check(knowledge_base_id=knowledge_base.pk) == []
    shown = f'<strong class="erasure-deadline">{deadline.astimezone(UTC):%Y-%m-%d %H:%M} UTC</strong>'
    loop_page = admin_client.get(f"/kbs/{knowledge_base.slug}/loop/").content.decode()
    models_page = admin_client.get(f"/kbs/{knowledge_base.slug}/models/").content.decode()
    assert shown in loop_page and shown in models_page

    # Six days later it is still waiting; past the seventh the cycle starts.
    ErasureReceipt.objects.filter(pk=receipt.pk).update(created_at=timezone.now() - timedelta(days=6, hours=23))
    assert loop.loop_policies_check(knowledge_base_id=knowledge_base.pk) == []
    ErasureReceipt.objects.filter(pk=receipt.pk).update(created_at=timezone.now() - timedelta(days=7, minutes=1))
    [cycle] = loop.loop_policies_check(knowledge_base_id=knowledge_base.pk)
    assert cycle.trigger == LoopCycle.Trigger.ERASURE and "to be replaced by" in cycle.log
    loop_page = admin_client.get(f"/kbs/{knowledge_base.slug}/loop/").content.decode()
    assert "retraining started" in loop_page


def test_a_cycle_that_ran_after_the_flag_but_before_the_deadline_is_not_repeated(knowledge_base, no_advance):
    policy = _policy(knowledge_base, erased_data_action="deadline", erased_data_deadline_days=1)
    _, receipt = _flagged_live(knowledge_base, erased_days_ago=0.5)
    manual = loop.loop_cycle_run_now(policy=policy)
    LoopCycle.objects.filter(pk=manual.pk).update(status=LoopCycle.Status.REFUSED, stage=LoopCycle.Stage.DONE)
    ErasureReceipt.objects.filter(pk=receipt.pk).update(created_at=timezone.now() - timedelta(days=2))
    LoopCycle.objects.filter(pk=manual.pk).update(created_at=timezone.now() - timedelta(days=1))
    # The manual cycle was not an erasure cycle and is over: the deadline still starts one.
    [cycle] = loop.loop_policies_check(knowledge_base_id=knowledge_base.pk)
    assert cycle.trigger == LoopCycle.Trigger.ERASURE


def test_the_rule_is_validated_and_set_from_the_form_and_the_command(knowledge_base, admin_client, capsys):
    with pytest.raises(InvalidInput, match="erased_data_action"):
        _policy(knowledge_base, erased_data_action="never")
    with pytest.raises(InvalidInput, match="erased_data_deadline_days"):
        _policy(knowledge_base, erased_data_action="deadline", erased_data_deadline_days=0)
    response = admin_client.post(f"/kbs/{knowledge_base.slug}/loop/policies/retriever/", {
        "name": "nightly", "enabled": "on", "mode": "contrastive", "gate_metric": "ndcg@10", "min_new_labels": "10",
        "erased_data_action": "deadline", "erased_data_deadline_days": "14",
    })  # fmt: skip
    assert response.status_code == 302
    policy = knowledge_base.retraining_policies.get()
    assert (policy.erased_data_action, policy.erased_data_deadline_days) == ("deadline", 14)
    call_command("policy", "set", "test-kb", "--component", "retriever", "--erased-data", "next_cycle", "--json")
    policy.refresh_from_db()
    assert policy.erased_data_action == "next_cycle"
