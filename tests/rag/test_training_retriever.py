"""Tests for retriever fine-tuning: contrastive (full and query-only), the LSR loss, LSR training,
cancellation and determinism, all on the bundled MiniLM and a small product-support task."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rag.embedding import Embedder, base_retriever_path
from rag.training import TrainingCancelled
from rag.training.retriever import (
    ContrastivePair,
    LsrTrainingExample,
    RetrievalTrainingExample,
    contrastive_pairs,
    load_trained_retriever,
    score_chunks_with_lm,
    train_contrastive,
    train_lsr,
)
from rag.training.retriever_losses import SIMILARITY_SCALE, lsr_loss, multiple_negatives_ranking_loss

# A support knowledge base where the base retriever is confused: for every question there is a
# "question echo" page that repeats the question's words without answering it, and a fact page
# that answers in other words. Curators marked the fact pages relevant and the echo pages
# irrelevant; the pattern carries over to products the retriever was not trained on.
PRODUCTS = [
    "Aurora kettle", "Basalt drill", "Cobalt router", "Dune tent", "Ember heater", "Fjord kayak",
    "Glacier cooler", "Harbor lamp", "Iris camera", "Juniper blender", "Kestrel bike", "Lumen monitor",
    "Meadow mower", "Nimbus drone", "Onyx speaker", "Pine desk", "Quartz watch", "Raven headset",
    "Sierra stove", "Tundra jacket", "Umber backpack", "Vale printer", "Willow chair", "Zephyr fan",
]  # fmt: skip
TEMPLATES = [
    (
        "How long is the warranty on the {p}?",
        "Manufacturing defects in the {p} are repaired free of charge for {n} years after purchase.",
        "Warranty on the {p}: how long is it? Customers often ask how long the warranty on the {p} is.",
    ),
    (
        "How much does the {p} weigh?",
        "On the scale the {p} comes in at {n} kilograms without its packaging.",
        "The {p} weight: how much does the {p} weigh? This is a frequent question about the {p}.",
    ),
    (
        "What is the battery life of the {p}?",
        "A full charge keeps the {p} running for {n} hours of normal use.",
        "Battery life of the {p}: what is the battery life of the {p}? Many users wonder about the {p} battery.",
    ),
    (
        "Where is the {p} manufactured?",
        "Every {p} is assembled in plant number {n} near Lyon.",
        "Where the {p} is manufactured is a common question; the {p} manufacturing location is often searched.",
    ),
]
EXAMPLES = [
    RetrievalTrainingExample(
        query=TEMPLATES[index % 4][0].format(p=product),
        positives=[TEMPLATES[index % 4][1].format(p=product, n=index + 2)],
        hard_negatives=[TEMPLATES[index % 4][2].format(p=product)],
    )
    for index, product in enumerate(PRODUCTS)
]
TRAIN, HELD_OUT = EXAMPLES[:16], EXAMPLES[16:]
CORPUS = [text for example in EXAMPLES for text in (*example.positives, *example.hard_negatives)]
BASE = base_retriever_path()


def mean_reciprocal_rank(query_encoder: Path, document_encoder: Path, examples) -> float:
    """MRR of each example's positive among the whole corpus."""
    queries = Embedder(query_encoder, device="cpu").encode_queries([example.query for example in examples])
    documents = Embedder(document_encoder, device="cpu").encode_documents(CORPUS)
    scores = queries @ documents.T
    reciprocal_ranks = []
    for row, example in enumerate(examples):
        positive = CORPUS.index(example.positives[0])
        reciprocal_ranks.append(1 / (1 + int((scores[row] > scores[row, positive]).sum())))
    return float(np.mean(reciprocal_ranks))


def tree_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def base_held_out_mrr() -> float:
    return mean_reciprocal_rank(BASE, BASE, HELD_OUT)


# --- contrastive ------------------------------------------------------------------------


