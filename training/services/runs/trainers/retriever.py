"""Retriever trainer adapters: contrastive (full or query-only) and LSR (trained towards a
language model's preferences among the live retriever's chunks), and a trained retriever's version fields.

Retrievers retrieve and train on an example's self-contained query (for a follow-up, the
corrected query or the rewrite serving retrieved with); LSR's language model scores a chunk
as the generator would be asked: the user's question after the conversation's history."""

import sys
from pathlib import Path
from typing import Any

from knowledge.artifact_store import artifact_relative_path
from knowledge.errors import InvalidInput
from training.models import TrainingRun
from training.services.runs import inputs
from training.services.runs.shared import Reporter, Trained, run_checkpointing
from training.services.snapshots import history_as_served


def _free_accelerator_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _relative(path: Path) -> str:
    """A path under the artifacts folder as knowledge resolves model references: relative to it."""
    return artifact_relative_path(path=path)


def _retriever_fields(*, folder: Path, live, query_only: bool) -> tuple[dict[str, Any], str]:
    from rag.training.retriever import load_trained_retriever

    query_encoder, document_encoder = load_trained_retriever(folder)
    if query_only:
        # Document vectors stay valid: the candidate shares the live space.
        return {"embedding_space": live.space, "query_model_reference": _relative(query_encoder)}, ""
    reference = _relative(document_encoder)
    return {"query_model_reference": reference, "dimensions": live.space.dimensions}, reference


def train_contrastive(*, run: TrainingRun, folder: Path, reporter: Reporter) -> Trained:
    from rag.training import retriever as retriever_training

    parameters = run.parameters
    query_only = run.mode == "contrastive_query_only"
    examples = [example for example in inputs.train_examples(run) if example.relevant]
    if not examples:
        raise InvalidInput("No training example has a passage judged relevant.")
    live, base_model = inputs.live_retriever(run, query_only=query_only, reporter=reporter)
    reporter.phase(f"mining negatives with the live retriever ({live.version})", low=0.0, high=0.05)
    mined = inputs.mine_negatives(
        examples=examples, live=live, top_k=parameters["top_k"], limit=parameters["mined_negatives"], reporter=reporter
    )
    training_examples = inputs.examples_in_chunks(
        examples=examples, live=live, reporter=reporter, weight=lambda example: inputs.example_weight(run, example)
    )
    frozen_documents, corpus_negatives = None, False
    if query_only:
        # The frozen side as the index stores it: read, not encoded again (rag takes vectors).
        from knowledge.selectors import space_stored_vectors

        limit = parameters.get("corpus_negatives", 0)
        reporter.phase(f"reading up to {limit or 'no'} stored vectors of {live.space.retriever_version}", low=0.05, high=0.07)
        if limit:
            texts, vectors = space_stored_vectors(space=live.space, limit=limit, seed=parameters["seed"])
            frozen_documents = retriever_training.FrozenDocuments(texts=texts, vectors=vectors)
            corpus_negatives = bool(texts)
    reporter.phase(
        f"training {'the query encoder' if query_only else 'the encoder'} from {live.space.retriever_version} "
        f"on {len(training_examples)} queries",
        low=0.07,
        high=0.95,
    )
    result = retriever_training.train_contrastive(
        base_model_path=base_model,
        examples=training_examples,
        output_path=folder,
        epochs=parameters["epochs"],
        batch_size=parameters["batch_size"],
        learning_rate=parameters["learning_rate"],
        warmup_ratio=parameters["warmup_ratio"],
        seed=parameters["seed"],
        query_only=query_only,
        gradient_accumulation_steps=parameters.get("gradient_accumulation_steps", 1),  # runs before it lack it
        mined_negatives=mined,
        mini_batch_size=parameters.get("mini_batch_size"),
        frozen_documents=frozen_documents,
        corpus_negatives=corpus_negatives,
        device=parameters.get("device"),
        progress=reporter.progress,
        should_stop=reporter.should_stop,
        checkpointing=run_checkpointing(run=run, folder=folder, reporter=reporter),
    )
    fields, space_reference = _retriever_fields(folder=folder, live=live, query_only=query_only)
    return Trained(folder, fields, result.parameters, result.training_curve, space_reference)


