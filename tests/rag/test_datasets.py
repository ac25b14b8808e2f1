"""Dataset examples: the stable split and the exact records of every export format."""

import hashlib
import json
from collections import Counter

import pytest

from rag.conversation import ChatMessage
from rag.datasets import (
    DEFAULT_HISTORY_WORDS,
    DEFAULT_SYSTEM_PROMPT,
    BeirExport,
    DatasetExample,
    ExportResult,
    LabeledPassage,
    export_beir,
    export_openai,
    export_pairs,
    export_raft,
    export_triplets,
    split_for,
    split_key,
)
from rag.generation import SYSTEM_PROMPT, ContextPassage, build_prompt, chat_messages

VITAMIN = LabeledPassage(
    text="In elderly adults, daily vitamin D reduced the rate of hip fractures by a fifth.",
    document_id="d-vitd",
    chunk_id=1,
    title="Vitamin D and bone health",
)
CALCIUM = LabeledPassage(
    text="Vitamin D supplementation increases calcium absorption in the gut.", document_id="d-vitd", chunk_id=2
)
STATINS = LabeledPassage(
    text="Statins inhibit HMG-CoA reductase.", document_id="d-statins", chunk_id=5, title="Statins"
)
COFFEE = LabeledPassage(text="Caffeine blocks adenosine receptors in the brain.", document_id="d-coffee", chunk_id=9)
SLEEP = LabeledPassage(
    text="Sleep deprivation impairs the consolidation of new memories.", document_id="d-sleep", chunk_id=7
)

HIP_FRACTURES = DatasetExample(
    example_id="turn-1",
    query="How much does vitamin D reduce hip fractures?",
    gold_answer="By about a fifth.",
    relevant=[VITAMIN],
    irrelevant=[STATINS, COFFEE],
    retrieved=[STATINS, VITAMIN, COFFEE, SLEEP],
    rationale="daily vitamin D reduced the rate of hip fractures by a fifth",
)


# A follow-up in a conversation: the app's system message, one earlier exchange, then
# "And in children?", which retrieval saw rewritten (the rewrite is the example's query).
EARLIER = [
    {"role": "system", "content": "You are the clinic's helpful bot."},
    {"role": "user", "content": "Does vitamin D prevent hip fractures in the elderly?"},
    {"role": "assistant", "content": "Yes, daily vitamin D reduced them by a fifth [1]."},
]
FOLLOW_UP = DatasetExample(
    example_id="turn-21",
    query="Does vitamin D prevent hip fractures in children?",
    question="And in children?",
    history=EARLIER,
    gold_answer="The passages only cover elderly adults.",
    relevant=[VITAMIN],
    irrelevant=[STATINS],
    retrieved=[VITAMIN, STATINS],
)


def pool_passages(count: int) -> list[LabeledPassage]:
    return [
        LabeledPassage(text=f"Unrelated corpus passage number {number}.", chunk_id=1000 + number)
        for number in range(count)
    ]


# --- Dataclasses ------------------------------------------------------------------------------


def test_examples_default_to_empty_lists_of_their_own():
    first, second = DatasetExample(example_id="a", query="q"), DatasetExample(example_id="b", query="q")
    defaults = (first.gold_answer, first.relevant, first.irrelevant, first.retrieved, first.rationale, first.question, first.history)
    assert defaults == ("", [], [], [], "", "", [])
    assert first.relevant is not second.relevant and first.history is not second.history
    assert first.user_question == "q"  # a turn on its own: the question is the query


def test_a_follow_up_example_keeps_the_users_question_and_its_history_as_chat_messages():
    assert FOLLOW_UP.user_question == "And in children?"
    assert FOLLOW_UP.history == [ChatMessage(m["role"], m["content"]) for m in EARLIER]
    same = DatasetExample(example_id="x", query="q", history=[ChatMessage("user", "hi"), {"role": "assistant", "content": "hello"}])
    assert same.history == [ChatMessage("user", "hi"), ChatMessage("assistant", "hello")]


