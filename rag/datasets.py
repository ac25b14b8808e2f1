"""Curated dataset examples, their stable train / held-out split, and the export formats built
from them: OpenAI chat fine-tuning, RAFT, sentence-transformers pairs and triplets, and BEIR.

The Django side turns a dataset snapshot's labels into `DatasetExample`s; everything here is
plain data in, JSON-able records out, and the caller writes the JSONL (or TSV) files.

Every record exporter returns an `ExportResult`: the records, plus how many examples it left
out and why ({"no_gold_answer": 3}), so the snapshot page can say what a file does not hold.
The records are a list rather than a stream because a curated dataset is thousands of
examples, not millions; an `ExportResult` still iterates over its records, so
`for record in export_openai(examples)` works.

One module (~540 lines): every format reads the same `DatasetExample` and the same split, so
a change to either is seen by every exporter at once.

Conversations: an example of a follow-up question carries two texts. `query` is the
self-contained query retrieval used (what retrievers train and are evaluated on, and what the
split is keyed on); `question` is what the user typed, with `history` the messages before it.
Formats that train a generator (OpenAI chat, RAFT) give it the user's question after the
history, as serving does; formats that train a retriever (triplets, pairs, BEIR) use `query`.
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from rag.conversation import ChatMessage, history_within_budget
from rag.generation import SYSTEM_PROMPT, ContextPassage, chat_messages

# The serving prompt: a model fine-tuned on these records then sees at training time exactly
# the system message it gets when it answers through the ask API.
DEFAULT_SYSTEM_PROMPT = SYSTEM_PROMPT
# How much of a conversation's earlier messages a chat record keeps, in whitespace-separated
# words (rag.conversation.history_within_budget's count): the newest whole exchanges that fit,
# oldest dropped first. The default of serving's RAGLOOP_CHAT_HISTORY_TOKENS, so a record holds
# what the generator was shown; training.services.exports passes the configured value.
DEFAULT_HISTORY_WORDS = 1500

SPLIT_TRAIN = "train"
SPLIT_HELDOUT = "heldout"

# Why an exporter left an example out (keys of ExportResult.skipped).
NO_GOLD_ANSWER = "no_gold_answer"
NO_CONTEXT = "no_context"
NO_RELEVANT_PASSAGE = "no_relevant_passage"
NO_HARD_NEGATIVE = "no_hard_negative"

BEGIN_QUOTE = "##begin_quote##"
END_QUOTE = "##end_quote##"
ANSWER_TAG = "<ANSWER>:"


@dataclass(frozen=True)
class LabeledPassage:
    """A passage as a curator judged it: its text and, where known, where it came from."""

    text: str
    document_id: str = ""
    chunk_id: int | None = None
    title: str = ""


def chat_history(messages: Sequence[ChatMessage | dict]) -> list[ChatMessage]:
    """`messages` as ChatMessages: stored histories are lists of {"role", "content"} dicts."""
    return [m if isinstance(m, ChatMessage) else ChatMessage(role=m["role"], content=m["content"]) for m in messages]


@dataclass(frozen=True)
class DatasetExample:
    """One curated query: its gold answer and the passages judged for it.

    `query` is the self-contained query retrieval used: for a follow-up question, a curator's
    corrected query, else the rewrite serving made, else the question itself. `question` is the
    question as the user asked it when that differs (blank otherwise; `user_question` gives
    it either way), and `history` the conversation's messages before it, a system message
    first if the app sent one (ChatMessages; dicts are accepted and converted).

    `relevant` are the passages curators marked relevant (retrieved or attached from a corpus
    search); `irrelevant` are retrieved passages they marked not relevant, the hard negatives;
    `retrieved` is the retriever's top k in rank order, judged or not. `rationale` is the
    curator's short quote of the passage that supports the answer. `failure_tags` are the
    slugs of the failures curators tagged the turn with ("retrieval-miss", ...); trainers
    repeat tagged examples (`example_repeats`). `partly` are the passages judged partly
    relevant: retrievers leave them out, the reranker trains on them as a 0.5 target.
    """

    example_id: str
    query: str
    gold_answer: str = ""
    relevant: list[LabeledPassage] = field(default_factory=list)
    irrelevant: list[LabeledPassage] = field(default_factory=list)
    retrieved: list[LabeledPassage] = field(default_factory=list)
    rationale: str = ""
    question: str = ""
    history: list[ChatMessage] = field(default_factory=list)
    failure_tags: tuple[str, ...] = ()
    partly: list[LabeledPassage] = field(default_factory=list)

    def __post_init__(self) -> None:
        object.__setattr__(self, "history", chat_history(self.history))
        object.__setattr__(self, "failure_tags", tuple(self.failure_tags))

    @property
    def user_question(self) -> str:
        """The question the user asked: what a generator answers, after `history`."""
        return self.question or self.query


def example_repeats(example: DatasetExample, *, weighted_tags: Iterable[str], repeats: int) -> int:
    """How many times a trainer shows the example: `repeats` when a curator tagged it with one
    of `weighted_tags` (the failures this component can fix), else once."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    return repeats if set(example.failure_tags) & set(weighted_tags) else 1


