"""Failure tags in training: a snapshot example of a tagged turn carries the tags, and each
trainer's data builder repeats the examples tagged with a failure its component can fix
(docs/failure-tags.md), as many times as the run's `failure_tag_repeats` says."""

from pathlib import Path

import pytest

from curation.services.labels import LabelInput, label_submit
from knowledge.errors import InvalidInput
from knowledge.models import Turn
from knowledge.selectors import retriever_for
from knowledge.services.turns import PassageRecord, TurnRecord, turns_ingest
from rag.datasets import DatasetExample, LabeledPassage
from rag.training.retriever import contrastive_pairs
from training.models import SnapshotExample, TrainingRun
from training.services.runs import Outcome, inputs, training_run_execute, training_run_start
from training.services.snapshots import dataset_snapshot_create, snapshot_dataset_examples

# (name, failure tags): one turn each, its passage judged relevant, with a gold answer.
TAGGED = [
    ("missed", ("retrieval-miss",)),
    ("ungrounded", ("answer-not-grounded", "stale-document")),
    ("plain", ()),
]


@pytest.fixture
def tagged_turns(knowledge_base, curator) -> dict[str, Turn]:
    records = [
        TurnRecord(external_id=name, query=f"question {name}?", answer=f"served answer {name}",
                   passages=[PassageRecord(text=f"passage of {name}", source_id=f"d-{name}", score=0.5)])
        for name, _ in TAGGED
    ]  # fmt: skip
    created = turns_ingest(knowledge_base=knowledge_base, records=records).created
    turns = {name: Turn.objects.get(pk=pk) for name, pk in created.items()}
    for name, tags in TAGGED:
        turn = turns[name]
        label_submit(turn=turn, curator=curator, data=LabelInput(
            passages={turn.passages.get().pk: "relevant"}, answer_rating="wrong", gold_answer=f"gold {name}",
            failure_tags=tags,
        ))  # fmt: skip
    return turns


def test_a_snapshot_example_of_a_tagged_turn_carries_its_tags(knowledge_base, tagged_turns):
    snapshot = dataset_snapshot_create(knowledge_base=knowledge_base, heldout_share=0.0)
    rows = {row.turn_id: row.failure_tags for row in SnapshotExample.objects.filter(snapshot=snapshot)}
    assert rows == {
        tagged_turns["missed"].pk: ["retrieval-miss"],
        tagged_turns["ungrounded"].pk: ["answer-not-grounded", "stale-document"],
        tagged_turns["plain"].pk: [],
    }
    examples = {e.example_id: e.failure_tags for e in snapshot_dataset_examples(snapshot=snapshot)}
    assert examples[f"turn-{tagged_turns['missed'].pk}"] == ("retrieval-miss",)


@pytest.fixture(autouse=True)
def no_tasks_sent(monkeypatch):
    """No task messages (other test runs share the broker); runs are executed in the test."""
    import knowledge.tasks
    import training.tasks

    for module, name in [(training.tasks, "training_run_execute_task"), (training.tasks, "evaluation_job_execute_task"),
                         (knowledge.tasks, "embedding_job_dispatch_task")]:
        monkeypatch.setattr(getattr(module, name), "delay", lambda *args: None)


def test_the_repeat_count_is_a_run_parameter_with_a_default_of_two(knowledge_base, tagged_turns):
    run = training_run_start(knowledge_base=knowledge_base, component="generator", mode="lora_radit",
                             parameters={"base_model": "/models/tiny", "heldout_share": 0.0})
    assert run.parameters["failure_tag_repeats"] == 2
    for bad in (0, 21, 1.5, "3"):
        with pytest.raises(InvalidInput, match="'failure_tag_repeats' must be an integer >= 1 and <= 20"):
            training_run_start(knowledge_base=knowledge_base, component="generator", mode="lora_radit",
                               parameters={"base_model": "/models/tiny", "failure_tag_repeats": bad})


def _examples(*tag_sets):
    return [
        DatasetExample(example_id=f"e{i}", query=f"q{i}", gold_answer=f"a{i}",
                       relevant=[LabeledPassage(text=f"p{i}", chunk_id=None)], failure_tags=tags)
        for i, tags in enumerate(tag_sets)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("component", "repeats", "expected"),
    [
        # e0 retrieval miss, e1 wrong passage first, e2 not grounded, e3 incomplete, e4 stale, e5 none
        ("retriever", 2, [2, 2, 1, 1, 1, 1]),
        ("retriever", 3, [3, 3, 1, 1, 1, 1]),
        ("generator", 2, [1, 1, 2, 2, 1, 1]),
        ("generator", 1, [1, 1, 1, 1, 1, 1]),
    ],
)
def test_each_component_weighs_the_failures_it_can_fix(component, repeats, expected):
    run = TrainingRun(component=component, parameters={"failure_tag_repeats": repeats})
    examples = _examples(("retrieval-miss",), ("wrong-passage-first",), ("answer-not-grounded",),
                         ("answer-incomplete",), ("stale-document",), ())
    assert [inputs.example_weight(run, e) for e in examples] == expected
    assert [e.example_id for e in inputs.weighted(run, examples)] == [
        f"e{i}" for i, n in enumerate(expected) for _ in range(n)
    ]
    # a run queued before the parameter existed repeats twice
    assert inputs.example_weight(TrainingRun(component=component, parameters={}), examples[0 if component == "retriever" else 2]) == 2