# --- split_for --------------------------------------------------------------------------------


def test_split_key_folds_case_white_space_and_punctuation():
    variants = ["Does ALDH1 predict outcome?", "does aldh1 predict  outcome", " Does ALDH1, predict outcome!? ", "DOES ALDH1 PREDICT OUTCOME"]
    assert {split_key(v) for v in variants} == {"does aldh1 predict outcome"}
    assert split_key("vitamin D and bone") != split_key("vitamin D and bones")
    assert len({split_for(split_key(v), heldout_share=0.5) for v in variants}) == 1


def test_split_is_a_pinned_function_of_the_id():
    # sha256("ragloop" + id), first 8 bytes as a number in [0, 1), held out below the share.
    # Pinned: changing the recipe would move queries between train and held-out.
    assert [split_for(f"turn-{number}") for number in range(1, 11)] == [
        "train", "heldout", "heldout", "train", "train", "train", "train", "train", "train", "train",
    ]
    for example_id in ("turn-1", "turn-2", "q-42", "ünïcode"):
        digest = hashlib.sha256(("ragloop" + example_id).encode("utf-8")).digest()
        position = int.from_bytes(digest[:8], "big") / 2**64
        assert split_for(example_id) == ("heldout" if position < 0.2 else "train")
        assert split_for(example_id) == split_for(example_id)


@pytest.mark.parametrize("share", [0.2, 0.5])
def test_split_share_over_many_ids_is_close_to_the_heldout_share(share):
    splits = Counter(split_for(f"turn-{number}", heldout_share=share) for number in range(10_000))
    assert abs(splits["heldout"] / 10_000 - share) <= 0.02


def test_split_extremes_and_growth():
    ids = [f"turn-{number}" for number in range(1000)]
    assert {split_for(example_id, heldout_share=0.0) for example_id in ids} == {"train"}
    assert {split_for(example_id, heldout_share=1.0) for example_id in ids} == {"heldout"}
    # raising the share only moves examples into held-out, never out of it
    small = {example_id for example_id in ids if split_for(example_id, heldout_share=0.2) == "heldout"}
    large = {example_id for example_id in ids if split_for(example_id, heldout_share=0.3) == "heldout"}
    assert small < large


def test_split_depends_on_the_salt():
    ids = [f"turn-{number}" for number in range(200)]
    assert [split_for(i) for i in ids] != [split_for(i, salt="other") for i in ids]


@pytest.mark.parametrize("share", [-0.1, 1.01, float("nan")])
def test_split_rejects_a_share_outside_zero_to_one(share):
    with pytest.raises(ValueError):
        split_for("turn-1", heldout_share=share)


# --- OpenAI chat ------------------------------------------------------------------------------


def test_openai_record_is_system_user_assistant_with_relevant_context_first():
    result = export_openai([HIP_FRACTURES])

    user_message = (
        "Context information is below.\n"
        "---------------------\n"
        "[1] Vitamin D and bone health\n"
        "In elderly adults, daily vitamin D reduced the rate of hip fractures by a fifth.\n\n"
        "[2] Statins\n"
        "Statins inhibit HMG-CoA reductase.\n\n"
        "[3] Caffeine blocks adenosine receptors in the brain.\n\n"
        "[4] Sleep deprivation impairs the consolidation of new memories.\n"
        "---------------------\n"
        "Given the context information and not prior knowledge, answer the query.\n"
        "Query: How much does vitamin D reduce hip fractures?\n"
        "Answer: "
    )
    assert result.records == [
        {
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user_message},
                {"role": "assistant", "content": "By about a fifth."},
            ]
        }
    ]
    assert result.skipped == {}
    # the serving prompt, word for word
    assert user_message == build_prompt(
        query=HIP_FRACTURES.query,
        passages=[
            ContextPassage(text=VITAMIN.text, title=VITAMIN.title),
            ContextPassage(text=STATINS.text, title=STATINS.title),
            ContextPassage(text=COFFEE.text),
            ContextPassage(text=SLEEP.text),
        ],
    )
    assert DEFAULT_SYSTEM_PROMPT == SYSTEM_PROMPT


