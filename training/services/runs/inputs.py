"""Training inputs built from a run's snapshot: its train examples (those tagged with a failure
the component can fix repeated), the live retriever and its top-k chunks, mined hard negatives,
and passages judged as whole documents turned into chunks."""

from curation.models import ANSWER_INCOMPLETE, ANSWER_NOT_GROUNDED, RETRIEVAL_MISS, WRONG_PASSAGE_FIRST
from knowledge.errors import InvalidInput
from rag.datasets import example_repeats, examples_repeated
from training.models import Component, ModelVersion, SnapshotExample, TrainingRun
from training.services.runs.shared import Reporter
from training.services.snapshots import snapshot_dataset_examples


def text_key(text: str) -> str:
    return " ".join(text.split())


# The failure tags whose examples weigh more in each component's training (docs/failure-tags.md):
# the retriever should learn first from turns where it missed the passage or ranked a wrong
# one first, the generator from answers that were not grounded in, or left out part of, the
# passages. Other tags (stale document, out of scope) are no model's fault: they weigh 1.
WEIGHTED_FAILURE_TAGS = {
    Component.RETRIEVER: frozenset({RETRIEVAL_MISS, WRONG_PASSAGE_FIRST}),
    Component.GENERATOR: frozenset({ANSWER_NOT_GROUNDED, ANSWER_INCOMPLETE}),
    # The reranker puts the first stage's candidates in order: a wrong passage first is its failure.
    Component.RERANKER: frozenset({RETRIEVAL_MISS, WRONG_PASSAGE_FIRST}),
}
DEFAULT_FAILURE_TAG_REPEATS = 2  # also the run parameter's default (parameters.py)


def train_examples(run: TrainingRun):
    return snapshot_dataset_examples(snapshot=run.snapshot, split=SnapshotExample.Split.TRAIN)


def failure_tag_repeats(run: TrainingRun) -> int:
    # A run queued before the parameter existed takes the default.
    return run.parameters.get("failure_tag_repeats", DEFAULT_FAILURE_TAG_REPEATS)


def example_weight(run: TrainingRun, example) -> int:
    """How many times the run trains on the example (its component's failure tags repeat it)."""
    return example_repeats(
        example, weighted_tags=WEIGHTED_FAILURE_TAGS[run.component], repeats=failure_tag_repeats(run)
    )


def weighted(run: TrainingRun, examples) -> list:
    """`examples` with each one the run's component should learn more from repeated."""
    return examples_repeated(examples, weighted_tags=WEIGHTED_FAILURE_TAGS[run.component], repeats=failure_tag_repeats(run))


def live_retriever(run: TrainingRun, *, query_only: bool = False, reporter: Reporter | None = None):
    """The retriever a run starts from (what serving uses now) and the folder of the encoder it
    trains from: the live space's document encoder. In query-only mode that encoder produced the
    stored vectors the new query encoder must match.

    Erasure: when the version that trained that encoder saw erased data (trained_on_erased_data),
    the run must not start from its weights, or the replacement would keep what it learnt. It
    starts from the nearest clean ancestor's encoder instead (erasure flags every descendant of a
    flagged version, so the first clean ancestor is clean all the way up), else the base model.
    A query-only run then needs that encoder's own vectors: it trains against the clean space and
    refuses when that space no longer holds them (a full-mode run re-embeds, so it always can).
    """
    from knowledge.selectors import RetrieverChoice, retriever_for
    from knowledge.services.knowledge_bases import retriever_model_path

    live = retriever_for(knowledge_base=run.knowledge_base)
    clean = clean_encoder_space(run.knowledge_base, live.space)
    if clean == live.space:
        return live, retriever_model_path(live.space.model_reference)
    from knowledge.models import EmbeddingSpace

    why = f"the live retriever's encoder ({live.space.retriever_version}) was trained on erased data"
    if query_only:
        if clean.status != EmbeddingSpace.Status.READY:
            raise InvalidInput(
                f"A query-only run cannot replace {live.version}: {why}, and the nearest clean encoder's space "
                f"({clean.retriever_version}) is {clean.state_label}, so there are no clean document vectors to "
                "train against. Train in full mode (contrastive), which re-embeds the corpus."
            )
        start = RetrieverChoice(clean.retriever_version, clean, clean.model_reference)
    else:
        # Mining and chunk lookup read the live space's vectors; only the weights must be clean.
        start = live
    if reporter is not None:
        reporter.phase(f"starting from the encoder of {clean.retriever_version}: {why}", low=0.0, high=0.0)
    return start, retriever_model_path(clean.model_reference)


