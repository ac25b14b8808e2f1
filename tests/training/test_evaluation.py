"""Held-out evaluation: figures checked against hand-computed cases (a patched document ranking
and real retrieval on the sample knowledge base), candidate and baseline on the same queries,
and answer figures from generators given the same passages."""

import math

import pytest

from curation.services.labels import LabelInput, label_submit
from knowledge.errors import Conflict, InvalidInput, UpstreamError
from knowledge.models import EmbeddingSpace
from knowledge.selectors import RetrievedChunk
from knowledge.services.turns import turn_ask
from rag.generation import ContextPassage, GeneratedAnswer, build_prompt
from training.models import Evaluation, EvaluationQueryResult, EvaluationSet, ModelVersion
from training.services import evaluation as evaluation_module
from training.services.evaluation import model_version_evaluate
from training.services.evaluation_sets import evaluation_set_pin, evaluation_set_unpin
from training.services.snapshots import dataset_snapshot_create
from training.services.versions import model_version_promote

from .conftest import (
    fake_rankings,
    generator_version,
    make_snapshot,
    passage,
    retriever_version,
)

# --- retriever: a patched ranking, figures by hand ----------------------------------------------

LOG2_3, LOG2_5, LOG2_7 = math.log2(3), math.log2(5), math.log2(7)


@pytest.fixture
def three_queries(knowledge_base):
    return make_snapshot(knowledge_base, [
        {"example_id": "q1", "query": "one", "relevant": [passage("a", "A")]},
        # two relevant documents, and one passage that names no document (left out of the qrels)
        {"example_id": "q2", "query": "two", "relevant": [passage("a", "A"), passage("d", "D"), passage("x")]},
        {"example_id": "q3", "query": "three", "relevant": [passage("e1", "E"), passage("e2", "E")]},
        {"example_id": "q4", "query": "no relevant passage", "gold_answer": "an answer"},
        {"example_id": "t1", "query": "a training query", "split": "train", "relevant": [passage("a", "A")]},
    ])


def test_retriever_figures_match_hand_computation(monkeypatch, knowledge_base, three_queries):
    candidate = retriever_version(knowledge_base, "retriever-v1")
    calls = fake_rankings(monkeypatch, {
        "retriever-v1": {"one": ["A", "B", "C"], "two": ["B", "A", "C", "D"], "three": []},
        "base": {
            "one": ["B", "C", "A"],
            "two": ["A", "B", "C", "E", "F", "G", "H", "I", "J", "K", "D"],  # D only at rank 11
            "three": ["X1", "X2", "X3", "X4", "X5", "E"],
        },
    })

    evaluation = model_version_evaluate(version=candidate, snapshot=three_queries)

    # the same held-out queries for both, each once; no training query, no unjudged query
    assert sorted(calls) == sorted((name, q) for name in ("retriever-v1", "base") for q in ("one", "two", "three"))
    assert (evaluation.component, evaluation.candidate, evaluation.baseline, evaluation.baseline_name) == (
        "retriever", candidate, None, "base")
    # q1: A at 1 | q2: A at 2, D at 4 of {A, D} | q3: nothing
    ndcg_q2 = (1 / LOG2_3 + 1 / LOG2_5) / (1 + 1 / LOG2_3)
    assert evaluation.candidate_metrics == pytest.approx({
        "queries": 3,
        "recall@1": 1 / 3, "recall@5": 2 / 3, "recall@10": 2 / 3,
        "mrr@10": (1 + 1 / 2 + 0) / 3,
        "ndcg@10": (1 + ndcg_q2 + 0) / 3,
    })
    # q1: A at 3 | q2: A at 1, D past the cutoff | q3: E at 6
    base_ndcg = {"q1": 1 / 2, "q2": 1 / (1 + 1 / LOG2_3), "q3": 1 / LOG2_7}
    assert evaluation.baseline_metrics == pytest.approx({
        "queries": 3,
        "recall@1": (0 + 0.5 + 0) / 3, "recall@5": (1 + 0.5 + 0) / 3, "recall@10": (1 + 0.5 + 1) / 3,
        "mrr@10": (1 / 3 + 1 + 1 / 6) / 3,
        "ndcg@10": sum(base_ndcg.values()) / 3,
    })
    results = {r.example.example_id: r for r in EvaluationQueryResult.objects.filter(evaluation=evaluation).select_related("example")}
    assert set(results) == {"q1", "q2", "q3"}
    assert results["q1"].delta == pytest.approx(1 - 0.5)
    assert results["q2"].delta == pytest.approx(ndcg_q2 - base_ndcg["q2"])
    assert results["q3"].delta == pytest.approx(0 - base_ndcg["q3"])
    assert results["q1"].candidate["mrr@10"] == 1 and results["q1"].baseline["mrr@10"] == pytest.approx(1 / 3)
    assert [d["id"] for d in results["q1"].candidate["documents"]] == ["A", "B", "C"]
    assert [d["id"] for d in results["q1"].baseline["documents"]] == ["B", "C", "A"]
    # the candidate's figures are copied onto the version
    candidate.refresh_from_db()
    assert candidate.metrics["ndcg@10"] == pytest.approx((1 + ndcg_q2) / 3)
    assert candidate.metrics["heldout_queries"] == 3