def train_corpus_pairs(*, run: TrainingRun, folder: Path, reporter: Reporter) -> Trained:
    """RA-DIT's corpus data: chunks of the live space split into (opening span, continuation)
    pairs, trained contrastively with in-batch negatives; no snapshot, no label."""
    from knowledge.selectors import space_chunks_sample
    from rag.corpus_pairs import corpus_pairs
    from rag.training import retriever as retriever_training

    parameters = run.parameters
    live, base_model = inputs.live_retriever(run, query_only=parameters["query_only"], reporter=reporter)
    reporter.phase(f"drawing up to {parameters['max_chunks']} chunks of {live.space.retriever_version}", low=0.0, high=0.03)
    chunks = space_chunks_sample(space=live.space, limit=parameters["max_chunks"], seed=parameters["seed"])
    pairs = corpus_pairs(
        ((str(chunk_id), text) for chunk_id, text in chunks),
        seed=parameters["seed"],
        min_query_words=parameters["min_query_words"],
        max_query_words=parameters["max_query_words"],
        min_positive_words=parameters["min_positive_words"],
    )
    if not pairs:
        raise InvalidInput(
            f"None of the {len(chunks)} chunks drawn has the {parameters['min_query_words']} + "
            f"{parameters['min_positive_words']} words a corpus pair needs."
        )
    reporter.phase(
        f"training {'the query encoder' if parameters['query_only'] else 'the encoder'} from "
        f"{live.space.retriever_version} on {len(pairs)} corpus pairs of {len(chunks)} chunks (no labels)",
        low=0.03,
        high=0.95,
    )
    result = retriever_training.train_corpus_pairs(
        base_model_path=base_model,
        pairs=pairs,
        chunk_count=len(chunks),
        output_path=folder,
        query_only=parameters["query_only"],
        epochs=parameters["epochs"],
        batch_size=parameters["batch_size"],
        learning_rate=parameters["learning_rate"],
        warmup_ratio=parameters["warmup_ratio"],
        seed=parameters["seed"],
        mini_batch_size=parameters.get("mini_batch_size"),
        device=parameters.get("device"),
        progress=reporter.progress,
        should_stop=reporter.should_stop,
        checkpointing=run_checkpointing(run=run, folder=folder, reporter=reporter),
    )
    fields, space_reference = _retriever_fields(folder=folder, live=live, query_only=parameters["query_only"])
    return Trained(folder, fields, result.parameters, result.training_curve, space_reference)


def train_lsr(*, run: TrainingRun, folder: Path, reporter: Reporter) -> Trained:
    from rag.generation import ContextPassage, HFGenerator
    from rag.training import retriever as retriever_training

    parameters = run.parameters
    examples = [example for example in inputs.train_examples(run) if example.gold_answer.strip()]
    if not examples:
        raise InvalidInput("No training example has a gold answer.")
    live, base_model = inputs.live_retriever(run, query_only=parameters["query_only"], reporter=reporter)
    reporter.phase(f"retrieving the top {parameters['top_k']} chunks with {live.version}", low=0.0, high=0.05)
    lsr_examples = []
    for done, example in enumerate(examples, start=1):
        reporter.raise_if_stopped()
        chunks = [chunk.text for chunk in inputs.retrieve(live, example.query, parameters["top_k"])]
        lsr_examples.append(
            retriever_training.LsrTrainingExample(query=example.query, chunks=chunks, answer=example.gold_answer.strip())
        )
        reporter.tick(done, len(examples))
    reporter.phase(f"scoring chunks with the language model {parameters['base_model']}", low=0.05, high=0.35)
    language_model = HFGenerator(model_path=parameters["base_model"], device=parameters.get("device"))
    total = sum(len(example.chunks) for example in lsr_examples)
    scored = 0

    def lm_scorer(question: str, history, chunk: str, answer: str) -> float:
        nonlocal scored
        reporter.raise_if_stopped()
        score = language_model.answer_log_likelihood(
            query=question, passage=ContextPassage(text=chunk), answer=answer, history=history
        )
        scored += 1
        reporter.tick(scored, total)
        return score

    # Not score_chunks_with_lm: its scorer sees only the self-contained query, and a follow-up
    # is scored with the user's own question after its history, as the generator answers it.
    lm_scores = [
        [
            lm_scorer(example.user_question, history_as_served(example.history), chunk, lsr_example.answer)
            for chunk in lsr_example.chunks
        ]
        for example, lsr_example in zip(examples, lsr_examples)
    ]
    del language_model  # free its memory before the retriever trains
    _free_accelerator_memory()
    # Examples tagged with a retrieval failure count more: repeated after scoring, so the LM
    # scores each query once.
    weights = [inputs.example_weight(run, example) for example in examples]
    lsr_examples = [lsr_example for lsr_example, n in zip(lsr_examples, weights) for _ in range(n)]
    lm_scores = [scores for scores, n in zip(lm_scores, weights) for _ in range(n)]
    reporter.phase(f"training the retriever on {len(lsr_examples)} queries (KL to the LM's preferences)", low=0.35, high=0.95)
    result = retriever_training.train_lsr(
        base_model_path=base_model,
        examples=lsr_examples,
        lm_log_likelihoods=lm_scores,
        output_path=folder,
        query_only=parameters["query_only"],
        epochs=parameters["epochs"],
        batch_size=parameters["batch_size"],
        learning_rate=parameters["learning_rate"],
        warmup_ratio=parameters["warmup_ratio"],
        gradient_accumulation_steps=parameters.get("gradient_accumulation_steps", 1),
        retriever_temperature=parameters["retriever_temperature"],
        lm_temperature=parameters["lm_temperature"],
        seed=parameters["seed"],
        device=parameters.get("device"),
        progress=reporter.progress,
        should_stop=reporter.should_stop,
        checkpointing=run_checkpointing(run=run, folder=folder, reporter=reporter),
    )
    fields, space_reference = _retriever_fields(folder=folder, live=live, query_only=parameters["query_only"])
    return Trained(
        folder, fields, {**result.parameters, "lm": parameters["base_model"]}, result.training_curve, space_reference
    )