@pytest.mark.slow
def test_contrastive_training_ranks_held_out_positives_higher(tmp_path: Path, base_held_out_mrr: float):
    fractions = []

    result = train_contrastive(
        base_model_path=BASE,
        examples=TRAIN,
        output_path=tmp_path / "retriever",
        epochs=1,
        batch_size=8,
        learning_rate=1e-4,
        device="cpu",
        progress=lambda fraction, metrics: fractions.append(fraction),
    )

    query_encoder, document_encoder = load_trained_retriever(tmp_path / "retriever")
    assert query_encoder == document_encoder == tmp_path / "retriever" / "encoder"
    assert json.loads((tmp_path / "retriever" / "retriever.json").read_text())["mode"] == "full"
    trained_mrr = mean_reciprocal_rank(query_encoder, document_encoder, HELD_OUT)
    assert base_held_out_mrr < 0.8  # the task really confuses the base model
    assert trained_mrr > base_held_out_mrr + 0.2
    assert result.mode == "full" and result.steps == 2
    assert [point["step"] for point in result.training_curve] == [1, 2]
    assert all(math.isfinite(point["loss"]) for point in result.training_curve)
    assert fractions == [0.5, 1.0]
    assert result.parameters["pairs"] == 16 and result.parameters["query_only"] is False


@pytest.mark.slow
def test_query_only_training_keeps_document_embeddings_and_still_improves(tmp_path: Path, base_held_out_mrr: float):
    base_fingerprint = tree_sha256(BASE)
    documents_before = Embedder(BASE, device="cpu").encode_documents(CORPUS)

    result = train_contrastive(
        base_model_path=BASE,
        examples=TRAIN,
        output_path=tmp_path / "retriever",
        epochs=1,
        batch_size=8,
        learning_rate=1e-4,
        warmup_ratio=0.0,  # 2 steps: the library's warm-up would spend the first at a learning rate of 0
        query_only=True,
        device="cpu",
    )

    query_encoder, document_encoder = load_trained_retriever(tmp_path / "retriever")
    assert (query_encoder, document_encoder) == (tmp_path / "retriever" / "query_encoder", None)
    description = json.loads((tmp_path / "retriever" / "retriever.json").read_text())
    assert (description["mode"], description["document_encoder"]) == ("query_only", "base")
    assert description["base_model_path"] == str(BASE)
    assert not (tmp_path / "retriever" / "encoder").exists()
    # The document side is the untouched base: its files and its chunk vectors are bit-identical.
    assert tree_sha256(BASE) == base_fingerprint
    assert np.array_equal(Embedder(BASE, device="cpu").encode_documents(CORPUS), documents_before)
    # ...while the query side did change, and for the better.
    assert not np.array_equal(
        Embedder(query_encoder, device="cpu").encode_queries([HELD_OUT[0].query]),
        Embedder(BASE, device="cpu").encode_queries([HELD_OUT[0].query]),
    )
    assert mean_reciprocal_rank(query_encoder, BASE, HELD_OUT) > base_held_out_mrr + 0.2
    assert result.mode == "query_only"


def test_pairs_take_curator_and_mined_negatives_but_never_a_known_positive():
    examples = [
        RetrievalTrainingExample(query="q", positives=["p1", "p2"], hard_negatives=["n1", "p2"]),
        # Another curator's label of the same query, agreeing on p1.
        RetrievalTrainingExample(query="q", positives=["p3", "p1"]),
        RetrievalTrainingExample(query="r", positives=["n1"]),
    ]

    pairs, known_positives = contrastive_pairs(examples, {"q": ["m1", "n1", "p3"], "r": ["p1"]})

    assert pairs == [
        ContrastivePair("q", "p1", ("n1", "m1")),
        ContrastivePair("q", "p2", ("n1", "m1")),
        ContrastivePair("q", "p3", ("n1", "m1")),
        ContrastivePair("r", "n1", ("p1",)),  # irrelevant to q, relevant to r: fine as r's positive
    ]
    assert known_positives == {"q": {"p1", "p2", "p3"}, "r": {"n1"}}