def test_the_baseline_is_the_live_version_and_metrics_merge(monkeypatch, knowledge_base, three_queries):
    live = retriever_version(knowledge_base, "retriever-v1")
    model_version_promote(version=live)
    candidate = retriever_version(knowledge_base, "retriever-v2", snapshot=three_queries)
    ModelVersion.objects.filter(pk=candidate.pk).update(metrics={"train_loss": 0.25})
    perfect = {"one": ["A"], "two": ["A", "D"], "three": ["E"]}
    fake_rankings(monkeypatch, {"retriever-v2": perfect, "retriever-v1": {}})

    evaluation = model_version_evaluate(version=candidate)  # the version's own snapshot

    assert evaluation.snapshot == three_queries
    assert (evaluation.baseline, evaluation.baseline_name) == (live, "retriever-v1")
    assert evaluation.candidate_metrics["ndcg@10"] == 1 and evaluation.baseline_metrics["ndcg@10"] == 0
    assert evaluation.candidate_metrics["recall@1"] == pytest.approx((1 + 1 / 2 + 1) / 3)  # q2 has two relevant documents
    candidate.refresh_from_db()
    assert candidate.metrics["train_loss"] == 0.25 and candidate.metrics["ndcg@10"] == 1
    # the live version itself is compared with the base model, not with itself
    fake_rankings(monkeypatch, {"retriever-v1": perfect, "base": {}})
    assert model_version_evaluate(version=live).baseline_name == "base"


def test_documents_are_ranked_at_their_best_chunk_from_twenty_chunks(monkeypatch, knowledge_base):
    requested = []

    def passages_retrieve(*, space, query, k, query_model_reference=None):
        requested.append(k)
        documents = ["A", "A", "B", "A", "C"] + [f"D{i}" for i in range(20)]
        return [RetrievedChunk(rank=i + 1, score=1 - i / 100, chunk_id=i, document_id=i, document_external_id=d,
                               title=d, text="") for i, d in enumerate(documents[:k])]

    monkeypatch.setattr(evaluation_module, "passages_retrieve", passages_retrieve)
    retriever = evaluation_module.RetrieverUnderTest("base", None, knowledge_base.live_space, "base:all-MiniLM-L6-v2")
    ranked = evaluation_module.ranked_documents(retriever=retriever, query="q")
    assert requested == [20]
    assert [d["id"] for d in ranked] == ["A", "B", "C"] + [f"D{i}" for i in range(7)]
    assert ranked[1]["score"] == 0.98  # B keeps its own chunk's score (the third hit)