def test_openai_context_is_cut_after_the_relevant_passages_and_deduplicated_by_text():
    respaced = LabeledPassage(text="Statins  inhibit\nHMG-CoA reductase.", chunk_id=55)
    example = DatasetExample(
        example_id="turn-2",
        query="q?",
        gold_answer="a",
        relevant=[COFFEE, SLEEP],
        retrieved=[STATINS, respaced, COFFEE, VITAMIN],
    )
    [record] = export_openai([example], max_passages=3, system_prompt="Be brief.")

    assert record["messages"][0] == {"role": "system", "content": "Be brief."}
    assert record["messages"][1]["content"] == build_prompt(
        query="q?",
        passages=[
            ContextPassage(text=COFFEE.text),
            ContextPassage(text=SLEEP.text),
            ContextPassage(text=STATINS.text, title="Statins"),
        ],
    )


def test_openai_skips_examples_without_gold_answer_or_context():
    examples = [
        HIP_FRACTURES,
        DatasetExample(example_id="no-gold", query="q", relevant=[VITAMIN]),
        DatasetExample(example_id="blank-gold", query="q", gold_answer="  ", relevant=[VITAMIN]),
        DatasetExample(example_id="no-context", query="q", gold_answer="a"),
    ]
    result = export_openai(examples)

    assert isinstance(result, ExportResult)
    assert len(result) == 1
    assert [record["messages"][2]["content"] for record in result] == ["By about a fifth."]
    assert result.skipped == {"no_gold_answer": 2, "no_context": 1}


def test_openai_rejects_a_context_of_no_passages():
    with pytest.raises(ValueError):
        export_openai([HIP_FRACTURES], max_passages=0)


def test_openai_record_of_a_follow_up_is_the_conversation_then_the_question_as_asked_then_the_gold_answer():
    [record] = export_openai([FOLLOW_UP])

    context = [ContextPassage(text=VITAMIN.text, title=VITAMIN.title), ContextPassage(text=STATINS.text, title=STATINS.title)]
    assert record["messages"] == [
        # ragloop's RAG system prompt, as serving sends it; the app's own system message is not exported
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Does vitamin D prevent hip fractures in the elderly?"},
        {"role": "assistant", "content": "Yes, daily vitamin D reduced them by a fifth [1]."},
        # the user's words, not the self-contained rewrite retrieval used
        {"role": "user", "content": build_prompt(query="And in children?", passages=context)},
        {"role": "assistant", "content": "The passages only cover elderly adults."},
    ]
    # exactly the chat the generators send when serving, plus the gold answer
    assert record["messages"][:-1] == chat_messages(query="And in children?", passages=context, history=FOLLOW_UP.history)
    assert "Query: And in children?\n" in record["messages"][3]["content"]


def test_openai_history_budget_drops_the_oldest_exchange_first():
    long_ago = [
        {"role": "user", "content": "one two three four"},  # 4 words
        {"role": "assistant", "content": "five six"},  # 2 words
        {"role": "user", "content": "seven eight nine"},  # 3 words
        {"role": "assistant", "content": "ten"},  # 1 word
    ]
    example = DatasetExample(example_id="t", query="q standalone", question="q?", history=long_ago, gold_answer="a", relevant=[VITAMIN])

    def roles_and_texts(max_history_words):
        [record] = export_openai([example], max_history_words=max_history_words)
        return [(m["role"], m["content"]) for m in record["messages"][1:-2]]

    assert roles_and_texts(10) == [(m["role"], m["content"]) for m in long_ago]
    # 9 words: the oldest user message no longer fits, so its whole exchange goes
    assert roles_and_texts(9) == [("user", "seven eight nine"), ("assistant", "ten")]
    assert roles_and_texts(4) == [("user", "seven eight nine"), ("assistant", "ten")]
    assert roles_and_texts(3) == [] == roles_and_texts(0)  # never an assistant message first
    assert DEFAULT_HISTORY_WORDS == 1500 and roles_and_texts(DEFAULT_HISTORY_WORDS) == roles_and_texts(10)
    with pytest.raises(ValueError, match="max_history_words"):
        export_openai([example], max_history_words=-1)