def test_ranking_loss_leaves_a_query_s_other_positives_out_of_its_negatives():
    queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    candidates = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.0, 1.0], [0.9, 0.1]]), dim=1)
    targets = torch.tensor([0, 1])
    # Candidate 2 is query 0's other positive: not a negative for it, still one for query 1.
    excluded = torch.tensor([[False, False, True], [False, False, False]])

    loss = multiple_negatives_ranking_loss(queries, candidates, targets, excluded=excluded, scale=20.0)

    logits = queries @ candidates.T * 20.0
    first = -torch.log_softmax(logits[0, :2], dim=0)[0]
    second = -torch.log_softmax(logits[1], dim=0)[1]
    assert loss.item() == pytest.approx(((first + second) / 2).item(), abs=1e-6)


def test_load_trained_retriever_rejects_folders_that_are_not_retrievers(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="retriever.json is missing"):
        load_trained_retriever(tmp_path)
    (tmp_path / "retriever.json").write_text('{"mode": "sideways"}')
    with pytest.raises(ValueError, match="unknown mode 'sideways'"):
        load_trained_retriever(tmp_path)


def test_contrastive_needs_a_positive(tmp_path: Path):
    with pytest.raises(ValueError, match="at least one example with a positive"):
        train_contrastive(
            base_model_path=BASE,
            examples=[RetrievalTrainingExample(query="q", positives=[])],
            output_path=tmp_path,
        )


# --- LM-supervised retrieval loss -------------------------------------------------------


def test_lsr_loss_matches_hand_computation():
    retriever_scores = torch.tensor([[0.0, math.log(3.0)]])
    lm_log_likelihoods = torch.tensor([[0.0, 0.0]])

    loss = lsr_loss(retriever_scores, lm_log_likelihoods, retriever_temperature=1.0, lm_temperature=1.0)

    # p_R = softmax([0, ln 3]) = [1/4, 3/4]; p_LM = softmax([0, 0]) = [1/2, 1/2]
    # KL(p_LM || p_R) = 1/2 ln((1/2)/(1/4)) + 1/2 ln((1/2)/(3/4)) = 1/2 ln 2 + 1/2 ln(2/3)
    #                 = 1/2 ln(4/3) ≈ 0.143841
    # (the other direction, KL(p_R || p_LM) = 1/4 ln(1/2) + 3/4 ln(3/2) ≈ 0.130812, differs)
    assert loss.item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)


def test_lsr_loss_applies_both_temperatures_and_averages_over_queries():
    retriever_scores = torch.tensor([[0.0, 2 * math.log(3.0)], [1.0, 1.0]])
    lm_log_likelihoods = torch.tensor([[-1.0, -1.0], [-0.5, -0.5]])

    loss = lsr_loss(retriever_scores, lm_log_likelihoods, retriever_temperature=2.0, lm_temperature=0.01)

    # Row 1: scores / 2 = [0, ln 3] -> the case above, 1/2 ln(4/3); row 2: both uniform -> 0.
    assert loss.item() == pytest.approx(0.25 * math.log(4 / 3), abs=1e-6)


def test_lsr_loss_is_zero_when_the_distributions_match():
    lm_log_likelihoods = torch.tensor([[-0.010, -0.020, -0.015], [-0.03, -0.01, -0.02]])

    # The LM temperature is 0.01, so retriever scores of lm / 0.01 give the same softmax.
    loss = lsr_loss(lm_log_likelihoods / 0.01, lm_log_likelihoods)

    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_lsr_loss_only_moves_the_retriever_and_ignores_masked_chunks():
    retriever_scores = torch.tensor([[1.0, 0.0, 5.0], [0.5, 0.2, 0.1]], requires_grad=True)
    lm_log_likelihoods = torch.tensor([[-0.5, -3.0, 0.0], [-1.0, -2.0, -0.5]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])

    loss = lsr_loss(retriever_scores, lm_log_likelihoods, mask=mask)
    loss.backward()

    unmasked_first_row = lsr_loss(retriever_scores[:1, :2], lm_log_likelihoods[:1, :2])
    unmasked_second_row = lsr_loss(retriever_scores[1:], lm_log_likelihoods[1:])
    assert loss.item() == pytest.approx((unmasked_first_row.item() + unmasked_second_row.item()) / 2, abs=1e-6)
    assert lm_log_likelihoods.grad is None  # the LM's preference is a fixed target
    assert torch.isfinite(retriever_scores.grad).all()
    assert retriever_scores.grad[0, 2] == 0