# --- retriever: real retrieval on the sample knowledge base -------------------------------------


def test_real_retrieval_scores_the_documents_curators_marked(embedded_knowledge_base, curator):
    kb = embedded_knowledge_base
    # Curators mark the base retriever's first passage relevant for one query and its second
    # for another; each sample document is one chunk, so the base ranks those documents 1st and 2nd.
    for query, relevant_rank in (("Which enzyme do statins inhibit?", 1), ("What does sleep do to memory?", 2)):
        turn = turn_ask(knowledge_base=kb, query=query, k=3)
        passages = {p.pk: ("relevant" if p.rank == relevant_rank else "not_relevant") for p in turn.passages.all()}
        label_submit(turn=turn, curator=curator, data=LabelInput(passages=passages, answer_rating="correct"))
    snapshot = dataset_snapshot_create(knowledge_base=kb, heldout_share=1.0)
    candidate = retriever_version(kb, "retriever-v1", snapshot=snapshot)  # same space and encoder as the base

    evaluation = model_version_evaluate(version=candidate)

    # one query at rank 1, one at rank 2: recall@1 1/2, MRR (1 + 1/2)/2, nDCG (1 + 1/log2 3)/2
    expected = {"queries": 2, "recall@1": 0.5, "recall@5": 1.0, "recall@10": 1.0, "mrr@10": 0.75, "ndcg@10": (1 + 1 / LOG2_3) / 2}
    assert evaluation.candidate_metrics == pytest.approx(expected)
    assert evaluation.baseline_metrics == pytest.approx(expected)
    results = list(evaluation.query_results.select_related("example"))
    assert [r.delta for r in results] == [0.0, 0.0]
    statins = next(r for r in results if "statins" in r.example.query)
    assert statins.candidate["documents"][0]["id"] == "d-statins"
    assert len(statins.candidate["documents"]) == 4  # every document of the knowledge base, once


def test_a_retriever_still_being_embedded_is_not_evaluated(monkeypatch, knowledge_base, three_queries):
    building = EmbeddingSpace.objects.create(knowledge_base=knowledge_base, retriever_version="retriever-v1",
                                             model_reference="x", dimensions=384)
    candidate = retriever_version(knowledge_base, "retriever-v1", space=building, snapshot=three_queries)
    fake_rankings(monkeypatch, {})
    with pytest.raises(Conflict, match="not embedded yet"):
        model_version_evaluate(version=candidate)
    assert not Evaluation.objects.exists()
    candidate.refresh_from_db()
    assert candidate.metrics == {}


def test_evaluation_needs_held_out_examples(knowledge_base):
    candidate = retriever_version(knowledge_base, "retriever-v1")
    with pytest.raises(InvalidInput, match="no dataset snapshot"):
        model_version_evaluate(version=candidate)
    train_only = make_snapshot(knowledge_base, [{"example_id": "t", "query": "q", "split": "train", "relevant": [passage("a", "A")]}])
    with pytest.raises(InvalidInput, match="no held-out examples"):
        model_version_evaluate(version=candidate, snapshot=train_only)
    answers_only = make_snapshot(knowledge_base, [{"example_id": "h", "query": "q", "gold_answer": "yes"}])
    with pytest.raises(InvalidInput, match="relevant passage"):
        model_version_evaluate(version=candidate)  # the latest snapshot by default
    generator = generator_version(knowledge_base, "generator-v1")
    no_answers = make_snapshot(knowledge_base, [{"example_id": "h", "query": "q", "relevant": [passage("a", "A")]}])
    with pytest.raises(InvalidInput, match="gold answer"):
        model_version_evaluate(version=generator, snapshot=no_answers)
    assert answers_only.pk and not Evaluation.objects.exists()