# --- RAFT -------------------------------------------------------------------------------------


def instruction_for(record) -> str:
    return "".join(f"<DOCUMENT>{document}</DOCUMENT>\n" for document in record["context"]) + record["question"]


def test_raft_record_with_the_oracle():
    [record] = export_raft([HIP_FRACTURES], distractors=3, oracle_probability=1.0, random_pool=pool_passages(5))

    oracle = (
        "Vitamin D and bone health\n"
        "In elderly adults, daily vitamin D reduced the rate of hip fractures by a fifth."
    )
    assert {key: value for key, value in record.items() if key not in ("context", "instruction")} == {
        "id": "turn-1",
        "question": "How much does vitamin D reduce hip fractures?",
        "history": [],
        "oracle_context": oracle,
        "oracle_in_context": True,
        "cot_answer": (
            "##Reason: ##begin_quote##daily vitamin D reduced the rate of hip fractures by a fifth##end_quote##\n"
            "<ANSWER>: By about a fifth."
        ),
        "answer": "By about a fifth.",
    }
    # oracle + both hard negatives + one pool passage to make 3 distractors; order is shuffled
    assert len(record["context"]) == 4
    assert set(record["context"]) >= {oracle, "Statins\nStatins inhibit HMG-CoA reductase.", COFFEE.text}
    assert sum(document.startswith("Unrelated corpus passage") for document in record["context"]) == 1
    assert record["instruction"] == instruction_for(record)
    assert record["instruction"].startswith("<DOCUMENT>")
    assert record["instruction"].endswith("</DOCUMENT>\nHow much does vitamin D reduce hip fractures?")
    json.dumps(record)


def test_raft_record_of_a_follow_up_carries_the_question_as_asked_and_the_conversation():
    [record] = export_raft([FOLLOW_UP], distractors=1, oracle_probability=1.0)

    earlier = [m for m in EARLIER if m["role"] != "system"]
    assert record["question"] == "And in children?"
    assert record["history"] == earlier
    oracle = f"{VITAMIN.title}\n{VITAMIN.text}"
    assert set(record["context"]) == {oracle, f"{STATINS.title}\n{STATINS.text}"}
    # the conversation first (as plain-text serving lays it out), then the documents, then the question
    assert record["instruction"] == (
        "User: Does vitamin D prevent hip fractures in the elderly?\n"
        "Assistant: Yes, daily vitamin D reduced them by a fifth [1].\n"
        + "".join(f"<DOCUMENT>{document}</DOCUMENT>\n" for document in record["context"])
        + "And in children?"
    )


def test_retriever_formats_use_the_self_contained_query_of_a_follow_up():
    assert export_pairs([FOLLOW_UP]).records == [{"anchor": FOLLOW_UP.query, "positive": VITAMIN.text}]
    assert export_triplets([FOLLOW_UP]).records == [
        {"anchor": FOLLOW_UP.query, "positive": VITAMIN.text, "negative": STATINS.text}
    ]
    assert export_beir([FOLLOW_UP]).queries == [{"_id": "turn-21", "text": FOLLOW_UP.query}]


def test_raft_without_the_oracle_keeps_the_context_size_with_distractors_only():
    [record] = export_raft([HIP_FRACTURES], distractors=3, oracle_probability=0.0, random_pool=pool_passages(5))

    assert record["oracle_in_context"] is False
    assert len(record["context"]) == 4  # distractors + 1: the oracle's slot goes to a distractor
    assert record["oracle_context"] not in record["context"]
    assert all(VITAMIN.text not in document for document in record["context"])
    assert record["instruction"] == instruction_for(record)