def examples_repeated(examples: Iterable[DatasetExample], *, weighted_tags: Iterable[str], repeats: int) -> list[DatasetExample]:
    """The examples in order, each tagged one `repeats` times in a row (see example_repeats)."""
    weighted = frozenset(weighted_tags)
    return [
        example
        for example in examples
        for _ in range(example_repeats(example, weighted_tags=weighted, repeats=repeats))
    ]


@dataclass(frozen=True)
class ExportResult:
    """What an exporter produced: JSON-able records and {reason: count} of examples left out."""

    records: list[dict[str, Any]]
    skipped: dict[str, int] = field(default_factory=dict)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True)
class BeirExport:
    """A BEIR dataset: corpus.jsonl records, queries.jsonl records and qrels rows.

    qrels rows are {"query-id", "corpus-id", "score"}, the columns of BEIR's qrels/*.tsv.
    """

    corpus: list[dict[str, str]]
    queries: list[dict[str, str]]
    qrels: list[dict[str, Any]]


# --- Split ------------------------------------------------------------------------------------


def split_key(query: str) -> str:
    """The text a query's split is decided by: case folded, punctuation dropped, white space
    collapsed. So "Does ALDH1 predict outcome?" and "does aldh1 predict  outcome" (the same
    question logged twice) always land on the same side of the split."""
    folded = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in query.casefold())
    return " ".join(folded.split())