def test_a_snapshot_of_another_knowledge_base_is_refused(knowledge_base):
    from knowledge.services.knowledge_bases import knowledge_base_create

    other = knowledge_base_create(slug="other-kb")
    snapshot = make_snapshot(other, [{"example_id": "h", "query": "q", "relevant": [passage("a", "A")]}])
    with pytest.raises(InvalidInput, match="another knowledge base"):
        model_version_evaluate(version=retriever_version(knowledge_base, "retriever-v1"), snapshot=snapshot)


# --- generator ---------------------------------------------------------------------------------


class FakeGenerator:
    def __init__(self, name, answers, log_likelihoods=None):
        self.name, self.answers, self.calls, self.histories, self.scored = name, answers, [], [], []
        if log_likelihoods is not None:
            self.log_likelihoods = log_likelihoods
            self.answer_log_likelihood = self._answer_log_likelihood

    def generate(self, *, query, passages, history=()):
        self.calls.append((query, [p.text for p in passages]))
        self.histories.append(list(history))
        return GeneratedAnswer(text=self.answers[query], backend="fake", model=self.name)

    def _answer_log_likelihood(self, *, query, passage, answer, history=()):
        self.scored.append((query, passage.text, list(history)))
        return self.log_likelihoods[(passage.text, answer)]


STATINS = passage("Statins inhibit HMG-CoA reductase, an enzyme.", "d-statins", title="Statins")
SLEEP = passage("During deep sleep the hippocampus replays memories.", "d-sleep")
NOISE = [passage(f"noise passage {i}", f"d-noise-{i}") for i in range(5)]


@pytest.fixture
def answer_snapshot(knowledge_base):
    return make_snapshot(knowledge_base, [
        {"example_id": "g1", "query": "Which enzyme do statins inhibit?", "gold_answer": "HMG-CoA reductase",
         "retrieved": [STATINS, NOISE[0]], "relevant": [STATINS]},
        # six retrieved passages: the generators get the first five
        {"example_id": "g2", "query": "When are memories replayed?", "gold_answer": "Deep sleep",
         "retrieved": [SLEEP, *NOISE]},
        {"example_id": "g3", "query": "no gold answer", "relevant": [SLEEP]},
        {"example_id": "g4", "query": "a training query", "gold_answer": "x", "split": "train", "retrieved": [SLEEP]},
    ])


def test_generator_figures_match_hand_computation(monkeypatch, knowledge_base, answer_snapshot):
    candidate_version = generator_version(knowledge_base, "generator-v1", backend="openai", model="tuned")
    candidate = FakeGenerator("tuned", {
        "Which enzyme do statins inhibit?": "HMG-CoA reductase [1]",  # the citation is not part of the answer
        "When are memories replayed?": "memories",
    }, log_likelihoods={(STATINS["text"], "HMG-CoA reductase"): -1.0, (NOISE[0]["text"], "HMG-CoA reductase"): -3.0,
                        **{(p["text"], "Deep sleep"): -0.5 for p in [SLEEP, *NOISE[:4]]}})
    baseline = FakeGenerator("extractive", {
        "Which enzyme do statins inhibit?": "the cholesterol enzyme reductase",
        "When are memories replayed?": "deep sleep [1]",
    })
    generators = {("openai", "tuned", ""): candidate, ("extractive", "", ""): baseline}
    monkeypatch.setattr(evaluation_module, "cached_generator", lambda backend, model, adapter="": generators[(backend, model, adapter)])

    evaluation = model_version_evaluate(version=candidate_version, snapshot=answer_snapshot)

    # both got the same passages: the retrieved ones, at most five, in rank order
    expected_calls = [
        ("Which enzyme do statins inhibit?", [STATINS["text"], NOISE[0]["text"]]),
        ("When are memories replayed?", [SLEEP["text"], *(p["text"] for p in NOISE[:4])]),
    ]
    assert candidate.calls == baseline.calls == expected_calls
    assert (evaluation.baseline, evaluation.baseline_name) == (None, "extractive")
    # g1: candidate exact; baseline "cholesterol enzyme reductase" vs "hmgcoa reductase": 1 common
    # token, P 1/3, R 1/2, F1 0.4; grounded: enzyme, reductase yes, cholesterol no = 2/3.
    # g2: candidate "memories" vs "deep sleep": F1 0, grounded 1; baseline exact, grounded 1.
    assert evaluation.candidate_metrics == pytest.approx({
        "queries": 2, "exact_match": 0.5, "f1": 0.5, "groundedness": 1.0,
        "answer_log_likelihood": ((-1.0 - 3.0) / 2 + -0.5) / 2,
    })
    assert evaluation.baseline_metrics == pytest.approx({
        "queries": 2, "exact_match": 0.5, "f1": (0.4 + 1) / 2, "groundedness": (2 / 3 + 1) / 2,
        "answer_log_likelihood": None,
    })
    results = {r.example.example_id: r for r in evaluation.query_results.select_related("example")}
    assert set(results) == {"g1", "g2"}
    assert results["g1"].delta == pytest.approx(1 - 0.4) and results["g2"].delta == pytest.approx(-1)
    assert results["g1"].candidate["answer"] == "HMG-CoA reductase [1]"  # shown as generated
    assert results["g2"].baseline["answer"] == "deep sleep [1]"
    assert results["g1"].candidate["answer_log_likelihood"] == pytest.approx(-2.0)
    candidate_version.refresh_from_db()
    assert candidate_version.metrics["f1"] == pytest.approx(0.5) and candidate_version.metrics["heldout_queries"] == 2