def test_the_contrastive_pairs_repeat_a_retrieval_miss(knowledge_base):
    run = TrainingRun(component="retriever", parameters={"failure_tag_repeats": 3})
    examples = [
        DatasetExample(example_id="miss", query="q miss", relevant=[LabeledPassage(text="positive of miss", chunk_id=1)],
                       failure_tags=("retrieval-miss",)),
        DatasetExample(example_id="plain", query="q plain", relevant=[LabeledPassage(text="positive of plain", chunk_id=2)],
                       irrelevant=[LabeledPassage(text="negative of plain", chunk_id=3)]),
    ]  # fmt: skip

    class Reporter:
        def phase(self, message, *, low, high): ...
        def raise_if_stopped(self): ...
        def tick(self, done, total): ...

    built = inputs.examples_in_chunks(
        examples=examples, live=retriever_for(knowledge_base=knowledge_base), reporter=Reporter(),
        weight=lambda example: inputs.example_weight(run, example),
    )
    assert [(e.query, e.repeats) for e in built] == [("q miss", 3), ("q plain", 1)]
    pairs, _ = contrastive_pairs(built, {})
    assert [(p.query, p.positive) for p in pairs] == [("q miss", "positive of miss")] * 3 + [("q plain", "positive of plain")]


@pytest.fixture
def captured_lora(monkeypatch):
    import rag.training.generator as generator_training

    captured = {}

    def train_lora(**kwargs):
        captured.update(kwargs)
        folder = Path(kwargs["output_path"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_config.json").write_text("{}")
        return generator_training.GeneratorTrainingResult(
            output_path=folder, training_curve=[{"step": 1, "loss": 1.0}], parameters={}, steps=1
        )

    monkeypatch.setattr(generator_training, "train_lora", train_lora)
    return captured


@pytest.mark.parametrize(("mode", "repeats"), [("lora_radit", None), ("lora_raft", 3)])
def test_the_generator_pairs_repeat_an_answer_not_grounded_and_not_a_retrieval_miss(
    knowledge_base, tagged_turns, captured_lora, settings, tmp_path, monkeypatch, mode, repeats
):
    settings.RAGLOOP_ARTIFACTS_DIR = tmp_path / "artifacts"
    parameters = {"base_model": "/models/tiny", "heldout_share": 0.0}
    if mode == "lora_raft":
        parameters.update(oracle_probability=1.0, distractors=0)
    if repeats is not None:
        parameters["failure_tag_repeats"] = repeats
    run = training_run_start(knowledge_base=knowledge_base, component="generator", mode=mode, parameters=parameters)
    assert training_run_execute(run_id=run.pk) == Outcome.SUCCEEDED, TrainingRun.objects.get(pk=run.pk).log

    answers = [answer for _, answer in captured_lora["pairs"]]
    copies = {name: sum(f"gold {name}" in answer for answer in answers) for name, _ in TAGGED}
    assert copies == {"missed": 1, "ungrounded": repeats or 2, "plain": 1}


def test_lsr_repeats_a_retrieval_miss_after_scoring_it_once(embedded_knowledge_base, tagged_turns, monkeypatch, tmp_path):
    import rag.generation
    import rag.training.retriever as retriever_training
    from training.services.runs.shared import Reporter
    from training.services.runs.trainers import retriever as retriever_trainers

    run = training_run_start(knowledge_base=embedded_knowledge_base, component="retriever", mode="lsr",
                             parameters={"base_model": "/models/tiny", "heldout_share": 0.0, "top_k": 2})
    TrainingRun.objects.filter(pk=run.pk).update(status="running")
    scored = []

    class LanguageModel:
        def __init__(self, **kwargs):
            pass

        def answer_log_likelihood(self, *, query, passage, answer, history=()):
            scored.append(query)
            return -1.0

    class Captured(Exception):
        pass

    def train_lsr(**kwargs):
        raise Captured(kwargs["examples"], kwargs["lm_log_likelihoods"])

    monkeypatch.setattr(rag.generation, "HFGenerator", LanguageModel)
    monkeypatch.setattr(retriever_training, "train_lsr", train_lsr)
    with pytest.raises(Captured) as captured:
        retriever_trainers.train_lsr(run=run, folder=tmp_path / "lsr", reporter=Reporter(run.pk))

    examples, lm_scores = captured.value.args
    assert sorted(example.answer for example in examples) == ["gold missed", "gold missed", "gold plain", "gold ungrounded"]
    assert len(lm_scores) == 4 and all(len(scores) == 2 for scores in lm_scores)
    assert sorted(set(scored)) == ["question missed?", "question plain?", "question ungrounded?"]
    assert len(scored) == 3 * 2  # each query's chunks scored once, before the repeat