def split_for(example_id: str, *, heldout_share: float = 0.2, salt: str = "ragloop") -> str:
    """"train" or "heldout" for an example, from a hash of its key alone (`split_key` of its
    query for snapshots made today, the example id for older ones).

    sha256(salt + key) read as a number in [0, 1) puts the example in held-out when it falls
    below `heldout_share`. Nothing else about the dataset enters, so a query never moves
    between splits as labels grow, and raising the share only moves examples into held-out.
    """
    if isinstance(heldout_share, bool) or not (0.0 <= heldout_share <= 1.0):  # also rejects NaN
        raise ValueError(f"heldout_share must be between 0 and 1, got {heldout_share!r}")
    digest = hashlib.sha256((salt + example_id).encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return SPLIT_HELDOUT if position < heldout_share else SPLIT_TRAIN


# --- Helpers ----------------------------------------------------------------------------------


def _text_key(text: str) -> str:
    # Overlapping chunks and re-ingested documents repeat passages with different spacing.
    return " ".join(text.split())


def _distinct_passages(
    passages: Sequence[LabeledPassage], *, exclude: AbstractSet[str] = frozenset()
) -> list[LabeledPassage]:
    """`passages` without blank ones, repeats of an earlier text, or texts in `exclude`."""
    seen = set(exclude)
    distinct = []
    for passage in passages:
        key = _text_key(passage.text)
        if key and key not in seen:
            seen.add(key)
            distinct.append(passage)
    return distinct


def _text_keys(passages: Sequence[LabeledPassage]) -> set[str]:
    return {_text_key(passage.text) for passage in passages}


def _document(passage: LabeledPassage) -> str:
    """A passage as one context document: its title on the first line when it has one."""
    return f"{passage.title}\n{passage.text}" if passage.title else passage.text


# --- OpenAI chat fine-tuning ------------------------------------------------------------------


def export_openai(
    examples: Sequence[DatasetExample],
    *,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    max_passages: int = 5,
    max_history_words: int = DEFAULT_HISTORY_WORDS,
) -> ExportResult:
    """OpenAI chat fine-tuning records: {"messages": [system, *history, user, assistant]}.

    Everything before the assistant message is `rag.generation.chat_messages`, the very chat
    the generators send when serving: the system prompt, the conversation's earlier user and
    assistant messages, then `build_prompt` (numbered context, then the question as the user
    asked it, not its self-contained rewrite: serving gives the generator the user's words
    after the history). The gold answer is the assistant message. A turn on its own is
    [system, user, assistant].

    The history keeps its newest whole exchanges within `max_history_words` words (oldest
    dropped first, rag.conversation.history_within_budget); 0 leaves it out. A system message
    the app sent with the conversation is not exported: serving answers with ragloop's RAG
    system prompt (`system_prompt`, default the serving one), whose citation and
    answer-only-from-context rules the model is trained to follow.

    The context is the curator-relevant passages, then the retrieved ones, without repeated
    texts, up to `max_passages`; relevant ones go first so that a cut never drops the passage
    that holds the answer. Retrieved passages judged irrelevant stay in: the model should learn
    to ignore bad context (RA-DIT's LM-ft).

    Left out: examples without a gold answer (nothing to learn), and examples with no passage at
    all, whose gold answer would teach the model to answer without context against the system
    prompt's instruction.
    """
    if max_passages < 1:
        raise ValueError(f"max_passages must be at least 1, got {max_passages}")
    if max_history_words < 0:
        raise ValueError(f"max_history_words must be 0 or more, got {max_history_words}")
    records: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for example in examples:
        gold_answer = example.gold_answer.strip()
        if not gold_answer:
            skipped[NO_GOLD_ANSWER] += 1
            continue
        context = _distinct_passages([*example.relevant, *example.retrieved])[:max_passages]
        if not context:
            skipped[NO_CONTEXT] += 1
            continue
        messages = chat_messages(
            query=example.user_question,
            passages=[
                ContextPassage(text=passage.text, title=passage.title, source_id=passage.document_id)
                for passage in context
            ],
            history=history_within_budget(example.history, max_tokens=max_history_words),
            system_prompt=system_prompt,
        )
        records.append({"messages": [*messages, {"role": "assistant", "content": gold_answer}]})
    return ExportResult(records=records, skipped=dict(skipped))


# --- RAFT -------------------------------------------------------------------------------------


def _example_random(seed: int, example_id: str) -> random.Random:
    # One generator per example, seeded from the example's own id, so an example's draws do not
    # change when other examples are added to or removed from the snapshot.
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _quoted_passage(rationale: str, relevant: Sequence[LabeledPassage]) -> LabeledPassage | None:
    """The first relevant passage that contains the rationale word for word (case and spacing aside)."""
    quote = _text_key(rationale).casefold()
    if not quote:
        return None
    for passage in relevant:
        if quote in _text_key(passage.text).casefold():
            return passage
    return None


def _cot_answer(*, rationale: str, gold_answer: str, is_quote: bool) -> str:
    """RAFT's chain-of-thought answer: reasoning that quotes the context, then the tagged answer.

    The quote markers promise a verbatim piece of the context, so a rationale that is not found
    in a relevant passage is kept as plain reasoning: training on invented quotes would teach the
    model to invent them.
    """
    rationale = _text_key(rationale)
    if not rationale:
        return f"{ANSWER_TAG} {gold_answer}"
    reason = f"{BEGIN_QUOTE}{rationale}{END_QUOTE}" if is_quote else rationale
    return f"##Reason: {reason}\n{ANSWER_TAG} {gold_answer}"


def _raft_instruction(*, documents: Sequence[str], question: str, history: Sequence[ChatMessage] = ()) -> str:
    # The layout of the RAFT reference implementation (gorilla/raft): each document wrapped in
    # <DOCUMENT></DOCUMENT> on its own line, then the question. A follow-up's earlier messages
    # come first, as "User:"/"Assistant:" lines (rag.generation.prompt_text's layout, the order
    # serving uses: the conversation, then the context and the question).
    earlier = "".join(
        f"{'User' if m.role == 'user' else 'Assistant'}: {m.content}\n" for m in history if m.role != "system"
    )
    return earlier + "".join(f"<DOCUMENT>{document}</DOCUMENT>\n" for document in documents) + question


def _draw_from_pool(
    pool: Sequence[LabeledPassage], *, count: int, taken: set[str], rng: random.Random
) -> list[LabeledPassage]:
    """Up to `count` pool passages drawn at random, none with a text in `taken` (updated).

    Draws indices one at a time instead of filtering the pool first: the pool may be a whole
    corpus, and an example only needs a handful of passages from it.
    """
    drawn: list[LabeledPassage] = []
    tried: set[int] = set()
    while len(drawn) < count and len(tried) < len(pool):
        index = rng.randrange(len(pool))
        if index in tried:
            continue
        tried.add(index)
        key = _text_key(pool[index].text)
        if key and key not in taken:
            taken.add(key)
            drawn.append(pool[index])
    return drawn


def export_raft(
    examples: Sequence[DatasetExample],
    *,
    distractors: int = 4,
    oracle_probability: float = 0.8,
    seed: int = 0,
    random_pool: Sequence[LabeledPassage] = (),
) -> ExportResult:
    """RAFT training records (Zhang et al. 2024, arXiv 2403.10131), one per example.

    Oracle: the curator-relevant passage that holds the rationale quote, else the first relevant
    one. Distractors: the example's hard negatives (retrieved, judged irrelevant) in rank order,
    topped up with passages drawn from `random_pool`; no passage whose text is relevant to the
    example is ever a distractor, and unjudged retrieved passages are not used (they may be
    relevant). With probability `oracle_probability` (the paper's P) the context is the oracle
    plus `distractors` distractors; otherwise one more distractor takes the oracle's place, so
    the context is the same size either way and its length does not give the oracle away (as in
    the RAFT reference code). It holds fewer documents when there are not enough distractors.
    The draw, the pool passages and the shuffle depend only on `seed` and the example id.

    Record: {"id", "question", "history", "context": [documents, shuffled], "oracle_context",
    "oracle_in_context", "cot_answer", "answer", "instruction"}, where a document is the
    passage text with its title, if any, on the line above. "question" is the question as the
    user asked it and "history" the conversation's earlier user and assistant messages
    ([{"role", "content"}], whole, [] for a turn on its own), as the generator sees them when
    serving; "instruction" holds the history as "User:"/"Assistant:" lines, then the documents,
    then the question.

    Left out: examples without a gold answer, and examples with no relevant passage (no oracle).
    """
    if distractors < 0:
        raise ValueError(f"distractors must be 0 or more, got {distractors}")
    if not (0.0 <= oracle_probability <= 1.0):
        raise ValueError(f"oracle_probability must be between 0 and 1, got {oracle_probability!r}")
    records: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for example in examples:
        gold_answer = example.gold_answer.strip()
        if not gold_answer:
            skipped[NO_GOLD_ANSWER] += 1
            continue
        relevant = _distinct_passages(example.relevant)
        if not relevant:
            skipped[NO_RELEVANT_PASSAGE] += 1
            continue
        quoted = _quoted_passage(example.rationale, relevant)
        oracle = quoted or relevant[0]

        rng = _example_random(seed, example.example_id)
        # Drawn first, so whether the oracle is in does not depend on the pool or the negatives.
        oracle_in_context = rng.random() < oracle_probability
        wanted = distractors if oracle_in_context else distractors + 1
        relevant_texts = _text_keys(relevant)
        # Curators' order is the retriever's rank order: the best-ranked wrong passages are the
        # hardest, so they are the ones kept when there are more than needed.
        chosen = _distinct_passages(example.irrelevant, exclude=relevant_texts)[:wanted]
        taken = relevant_texts | _text_keys(chosen)
        chosen += _draw_from_pool(random_pool, count=wanted - len(chosen), taken=taken, rng=rng)

        context = [oracle, *chosen] if oracle_in_context else chosen
        documents = [_document(passage) for passage in context]
        rng.shuffle(documents)
        history = [m for m in example.history if m.role != "system"]
        records.append(
            {
                "id": example.example_id,
                "question": example.user_question,
                "history": [m.as_dict() for m in history],
                "context": documents,
                "oracle_context": _document(oracle),
                "oracle_in_context": oracle_in_context,
                "cot_answer": _cot_answer(
                    rationale=example.rationale, gold_answer=gold_answer, is_quote=quoted is not None
                ),
                "answer": gold_answer,
                "instruction": _raft_instruction(documents=documents, question=example.user_question, history=history),
            }
        )
    return ExportResult(records=records, skipped=dict(skipped))


# --- sentence-transformers --------------------------------------------------------------------


def export_triplets(examples: Sequence[DatasetExample], *, max_negatives_per_positive: int = 1) -> ExportResult:
    """{"anchor": query, "positive": relevant text, "negative": hard negative text} records.

    The columns MultipleNegativesRankingLoss takes as (anchor, positive, negative). Each
    relevant passage is paired with up to `max_negatives_per_positive` of the example's hard
    negatives, taken in turn and wrapping around, so that with several positives the negatives
    are spread over them instead of the first one being used every time. A hard negative whose
    text is also marked relevant (curators disagreed across copies) is never used.

    Examples without a hard negative are left out (counted under "no_hard_negative") rather than
    given a record without "negative": a training set needs one set of columns. Use
    `export_pairs` for (anchor, positive) records from every example.
    """
    if max_negatives_per_positive < 1:
        raise ValueError(f"max_negatives_per_positive must be at least 1, got {max_negatives_per_positive}")
    records: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for example in examples:
        positives = _distinct_passages(example.relevant)
        if not positives:
            skipped[NO_RELEVANT_PASSAGE] += 1
            continue
        negatives = _distinct_passages(example.irrelevant, exclude=_text_keys(positives))
        if not negatives:
            skipped[NO_HARD_NEGATIVE] += 1
            continue
        per_positive = min(max_negatives_per_positive, len(negatives))
        for number, positive in enumerate(positives):
            for offset in range(per_positive):
                negative = negatives[(number * per_positive + offset) % len(negatives)]
                records.append({"anchor": example.query, "positive": positive.text, "negative": negative.text})
    return ExportResult(records=records, skipped=dict(skipped))


def export_pairs(examples: Sequence[DatasetExample]) -> ExportResult:
    """{"anchor": query, "positive": relevant text} records, one per distinct relevant passage.

    For MultipleNegativesRankingLoss with in-batch negatives only, or for examples that have no
    curator hard negative.
    """
    records: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for example in examples:
        positives = _distinct_passages(example.relevant)
        if not positives:
            skipped[NO_RELEVANT_PASSAGE] += 1
            continue
        records.extend({"anchor": example.query, "positive": positive.text} for positive in positives)
    return ExportResult(records=records, skipped=dict(skipped))


# --- BEIR -------------------------------------------------------------------------------------


def _text_hash(text: str) -> str:
    return hashlib.sha256(_text_key(text).encode("utf-8")).hexdigest()[:16]


def _preferred_corpus_id(passage: LabeledPassage, *, texts_per_document: dict[str, set[str]]) -> str:
    if passage.document_id:
        if len(texts_per_document[passage.document_id]) == 1:
            # A whole document, or the only part of it in the export: keep the document's own id,
            # so a corpus imported from BEIR comes back out under its original ids.
            return passage.document_id
        # Several chunks of one document: each needs its own id.
        suffix = f"chunk-{passage.chunk_id}" if passage.chunk_id is not None else _text_hash(passage.text)
        return f"{passage.document_id}#{suffix}"
    if passage.chunk_id is not None:
        return f"chunk-{passage.chunk_id}"
    return f"text-{_text_hash(passage.text)}"


def export_beir(examples: Sequence[DatasetExample]) -> BeirExport:
    """The examples as a BEIR dataset (corpus, queries, qrels) for BEIR-style evaluation tools.

    Corpus: every passage mentioned (relevant, irrelevant, retrieved), once per distinct id, in
    first-seen order, as {"_id", "title", "text"}. A passage's id is its document id when no
    other text of that document is in the export, "<document id>#chunk-<chunk id>" when several
    are, "chunk-<chunk id>" without a document id, and "text-<hash of the text>" without either;
    should an id still be taken by a different text, the text's hash is appended to it.

    Queries: {"_id": example id, "text": query} for every example.

    qrels: score 1 for each relevant passage and score 0 for each passage judged irrelevant
    (relevant wins if a passage is marked both). The 0 rows record that a passage was judged,
    which judged-only measures (bpref, condensed lists) need; recall and nDCG treat them as
    unjudged. Retrieved passages nobody judged get no row.
    """
    counts = Counter(example.example_id for example in examples)
    repeated = sorted(example_id for example_id, count in counts.items() if count > 1)
    if repeated:
        raise ValueError(f"example ids must be unique in a BEIR export; repeated: {', '.join(repeated)}")

    every_passage = [
        passage
        for example in examples
        for passage in (*example.relevant, *example.irrelevant, *example.retrieved)
        if _text_key(passage.text)
    ]
    texts_per_document: dict[str, set[str]] = {}
    for passage in every_passage:
        if passage.document_id:
            texts_per_document.setdefault(passage.document_id, set()).add(_text_key(passage.text))

    corpus: dict[str, dict[str, str]] = {}
    text_of_id: dict[str, str] = {}
    id_of_passage: dict[LabeledPassage, str] = {}
    for passage in every_passage:
        if passage in id_of_passage:
            continue
        text = _text_key(passage.text)
        corpus_id = _preferred_corpus_id(passage, texts_per_document=texts_per_document)
        if text_of_id.get(corpus_id, text) != text:
            corpus_id = f"{corpus_id}#{_text_hash(passage.text)}"
        text_of_id[corpus_id] = text
        id_of_passage[passage] = corpus_id
        corpus.setdefault(corpus_id, {"_id": corpus_id, "title": passage.title, "text": passage.text})

    queries = [{"_id": example.example_id, "text": example.query} for example in examples]
    qrels: list[dict[str, Any]] = []
    for example in examples:
        scores: dict[str, int] = {}
        for passage in example.relevant:
            if _text_key(passage.text):
                scores[id_of_passage[passage]] = 1
        for passage in example.irrelevant:
            if _text_key(passage.text):
                scores.setdefault(id_of_passage[passage], 0)
        qrels.extend(
            {"query-id": example.example_id, "corpus-id": corpus_id, "score": score}
            for corpus_id, score in scores.items()
        )
    return BeirExport(corpus=list(corpus.values()), queries=queries, qrels=qrels)