def clean_encoder_space(knowledge_base, space):
    """The space whose encoder a retriever run may start from: `space`, unless the version that
    trained its encoder is flagged trained_on_erased_data; then the space of its nearest clean
    ancestor, else the knowledge base's base space."""
    from knowledge.models import EmbeddingSpace
    from knowledge.services.knowledge_bases import BASE_MODEL_REFERENCE

    versions = ModelVersion.objects.filter(knowledge_base=knowledge_base, component=Component.RETRIEVER)
    while space is not None and space.model_reference != BASE_MODEL_REFERENCE:
        owner = versions.filter(name=space.retriever_version).select_related("parent").first()
        if owner is None or not owner.trained_on_erased_data:
            return space
        ancestor = owner.parent
        while ancestor is not None and ancestor.trained_on_erased_data:
            ancestor = ancestor.parent
        # A query-only ancestor shares an older space: its owner is checked on the next pass.
        space = ancestor.embedding_space if ancestor is not None else None
    if space is None:
        space = EmbeddingSpace.objects.filter(knowledge_base=knowledge_base, model_reference=BASE_MODEL_REFERENCE).first()
    return space


def retrieve(live, query: str, k: int):
    from knowledge.selectors import passages_retrieve

    return passages_retrieve(space=live.space, query=query, k=k, query_model_reference=live.query_model_reference)


def mine_negatives(*, examples, live, top_k: int, limit: int, reporter: Reporter) -> dict[str, list[str]]:
    """Per query, up to `limit` of the live retriever's top-k chunks that no label judged relevant.

    Chunks of a document judged relevant are left out too: judgments are often made at the
    document level (BEIR qrels, imported labels), and another chunk of a relevant document
    is a likely false negative (the SciFact benchmark found 46% of mined negatives were).
    """
    if limit == 0:
        return {}
    relevant_ids: dict[str, set[int]] = {}
    relevant_texts: dict[str, set[str]] = {}
    relevant_documents: dict[str, set[str]] = {}
    for example in examples:
        relevant_ids.setdefault(example.query, set()).update(p.chunk_id for p in example.relevant if p.chunk_id)
        relevant_texts.setdefault(example.query, set()).update(text_key(p.text) for p in example.relevant)
        relevant_documents.setdefault(example.query, set()).update(p.document_id for p in example.relevant if p.document_id)
    queries = list(relevant_ids)
    mined: dict[str, list[str]] = {}
    for done, query in enumerate(queries, start=1):
        reporter.raise_if_stopped()
        negatives = [
            chunk.text
            for chunk in retrieve(live, query, top_k)
            if chunk.chunk_id not in relevant_ids[query]
            and text_key(chunk.text) not in relevant_texts[query]
            and chunk.document_external_id not in relevant_documents[query]
        ]
        mined[query] = negatives[:limit]
        reporter.tick(done, len(queries))
    return mined


def examples_in_chunks(*, examples, live, reporter: Reporter, weight=None):
    """Contrastive examples whose passages are chunks, the unit the index holds and ranks.

    A passage judged without a chunk (an imported document-level judgment such as a BEIR
    qrel: the whole document) becomes that document's chunk the live retriever scores highest
    for the query, as document-level evaluation credits a document at its best chunk.
    Training on the whole text instead would teach the encoder on inputs it never embeds:
    documents longer than the encoder's window, truncated, against chunk-sized negatives (on
    SciFact, query-only training reached dev nDCG@10 0.837 on best chunks, 0.824 on whole
    abstracts). A passage whose document is not in the knowledge base keeps its text.

    `weight(example)`, when given, is each example's `repeats` (see `example_weight`).
    """
    from knowledge.selectors import best_chunk_per_document
    from rag.training import retriever as retriever_training

    judged_whole = sum(len(_documents_judged_whole(example)) for example in examples)
    if judged_whole:
        reporter.phase(f"finding the best chunk of {judged_whole} document(s) judged as a whole", low=0.05, high=0.07)
    training_examples = []
    for done, example in enumerate(examples, start=1):
        if judged_whole:  # a database round trip per query: a phase of its own, which can be cancelled
            reporter.raise_if_stopped()
        best = best_chunk_per_document(
            space=live.space, query=example.query, document_external_ids=_documents_judged_whole(example),
            query_model_reference=live.query_model_reference,
        )  # fmt: skip
        training_examples.append(
            retriever_training.RetrievalTrainingExample(
                query=example.query,
                positives=[_chunk_text(p, best) for p in example.relevant],
                hard_negatives=[_chunk_text(p, best) for p in example.irrelevant],
                repeats=weight(example) if weight is not None else 1,
            )
        )
        if judged_whole:
            reporter.tick(done, len(examples))
    return training_examples


def _documents_judged_whole(example) -> list[str]:
    """The documents an example judges as a whole: passages that name a document but no chunk."""
    return sorted({p.document_id for p in (*example.relevant, *example.irrelevant) if p.chunk_id is None and p.document_id})


def _chunk_text(passage, best_chunks: dict) -> str:
    if passage.chunk_id is None and passage.document_id in best_chunks:
        return best_chunks[passage.document_id].text
    return passage.text