def test_raft_prefers_the_best_ranked_hard_negatives():
    negatives = [LabeledPassage(text=f"Wrong passage ranked {rank}.") for rank in range(1, 6)]
    example = DatasetExample(example_id="turn-3", query="q", gold_answer="a", relevant=[VITAMIN], irrelevant=negatives)
    [record] = export_raft([example], distractors=2, oracle_probability=1.0, random_pool=pool_passages(10))

    expected = [VITAMIN.title + "\n" + VITAMIN.text, "Wrong passage ranked 1.", "Wrong passage ranked 2."]
    assert sorted(record["context"]) == sorted(expected)


def test_raft_never_uses_a_relevant_passage_as_a_distractor():
    second_relevant = LabeledPassage(text="Vitamin D halves fractures in the very old.")
    conflicting = LabeledPassage(text=second_relevant.text, chunk_id=77)  # the same text, judged irrelevant elsewhere
    example = DatasetExample(
        example_id="turn-4",
        query="q",
        gold_answer="a",
        relevant=[VITAMIN, second_relevant],
        irrelevant=[conflicting, STATINS],
    )
    # the pool is the whole small corpus, relevant passages included
    pool = [VITAMIN, second_relevant, STATINS, COFFEE, SLEEP, CALCIUM]
    records = export_raft(
        [DatasetExample(**{**example.__dict__, "example_id": f"turn-4-{n}"}) for n in range(200)],
        distractors=3,
        oracle_probability=0.5,
        random_pool=pool,
    ).records

    oracle_document = VITAMIN.title + "\n" + VITAMIN.text
    for record in records:
        distractor_documents = [document for document in record["context"] if document != oracle_document]
        for document in distractor_documents:
            assert VITAMIN.text not in document and second_relevant.text not in document
        assert len(distractor_documents) == 3 + (0 if record["oracle_in_context"] else 1)
        assert len(set(record["context"])) == len(record["context"])


def test_raft_oracle_share_is_close_to_p_and_distractor_count_is_fixed():
    examples = [
        DatasetExample(example_id=f"turn-{n}", query=f"q{n}", gold_answer="a", relevant=[VITAMIN], irrelevant=[STATINS])
        for n in range(2000)
    ]
    result = export_raft(examples, distractors=4, oracle_probability=0.8, seed=7, random_pool=pool_passages(50))
    records = result.records

    share = sum(record["oracle_in_context"] for record in records) / len(records)
    assert abs(share - 0.8) <= 0.03
    assert {len(record["context"]) for record in records} == {5}
    for record in records:
        assert (record["oracle_context"] in record["context"]) == record["oracle_in_context"]


def test_raft_is_deterministic_for_a_seed_and_per_example():
    examples = [
        DatasetExample(example_id=f"turn-{n}", query=f"q{n}", gold_answer="a", relevant=[VITAMIN], irrelevant=[STATINS])
        for n in range(50)
    ]
    pool = pool_passages(30)
    first = export_raft(examples, seed=3, random_pool=pool).records
    again = export_raft(examples, seed=3, random_pool=pool).records
    other_seed = export_raft(examples, seed=4, random_pool=pool).records

    assert first == again
    assert first != other_seed
    # an example's record does not change when others join or leave the snapshot
    assert export_raft(examples[10:11], seed=3, random_pool=pool).records == [first[10]]


