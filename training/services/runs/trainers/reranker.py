"""The reranker trainer adapter: a cross-encoder trained from the snapshot's graded judgments
(relevant 1.0, partly 0.5, not relevant 0.0) and negatives mined from the first stage.

Mined negatives are the first stage's top `top_k` chunks for the query as serving retrieves
them (the knowledge base's retrieval mode, no reranker), minus every known positive: a chunk
judged relevant or partly relevant, one with the same text, or another chunk of a document
judged so (judgments are often document-level; another chunk of a relevant document is a
likely false negative). Up to `mined_negatives` are kept per query.

It always starts from the packaged base MiniLM: a bi-encoder checkpoint, which sentence-
transformers loads as a cross-encoder with a freshly initialised classification head. Each
version is trained on its whole snapshot, so its lineage is its snapshot, not its parent's weights.
"""

from pathlib import Path

from knowledge.errors import InvalidInput
from training.models import TrainingRun
from training.services.runs import inputs
from training.services.runs.shared import Reporter, Trained, run_checkpointing


def _whole_documents(example) -> list[str]:
    judged = (*example.relevant, *example.partly, *example.irrelevant)
    return sorted({p.document_id for p in judged if p.chunk_id is None and p.document_id})


def _mined(*, knowledge_base, example, top_k: int, limit: int) -> list[str]:
    from knowledge.selectors import passages_search

    if limit == 0:
        return []
    positives = (*example.relevant, *example.partly)
    chunk_ids = {p.chunk_id for p in positives if p.chunk_id}
    texts = {inputs.text_key(p.text) for p in positives}
    documents = {p.document_id for p in positives if p.document_id}
    candidates = passages_search(knowledge_base=knowledge_base, query=example.query, k=top_k, rerank=False).passages
    negatives = [
        chunk.text
        for chunk in candidates
        if chunk.chunk_id not in chunk_ids and inputs.text_key(chunk.text) not in texts and chunk.document_external_id not in documents
    ]
    return negatives[:limit]


def train_cross_encoder(*, run: TrainingRun, folder: Path, reporter: Reporter) -> Trained:
    from knowledge.selectors import best_chunk_per_document
    from rag.embedding import base_retriever_path
    from rag.training import reranker as reranker_training

    parameters = run.parameters
    examples = [example for example in inputs.train_examples(run) if example.relevant or example.partly]
    if not examples:
        raise InvalidInput("No training example has a passage judged relevant or partly relevant.")
    live, _ = inputs.live_retriever(run)
    reporter.phase(
        f"mining negatives from the first stage ({run.knowledge_base.retrieval_mode}, {live.version}) for "
        f"{len(examples)} queries",
        low=0.0,
        high=0.1,
    )
    training_examples = []
    for done, example in enumerate(examples, start=1):
        reporter.raise_if_stopped()
        best = best_chunk_per_document(
            space=live.space, query=example.query, document_external_ids=_whole_documents(example),
            query_model_reference=live.query_model_reference,
        )  # fmt: skip

        def texts(passages, best=best):
            return [inputs._chunk_text(p, best) for p in passages]

        training_examples.append(
            reranker_training.RerankerTrainingExample(
                query=example.query,
                relevant=texts(example.relevant),
                partly=texts(example.partly),
                not_relevant=texts(example.irrelevant),
                mined=_mined(
                    knowledge_base=run.knowledge_base, example=example, top_k=parameters["top_k"],
                    limit=parameters["mined_negatives"],
                ),  # fmt: skip
                repeats=inputs.example_weight(run, example),
            )
        )
        reporter.tick(done, len(examples))
    base = base_retriever_path()
    reporter.phase(f"training the cross-encoder from the packaged base model on {len(training_examples)} queries", low=0.1, high=0.95)
    try:
        result = reranker_training.train_reranker(
            base_model_path=base,
            examples=training_examples,
            output_path=folder,
            epochs=parameters["epochs"],
            batch_size=parameters["batch_size"],
            learning_rate=parameters["learning_rate"],
            warmup_ratio=parameters["warmup_ratio"],
            seed=parameters["seed"],
            max_length=parameters["max_length"],
            loss=parameters.get("loss", "bce"),
            device=parameters.get("device"),
            progress=reporter.progress,
            should_stop=reporter.should_stop,
            checkpointing=run_checkpointing(run=run, folder=folder, reporter=reporter),
        )
    except ValueError as error:
        raise InvalidInput(str(error)) from error
    counts = result.pair_counts
    reporter.write(
        note=f"trained on {sum(counts[k] for k in ('relevant', 'partly', 'not_relevant', 'mined'))} pairs "
        f"({counts['relevant']} relevant, {counts['partly']} partly, {counts['not_relevant']} not relevant, "
        f"{counts['mined']} mined; {counts['mined_dropped_as_positive']} mined candidates dropped as known positives)"
    )
    return Trained(folder, {}, {**result.parameters, "first_stage": live.version}, result.training_curve)