def test_score_chunks_with_lm_asks_the_scorer_for_every_chunk():
    calls = []

    def scorer(query: str, chunk: str, answer: str) -> float:
        calls.append((query, chunk, answer))
        return -float(len(chunk))

    examples = [
        LsrTrainingExample(query="q1", chunks=["a", "bbb"], answer="x"),
        LsrTrainingExample(query="q2", chunks=["cc"], answer="y"),
    ]

    assert score_chunks_with_lm(lm_scorer=scorer, examples=examples) == [[-1.0, -3.0], [-2.0]]
    assert calls == [("q1", "a", "x"), ("q1", "bbb", "x"), ("q2", "cc", "y")]


# --- LM-supervised retrieval training ---------------------------------------------------


def lsr_examples() -> tuple[list[LsrTrainingExample], list[list[float]]]:
    """Each query's chunks: its echo page, its fact page and another product's fact page.

    The LM finds the gold answer far likelier given the fact page (mean log-probability -0.4
    against -2.5 and -3.0), which the base retriever ranks below the echo page.
    """
    examples, likelihoods = [], []
    for index, example in enumerate(TRAIN[:12]):
        other = TRAIN[(index + 1) % 12].positives[0]
        examples.append(
            LsrTrainingExample(
                query=example.query,
                chunks=[example.hard_negatives[0], example.positives[0], other],
                answer=f"{index + 2}",
            )
        )
        likelihoods.append([-2.5, -0.4, -3.0])
    return examples, likelihoods


def probability_of_preferred_chunk(query_encoder: Path, examples: list[LsrTrainingExample]) -> float:
    queries = Embedder(query_encoder, device="cpu").encode_queries([example.query for example in examples])
    documents = Embedder(BASE, device="cpu")
    probabilities = []
    for query, example in zip(queries, examples):
        scores = torch.tensor(documents.encode_documents(example.chunks) @ query) * 20.0
        probabilities.append(torch.softmax(scores, dim=0)[1].item())
    return float(np.mean(probabilities))


@pytest.mark.slow
def test_lsr_training_moves_probability_to_the_chunk_the_lm_prefers(tmp_path: Path):
    examples, likelihoods = lsr_examples()
    before = probability_of_preferred_chunk(BASE, examples)

    result = train_lsr(
        base_model_path=BASE,
        examples=examples,
        lm_log_likelihoods=likelihoods,
        output_path=tmp_path / "retriever",
        epochs=2,
        batch_size=12,  # one batch of all 12 queries, twice: the two losses are of the same data
        learning_rate=1e-4,
        warmup_ratio=0.0,  # 2 steps: the library's warm-up would spend the first at a learning rate of 0
        device="cpu",
    )

    query_encoder, document_encoder = load_trained_retriever(tmp_path / "retriever")
    assert document_encoder is None  # RA-DIT's default: the query side only
    after = probability_of_preferred_chunk(query_encoder, examples)
    assert after > before + 0.2
    assert result.steps == 2 and result.parameters["method"] == "lsr"
    assert result.training_curve[-1]["loss"] < result.training_curve[0]["loss"]


def test_train_lsr_checks_scores_line_up_with_chunks(tmp_path: Path):
    examples = [LsrTrainingExample(query="q", chunks=["a", "b"], answer="x")]

    with pytest.raises(ValueError, match="example 0 has 2 chunks but 1 LM scores"):
        train_lsr(base_model_path=BASE, examples=examples, lm_log_likelihoods=[[-1.0]], output_path=tmp_path)
    with pytest.raises(ValueError, match="two or more chunks"):
        train_lsr(
            base_model_path=BASE,
            examples=[LsrTrainingExample(query="q", chunks=["a"], answer="x")],
            lm_log_likelihoods=[[-1.0]],
            output_path=tmp_path,
        )