def test_raft_chain_of_thought_quotes_only_what_a_relevant_passage_says():
    base = {"query": "q", "gold_answer": "A fifth.", "relevant": [CALCIUM, VITAMIN]}

    # the quote is found (case and spacing aside) in the second relevant passage, which becomes the oracle
    [quoted] = export_raft(
        [DatasetExample(example_id="a", rationale="Daily vitamin D  reduced the rate", **base)], oracle_probability=1.0
    )
    assert quoted["cot_answer"] == (
        "##Reason: ##begin_quote##Daily vitamin D reduced the rate##end_quote##\n<ANSWER>: A fifth."
    )
    assert quoted["oracle_context"] == VITAMIN.title + "\n" + VITAMIN.text

    # a paraphrase is kept as reasoning, not marked as a quote; the first relevant passage is the oracle
    [paraphrase] = export_raft([DatasetExample(example_id="b", rationale="It lowers fractures.", **base)])
    assert paraphrase["cot_answer"] == "##Reason: It lowers fractures.\n<ANSWER>: A fifth."
    assert paraphrase["oracle_context"] == CALCIUM.text

    [bare] = export_raft([DatasetExample(example_id="c", **base)])
    assert bare["cot_answer"] == "<ANSWER>: A fifth."


def test_raft_skips_examples_without_gold_answer_or_relevant_passage():
    result = export_raft(
        [
            HIP_FRACTURES,
            DatasetExample(example_id="no-gold", query="q", relevant=[VITAMIN]),
            DatasetExample(example_id="no-oracle", query="q", gold_answer="a", irrelevant=[STATINS]),
        ]
    )
    assert [record["id"] for record in result] == ["turn-1"]
    assert result.skipped == {"no_gold_answer": 1, "no_relevant_passage": 1}


def test_raft_with_a_small_pool_gives_what_there_is():
    [record] = export_raft([HIP_FRACTURES], distractors=4, oracle_probability=1.0)
    assert len(record["context"]) == 3  # oracle + the two hard negatives, no pool to top up from


def test_raft_validates_its_settings():
    with pytest.raises(ValueError):
        export_raft([HIP_FRACTURES], distractors=-1)
    with pytest.raises(ValueError):
        export_raft([HIP_FRACTURES], oracle_probability=1.5)


# --- sentence-transformers --------------------------------------------------------------------


def test_triplets_spread_hard_negatives_over_positives():
    negative_1, negative_2, negative_3 = STATINS, COFFEE, SLEEP
    example = DatasetExample(
        example_id="turn-5",
        query="vitamin D?",
        relevant=[VITAMIN, CALCIUM],
        irrelevant=[negative_1, negative_2, negative_3],
    )

    def triplet(positive, negative):
        return {"anchor": "vitamin D?", "positive": positive.text, "negative": negative.text}

    assert export_triplets([example]).records == [triplet(VITAMIN, negative_1), triplet(CALCIUM, negative_2)]
    assert export_triplets([example], max_negatives_per_positive=2).records == [
        triplet(VITAMIN, negative_1),
        triplet(VITAMIN, negative_2),
        triplet(CALCIUM, negative_3),
        triplet(CALCIUM, negative_1),
    ]
    # more wanted than there are: each positive gets every negative once
    assert len(export_triplets([example], max_negatives_per_positive=10)) == 6


def test_triplets_skip_examples_without_a_usable_hard_negative():
    conflicting = LabeledPassage(text=VITAMIN.text, chunk_id=99)
    examples = [
        DatasetExample(example_id="no-negative", query="q", relevant=[VITAMIN]),
        DatasetExample(example_id="only-conflict", query="q", relevant=[VITAMIN], irrelevant=[conflicting]),
        DatasetExample(example_id="no-positive", query="q", irrelevant=[STATINS]),
    ]
    result = export_triplets(examples)

    assert result.records == []
    assert result.skipped == {"no_hard_negative": 2, "no_relevant_passage": 1}
    with pytest.raises(ValueError):
        export_triplets(examples, max_negatives_per_positive=0)


def test_pairs_have_one_record_per_distinct_relevant_passage():
    respaced = LabeledPassage(text="Vitamin D supplementation  increases calcium absorption in the gut.")
    examples = [
        DatasetExample(
            example_id="turn-6", query="vitamin D?", relevant=[VITAMIN, CALCIUM, respaced], irrelevant=[STATINS]
        ),
        DatasetExample(example_id="no-positive", query="q", irrelevant=[STATINS]),
    ]
    result = export_pairs(examples)

    assert result.records == [
        {"anchor": "vitamin D?", "positive": VITAMIN.text},
        {"anchor": "vitamin D?", "positive": CALCIUM.text},
    ]
    assert result.skipped == {"no_relevant_passage": 1}