CONVERSATION_SO_FAR = [
    {"role": "system", "content": "You are the clinic's assistant."},
    {"role": "user", "content": "Which enzyme do statins inhibit?"},
    {"role": "assistant", "content": "HMG-CoA reductase [1]."},
]


def test_a_follow_up_is_answered_and_scored_as_serving_asks_it_and_retrieved_with_its_standalone_query(
    monkeypatch, knowledge_base
):
    from rag.conversation import ChatMessage

    snapshot = make_snapshot(knowledge_base, [
        {"example_id": "f1", "query": "What side effect do statins have?", "question": "Any side effects?",
         "history": CONVERSATION_SO_FAR, "gold_answer": "Muscle pain", "retrieved": [STATINS], "relevant": [STATINS]},
    ])  # fmt: skip
    candidate_version = generator_version(knowledge_base, "generator-v1", backend="openai", model="tuned")
    candidate = FakeGenerator("tuned", {"Any side effects?": "Muscle pain [1]"}, log_likelihoods={(STATINS["text"], "Muscle pain"): -1.5})
    baseline = FakeGenerator("extractive", {"Any side effects?": "none"})
    generators = {("openai", "tuned", ""): candidate, ("extractive", "", ""): baseline}
    monkeypatch.setattr(evaluation_module, "cached_generator", lambda backend, model, adapter="": generators[(backend, model, adapter)])

    evaluation = model_version_evaluate(version=candidate_version, snapshot=snapshot)

    # the user's own question after the conversation, as serving shows it (the app's system
    # message is stored but not sent), for both generators
    history = [ChatMessage(**m) for m in CONVERSATION_SO_FAR[1:]]
    assert candidate.calls == baseline.calls == [("Any side effects?", [STATINS["text"]])]
    assert candidate.histories == baseline.histories == [history]
    assert candidate.scored == [("Any side effects?", STATINS["text"], history)]
    assert evaluation.candidate_metrics["f1"] == 1.0 and evaluation.candidate_metrics["answer_log_likelihood"] == -1.5

    # a retriever is scored on the self-contained query that retrieval uses
    calls = fake_rankings(monkeypatch, {"retriever-v1": {}, "base": {}})
    model_version_evaluate(version=retriever_version(knowledge_base, "retriever-v1"), snapshot=snapshot)
    assert sorted(calls) == [("base", "What side effect do statins have?"), ("retriever-v1", "What side effect do statins have?")]