# --- cancellation and determinism -------------------------------------------------------


@pytest.mark.slow
def test_cancellation_stops_at_the_next_step_after_reporting_progress(tmp_path: Path):
    reported: list[tuple[float, dict]] = []

    with pytest.raises(TrainingCancelled) as cancelled:
        train_contrastive(
            base_model_path=BASE,
            examples=TRAIN[:8],
            output_path=tmp_path / "retriever",
            batch_size=2,
            query_only=True,
            device="cpu",
            progress=lambda fraction, metrics: reported.append((fraction, metrics)),
            should_stop=lambda: len(reported) >= 2,
        )

    assert cancelled.value.step == 3
    assert [fraction for fraction, _ in reported] == [0.25, 0.5]
    assert [metrics["step"] for _, metrics in reported] == [1, 2]
    assert all(math.isfinite(metrics["loss"]) for _, metrics in reported)
    assert not (tmp_path / "retriever").exists()  # a cancelled run leaves nothing to promote


@pytest.mark.slow
def test_same_seed_gives_the_same_first_step(tmp_path: Path):
    def first_step_loss(seed: int) -> float:
        losses: list[float] = []
        with pytest.raises(TrainingCancelled):
            train_contrastive(
                base_model_path=BASE,
                examples=TRAIN,
                output_path=tmp_path / "unused",
                batch_size=4,
                seed=seed,
                device="cpu",
                progress=lambda fraction, metrics: losses.append(metrics["loss"]),
                should_stop=lambda: bool(losses),
            )
        return losses[0]

    first = first_step_loss(3)

    assert first_step_loss(3) == first
    # A different seed draws a different first batch (and different dropout).
    assert first_step_loss(4) != first


# --- the cached variant (GradCache) ------------------------------------------------------