# --- BEIR -------------------------------------------------------------------------------------


def text_id(text: str) -> str:
    return "text-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def test_beir_export_exact_records():
    loose = LabeledPassage(text="A passage with no document and no chunk.")
    chunk_only = LabeledPassage(text="A chunk whose document is unknown.", chunk_id=7)
    examples = [
        HIP_FRACTURES,  # relevant VITAMIN; irrelevant STATINS, COFFEE; retrieved also SLEEP
        DatasetExample(
            example_id="turn-2",
            query="What does vitamin D do in the gut?",
            relevant=[chunk_only, CALCIUM],
            irrelevant=[loose, chunk_only],  # judged both ways: relevant wins
            retrieved=[CALCIUM, STATINS],
        ),
    ]
    export = export_beir(examples)

    assert isinstance(export, BeirExport)
    # d-vitd has two distinct texts in the export, so its chunks get their own ids
    assert export.corpus == [
        {"_id": "d-vitd#chunk-1", "title": "Vitamin D and bone health", "text": VITAMIN.text},
        {"_id": "d-statins", "title": "Statins", "text": STATINS.text},
        {"_id": "d-coffee", "title": "", "text": COFFEE.text},
        {"_id": "d-sleep", "title": "", "text": SLEEP.text},
        {"_id": "chunk-7", "title": "", "text": chunk_only.text},
        {"_id": "d-vitd#chunk-2", "title": "", "text": CALCIUM.text},
        {"_id": text_id(loose.text), "title": "", "text": loose.text},
    ]
    assert export.queries == [
        {"_id": "turn-1", "text": "How much does vitamin D reduce hip fractures?"},
        {"_id": "turn-2", "text": "What does vitamin D do in the gut?"},
    ]
    assert export.qrels == [
        {"query-id": "turn-1", "corpus-id": "d-vitd#chunk-1", "score": 1},
        {"query-id": "turn-1", "corpus-id": "d-statins", "score": 0},
        {"query-id": "turn-1", "corpus-id": "d-coffee", "score": 0},
        {"query-id": "turn-2", "corpus-id": "chunk-7", "score": 1},
        {"query-id": "turn-2", "corpus-id": "d-vitd#chunk-2", "score": 1},
        {"query-id": "turn-2", "corpus-id": text_id(loose.text), "score": 0},
    ]
    json.dumps([export.corpus, export.queries, export.qrels])


def test_beir_keeps_a_single_chunk_document_under_its_document_id():
    export = export_beir([DatasetExample(example_id="q1", query="q", relevant=[VITAMIN], retrieved=[VITAMIN])])
    assert export.corpus == [{"_id": "d-vitd", "title": VITAMIN.title, "text": VITAMIN.text}]
    assert export.qrels == [{"query-id": "q1", "corpus-id": "d-vitd", "score": 1}]


def test_beir_never_gives_two_texts_one_id():
    first = LabeledPassage(text="First text.", chunk_id=3)
    clash = LabeledPassage(text="Second text.", chunk_id=3)  # inconsistent input: same chunk id
    export = export_beir([DatasetExample(example_id="q1", query="q", relevant=[first], irrelevant=[clash])])

    clash_id = "chunk-3#" + hashlib.sha256(b"Second text.").hexdigest()[:16]
    assert [record["_id"] for record in export.corpus] == ["chunk-3", clash_id]
    assert export.qrels == [
        {"query-id": "q1", "corpus-id": "chunk-3", "score": 1},
        {"query-id": "q1", "corpus-id": clash_id, "score": 0},
    ]


def test_beir_rejects_repeated_example_ids():
    with pytest.raises(ValueError, match="turn-1"):
        export_beir([HIP_FRACTURES, HIP_FRACTURES])