def test_extractive_generators_side_by_side(knowledge_base):
    text = "Statins inhibit HMG-CoA reductase. Coffee is not related."
    snapshot = make_snapshot(knowledge_base, [
        {"example_id": "g1", "query": "What do statins inhibit?", "gold_answer": "Statins inhibit HMG-CoA reductase.",
         "retrieved": [passage(text, "d-statins")]},
    ])
    candidate = generator_version(knowledge_base, "generator-v1")
    evaluation = model_version_evaluate(version=candidate, snapshot=snapshot)
    # the extractive answer is the sentence plus "[1]": exact once the citation is left out
    assert evaluation.candidate_metrics == evaluation.baseline_metrics == {
        "queries": 1, "exact_match": 1.0, "f1": 1.0, "groundedness": 1.0, "answer_log_likelihood": None,
    }
    [result] = evaluation.query_results.all()
    assert result.candidate["answer"] == "Statins inhibit HMG-CoA reductase. [1]" and result.delta == 0


def test_a_failing_generator_stores_nothing(monkeypatch, knowledge_base, answer_snapshot):
    from rag.generation import GeneratorError

    class Broken:
        def generate(self, *, query, passages, history=()):
            raise GeneratorError("endpoint unreachable")

    candidate = generator_version(knowledge_base, "generator-v1", backend="openai", model="m")
    monkeypatch.setattr(evaluation_module, "cached_generator", lambda *args: Broken())
    with pytest.raises(UpstreamError, match="endpoint unreachable"):
        model_version_evaluate(version=candidate, snapshot=answer_snapshot)
    assert not Evaluation.objects.exists() and not EvaluationQueryResult.objects.exists()


def test_a_local_hf_generator_reports_the_gold_answer_likelihood(tmp_path, knowledge_base):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.rag.conftest import reference_mean_log_prob, tiny_tokenizer

    query, gold = "Which enzyme do statins inhibit?", "HMG-CoA reductase"
    passages = [STATINS, NOISE[0]]
    tokenizer = tiny_tokenizer([build_prompt(query=query, passages=[]), *(p["text"] for p in passages), gold, "Statins"])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=512, vocab_size=len(tokenizer),
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    snapshot = make_snapshot(knowledge_base, [{"example_id": "g1", "query": query, "gold_answer": gold, "retrieved": passages}])
    candidate = generator_version(knowledge_base, "generator-v1", backend="hf", model=str(tmp_path))

    evaluation = model_version_evaluate(version=candidate, snapshot=snapshot)

    # the gold answer's mean token log-probability given each passage alone, averaged over passages
    expected = sum(
        reference_mean_log_prob(tmp_path, prompt=build_prompt(query=query, passages=[
            ContextPassage(text=p["text"], title=p["title"], source_id=p["document_id"])]), answer=gold)
        for p in passages
    ) / 2
    assert evaluation.candidate_metrics["answer_log_likelihood"] == pytest.approx(expected, abs=1e-4)
    assert evaluation.baseline_metrics["answer_log_likelihood"] is None  # the extractive baseline cannot score text
    assert evaluation.baseline_name == "extractive"


# --- honest held-out data and confidence ------------------------------------------------------