def build_tiny_retriever(folder: Path, *, dropout: float) -> Path:
    """A randomly initialised 2-layer BERT retriever with MiniLM's tokenizer, saved under folder
    (the plain BERT in folder / "bert", the retriever in folder / "retriever")."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(BASE))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    transformer = Transformer(str(folder / "bert"), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(32, "mean"), Normalize()], device="cpu")
    model.save(str(folder / "retriever"))
    return folder / "retriever"


@pytest.fixture(scope="module")
def tiny_retriever(tmp_path_factory) -> Path:
    """The tiny retriever with no dropout, so two ways of computing the same gradients must give
    the same weights."""
    return build_tiny_retriever(tmp_path_factory.mktemp("tiny-retriever"), dropout=0.0)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from sentence_transformers import SentenceTransformer

    return {name: tensor.detach().clone() for name, tensor in SentenceTransformer(str(folder), device="cpu").state_dict().items()}


def _count_encoder_widths(monkeypatch) -> list[int]:
    """How many texts each training pass of a SentenceTransformer encodes at once, from here on
    (not the frozen encoder's, which runs in eval mode)."""
    from sentence_transformers import SentenceTransformer

    widths: list[int] = []
    real_forward = SentenceTransformer.forward

    def forward(self, features, *args, **kwargs):
        if self.training:
            widths.append(int(features["input_ids"].shape[0]))
        return real_forward(self, features, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "forward", forward)
    return widths


@pytest.mark.parametrize("query_only", [False, True])
def test_cached_variant_encodes_in_mini_batches_and_trains_the_same_weights(
    tiny_retriever: Path, tmp_path: Path, monkeypatch, query_only: bool
):
    """GradCache is the library's CachedLossMixin under our loss: the same gradients, so the same
    weights, with the encoder never seeing more than mini_batch_size texts."""
    widths = _count_encoder_widths(monkeypatch)

    def train(mini_batch_size, folder):
        widths.clear()
        result = train_contrastive(
            base_model_path=tiny_retriever, examples=TRAIN[:12], output_path=tmp_path / folder, epochs=2, batch_size=6,
            learning_rate=1e-3, warmup_ratio=0.0, seed=1, query_only=query_only, mini_batch_size=mini_batch_size,
            device="cpu",
        )  # fmt: skip
        return result, max(widths)

    plain, plain_widest = train(None, "plain")
    cached, cached_widest = train(2, "cached")

    # Without the cache a step encodes its 6 queries (and 12 candidates) at once; with it, 2 texts at most.
    assert plain_widest == (6 if query_only else 12) and cached_widest == 2
    assert cached.parameters["mini_batch_size"] == 2 and cached.steps == plain.steps == 4
    assert [p["loss"] for p in cached.training_curve] == pytest.approx([p["loss"] for p in plain.training_curve], rel=1e-4)
    encoder = "query_encoder" if query_only else "encoder"
    base, plain_weights, cached_weights = (
        _weights(tiny_retriever), _weights(tmp_path / "plain" / encoder), _weights(tmp_path / "cached" / encoder)
    )  # fmt: skip
    moved = max((plain_weights[name] - base[name]).abs().max().item() for name in base)
    assert moved > 1e-3, "training must move the weights for this comparison to mean anything"
    for name in base:
        torch.testing.assert_close(cached_weights[name], plain_weights[name], rtol=1e-4, atol=1e-5, msg=name)


def test_gradient_accumulation_makes_one_optimiser_step_of_several_batches(tiny_retriever: Path, tmp_path: Path):
    """12 pairs in batches of 3 are 4 batches an epoch; accumulating 2 of them per step halves the
    steps, and a step's loss is the mean of its two batches' (each batch is its own softmax)."""

    def train(folder, accumulation):
        return train_contrastive(
            base_model_path=tiny_retriever, examples=TRAIN[:12], output_path=tmp_path / folder, epochs=2, batch_size=3,
            gradient_accumulation_steps=accumulation, learning_rate=1e-3, warmup_ratio=0.5, seed=1, device="cpu",
        )  # fmt: skip

    stepwise, accumulated = train("stepwise", 1), train("accumulated", 2)

    assert (stepwise.steps, accumulated.steps) == (8, 4)
    assert accumulated.parameters["gradient_accumulation_steps"] == 2
    assert [p["step"] for p in accumulated.training_curve] == [1, 2, 3, 4]
    # The warm-up's first step has a learning rate of 0, so the stepwise run's second batch still
    # sees the initial weights: the accumulated first step is the mean of those two batches.
    first, second = (p["loss"] for p in stepwise.training_curve[:2])
    assert accumulated.training_curve[0]["loss"] == pytest.approx((first + second) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be at least 1"):
        train("zero", 0)


# --- query-only against the frozen vectors the index stores -------------------------------


def _stored(model_folder: Path, texts: list[str]) -> np.ndarray:
    """Vectors as the index would store them: the frozen encoder's document embeddings."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_folder), device="cpu")
    return model.encode_document(texts, normalize_embeddings=True, convert_to_numpy=True)


def test_given_the_stored_vectors_query_only_training_encodes_no_document_and_trains_the_same_weights(
    tiny_retriever: Path, tmp_path: Path, monkeypatch
):
    import rag.training.retriever as retriever_module
    from rag.training.retriever import FrozenDocuments

    examples = TRAIN[:8]
    texts = [text for example in examples for text in (*example.positives, *example.hard_negatives)]
    frozen = FrozenDocuments(texts=texts, vectors=_stored(tiny_retriever, texts))

    def train(folder, frozen_documents):
        return train_contrastive(
            base_model_path=tiny_retriever, examples=examples, output_path=tmp_path / folder, epochs=1, batch_size=4,
            learning_rate=1e-3, warmup_ratio=0.0, seed=1, query_only=True, frozen_documents=frozen_documents, device="cpu",
        )  # fmt: skip

    encoded = train("encoded", None)
    real_frozen = retriever_module._frozen_document_embeddings
    calls = []
    monkeypatch.setattr(retriever_module, "_frozen_document_embeddings", lambda *a: (calls.append(a), real_frozen(*a))[1])
    read = train("read", frozen)

    assert calls == []  # nothing the index holds was encoded again
    assert (read.parameters["frozen_vectors_given"], read.parameters["frozen_texts_encoded"]) == (16, 0)
    assert encoded.parameters["frozen_texts_encoded"] == 16
    assert [p["loss"] for p in read.training_curve] == pytest.approx([p["loss"] for p in encoded.training_curve], rel=1e-5)
    for name, tensor in _weights(tmp_path / "encoded" / "query_encoder").items():
        torch.testing.assert_close(_weights(tmp_path / "read" / "query_encoder")[name], tensor, rtol=1e-5, atol=1e-6, msg=name)

    # A text the caller did not hand in is still encoded by the frozen encoder, and only that one.
    partial = FrozenDocuments(texts=texts[1:], vectors=frozen.vectors[1:])
    calls.clear()
    assert train("partial", partial).parameters["frozen_texts_encoded"] == 1
    assert [len(texts_encoded) for _, texts_encoded in calls] == [1]


def test_corpus_negatives_score_each_query_against_every_stored_vector_with_its_other_positives_masked(
    tiny_retriever: Path, tmp_path: Path
):
    from sentence_transformers import SentenceTransformer

    from rag.training.retriever import FrozenDocuments

    # Two queries; the first has two positives (two pairs), and the corpus holds unrelated chunks
    # that no batch would ever hold, and a duplicate of a positive's text.
    examples = [
        RetrievalTrainingExample(query=TRAIN[0].query, positives=[TRAIN[0].positives[0], TRAIN[1].positives[0]]),
        RetrievalTrainingExample(query=TRAIN[2].query, positives=TRAIN[2].positives),
    ]
    corpus = [TRAIN[0].positives[0], TRAIN[1].positives[0], TRAIN[2].positives[0], *[e.hard_negatives[0] for e in TRAIN[3:9]],
              TRAIN[2].positives[0]]  # fmt: skip
    vectors = _stored(tiny_retriever, corpus)
    losses = []
    result = train_contrastive(
        base_model_path=tiny_retriever, examples=examples, output_path=tmp_path / "one-step", epochs=1, batch_size=3,
        learning_rate=1e-3, warmup_ratio=0.0, seed=0, query_only=True, device="cpu", corpus_negatives=True,
        frozen_documents=FrozenDocuments(texts=corpus, vectors=vectors),
        progress=lambda fraction, metrics: losses.append(metrics["loss"]),
    )  # fmt: skip
    assert result.steps == 1 and result.parameters["corpus_negatives"] == 10

    # By hand: every pair's query against all 10 stored vectors, scale 20; the first query's other
    # positive is masked for each of its pairs, the duplicate row of the second query's positive too.
    model = SentenceTransformer(str(tiny_retriever), device="cpu")
    queries = model.encode_query([examples[0].query, examples[0].query, examples[1].query], normalize_embeddings=True)
    logits = queries @ vectors.T * SIMILARITY_SCALE
    masks = [[1], [0], [9]]
    targets = [0, 1, 2]
    expected = []
    for row, target, mask in zip(logits, targets, masks):
        kept = np.delete(row, mask)
        kept_target = target - sum(m < target for m in mask)
        expected.append(-(kept[kept_target] - np.log(np.exp(kept).sum())))
    assert losses[0] == pytest.approx(float(np.mean(expected)), rel=1e-4)


def test_corpus_negatives_need_query_only_and_the_stored_vectors(tmp_path: Path):
    from rag.training.retriever import FrozenDocuments

    with pytest.raises(ValueError, match="corpus_negatives needs query_only and the frozen document vectors"):
        train_contrastive(base_model_path=BASE, examples=TRAIN, output_path=tmp_path / "x", corpus_negatives=True,
                          frozen_documents=FrozenDocuments(texts=[], vectors=np.zeros((0, 384))))  # fmt: skip
    with pytest.raises(ValueError, match="2 texts but 1 vectors"):
        FrozenDocuments(texts=["a", "b"], vectors=np.zeros((1, 384)))