def test_held_out_queries_a_lineage_trained_on_are_refused_or_left_out(monkeypatch, knowledge_base, three_queries):
    # The parent trained on "One?" (the same query as held-out "one", cased and punctuated otherwise).
    parent_data = make_snapshot(knowledge_base, [
        {"example_id": "p1", "query": "One?", "split": "train", "relevant": [passage("a", "A")]},
        {"example_id": "p2", "query": "something else", "split": "train", "relevant": [passage("a", "A")]},
    ])  # fmt: skip
    parent = retriever_version(knowledge_base, "retriever-v1", snapshot=parent_data)
    candidate = retriever_version(knowledge_base, "retriever-v2", snapshot=three_queries)
    ModelVersion.objects.filter(pk=candidate.pk).update(parent=parent)
    fake_rankings(monkeypatch, {"retriever-v2": {"one": ["A"], "two": ["A", "D"], "three": ["E"]}, "base": {}})

    with pytest.raises(InvalidInput, match=r"overlaps what retriever-v1 trained on: 1 of its 4 held-out queries \('one'\)"):
        model_version_evaluate(version=candidate, snapshot=three_queries)
    assert not Evaluation.objects.exists()

    evaluation = model_version_evaluate(version=candidate)  # its own snapshot: the overlap is left out
    assert evaluation.heldout_left_out == 1
    assert evaluation.candidate_metrics["queries"] == 2
    assert sorted(r.example.query for r in evaluation.query_results.all()) == ["three", "two"]


def test_every_delta_carries_a_reproducible_paired_bootstrap_interval(monkeypatch, knowledge_base, three_queries):
    candidate = retriever_version(knowledge_base, "retriever-v2", snapshot=three_queries)
    # Candidate perfect on all three scored queries, base finds nothing: every nDCG delta is +1.
    fake_rankings(monkeypatch, {"retriever-v2": {"one": ["A"], "two": ["A", "D"], "three": ["E"]}, "base": {"one": ["A"]}})

    first = model_version_evaluate(version=candidate)
    second = model_version_evaluate(version=candidate)

    ndcg = first.delta_intervals["ndcg@10"]
    assert ndcg["queries"] == 3 and ndcg["delta"] == pytest.approx(2 / 3)
    assert 0 <= ndcg["low"] <= ndcg["delta"] <= ndcg["high"] <= 1
    assert ndcg["low"] == pytest.approx(0.0) and ndcg["high"] == pytest.approx(1.0)
    assert first.delta_intervals == second.delta_intervals
    assert set(first.delta_intervals) == {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"}


def test_a_pinned_evaluation_set_scores_every_later_candidate_unless_a_snapshot_is_named(monkeypatch, knowledge_base, three_queries):
    own = make_snapshot(knowledge_base, [{"example_id": "o1", "query": "own query", "relevant": [passage("z", "Z")]}])
    candidate = retriever_version(knowledge_base, "retriever-v2", snapshot=own)
    fake_rankings(monkeypatch, {"retriever-v2": {"one": ["A"], "own query": ["Z"]}, "base": {}})

    assert model_version_evaluate(version=candidate).snapshot == own  # nothing pinned: its own snapshot
    pinned = evaluation_set_pin(knowledge_base=knowledge_base, snapshot=three_queries)
    assert pinned.snapshot == three_queries
    evaluation = model_version_evaluate(version=candidate)
    assert evaluation.snapshot == three_queries and evaluation.candidate_metrics["queries"] == 3
    assert model_version_evaluate(version=candidate, snapshot=own).snapshot == own  # a named snapshot wins

    evaluation_set_unpin(knowledge_base=knowledge_base)
    assert model_version_evaluate(version=candidate).snapshot == own
    with pytest.raises(Conflict, match="no pinned evaluation set"):
        evaluation_set_unpin(knowledge_base=knowledge_base)


def test_pinning_refuses_a_snapshot_with_nothing_held_out_or_of_another_knowledge_base(knowledge_base, three_queries):
    from knowledge.services.knowledge_bases import knowledge_base_create

    train_only = make_snapshot(knowledge_base, [{"example_id": "t", "query": "q", "split": "train", "relevant": [passage("a", "A")]}])
    with pytest.raises(InvalidInput, match="no held-out examples"):
        evaluation_set_pin(knowledge_base=knowledge_base, snapshot=train_only)
    other = knowledge_base_create(slug="other-kb", name="Other")
    with pytest.raises(InvalidInput, match="another knowledge base"):
        evaluation_set_pin(knowledge_base=other, snapshot=three_queries)
    assert not EvaluationSet.objects.exists()
