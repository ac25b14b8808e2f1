"""Follow-up questions: recall@10 of SQuAD v1.1 dev follow-ups with and without rewriting them
before retrieval (`rag.conversation.condense_heuristic` and variants of it), and what the
rewriting costs when the user has changed topic. Pure rag: no database, no worker.

    python bench/followup.py                                    # 3 min on 2 cores (1:45 embedding the corpus); 6 when busy
    python bench/followup.py --cache-dir /tmp/followup-vectors  # keep the paragraph vectors between runs (never in the repo)
    python bench/followup.py --per-article 0                    # every usable pair, not at most 20 per article

Corpus: the 2,067 paragraphs of SQuAD v1.1 dev (/work/shared/datasets/squad-v1.1, CC BY-SA 4.0,
read from there and never copied into the repository), each indexed as "<title>\\n\\n<context>"
with the title's underscores as spaces, encoded with the base retriever
(`Embedder.encode_documents`); questions with `encode_queries`; exact search by dot product of
the normalised vectors. The gold passage of a question is the paragraph it was written on.

Pairs (a first question q1, then a follow-up q2 on the same article):
- The subject of an article is any of its names: the title with underscores as spaces, without a
  parenthetical qualifier ("Sky (United Kingdom)" -> "Sky"); for "Place, State" titles also the
  part before the comma ("Fresno"); and the distinctive parts or abbreviations of the title
  listed in SUBJECT_PARTS below ("Tesla", "ABC", "IPCC"). A name matches case-insensitively as a
  whole word (not next to a letter, digit, "&", "/" or "-"), with an optional "the"/"a"/"an"
  before it and an optional plural "s"/"es" and possessive "'s"/"'" after it.
- q2 is a question of the article that mentions the subject, every mention where a pronoun can
  stand; one mention that cannot disqualifies the question. A mention can stand for a pronoun
  when (1) it is at the start, or has its "the"/"a"/"an", or follows a function word
  (FUNCTION_WORDS, WH_WORDS) or a word ending in "s" or "ed" (a verb, roughly), so not after an
  adjective ("singlet oxygen"); and (2) it is possessive, or punctuation or the end follows, or a
  function word follows ("Warsaw in ..."), or it follows an auxiliary and a lower-case word that
  does not end like a noun ("s", NOUN_ENDINGS) follows ("did Tesla die"), so not before a noun
  ("the Amazon Basin"); and (3) it is not inside double quotes (a quoted title). Each mention,
  with its article, becomes a pronoun: "its"/"their"/"his" for a possessive; otherwise "it",
  "they"/"them" for a plural name (a plural ending, or PLURAL_NAMES), "he"/"him" for the three
  people (PERSONS); the subject form at the start or next to an auxiliary, the object form
  elsewhere; capitalised at the start. The follow-up must keep at least two salient words
  (`rag.conversation.salient_words`) and no name of the subject. ("What did Tesla claim to be
  able to transmit?" -> "What did he claim to be able to transmit?")
- q1 is another question of the same article that mentions the subject (any way), from a
  different paragraph than q2 where the article has one (always, here), with a different text,
  drawn with the seed. The assistant's reply in the history is the sentence of q1's paragraph
  that holds q1's first reference answer (a grounded extractive reply, standing in for a
  generator's), so a variant that reads the assistant's message has something realistic to read.
- At most --per-article pairs per article (a seeded sample of its usable q2s), so that the
  articles with hundreds of questions do not make the figure theirs.

Rows, each scored on the follow-up set (gold: q2's paragraph):
- "full q2": the original question, subject intact (the upper bound);
- "follow-up alone": the pronoun version, not rewritten;
- "follow-up + <variant>": rewritten from the history [user q1, assistant reply] by a variant of
  the heuristic (VARIANTS: where the words come from, how many, which ones, whether the question
  is repeated to weigh it, whether a follow-up must look like one);
- the same variants in a SELF-CONTAINED CONTROL: the full q2 after the q1 (and reply) of a pair
  of a DIFFERENT article, as when the user changed topic; the heuristic should leave it alone,
  and the drop from "full q2" is what it costs there.

Tuning split: the articles are shuffled with the seed and halved. A variant is chosen on the
tuning half: the largest mean of follow-up recall@10 and control recall@10 (a conversation has
both kinds of question); among the variants within TIE of that best mean (differences far inside
the intervals), the one with the highest control recall@10, since a rewrite that spoils a
complete question hurts a user who did nothing unusual. Every figure the report quotes comes
from the other half. Changes are
paired bootstrap 95% intervals (`rag.metrics.paired_bootstrap_interval`) over the report half's
pairs. `rag.conversation.condense_heuristic` as shipped is checked to give exactly the texts of
the variant it implements.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import STARTED, clock, load_average, say, table  # noqa: E402  (no Django at import)
from rag.conversation import ChatMessage, condense_heuristic, salient_words  # noqa: E402
from rag.metrics import paired_bootstrap_interval, retrieval_report  # noqa: E402

SQUAD_DEV = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "squad-v1.1" / "dev-v1.1.json"
RANK_CUTOFF = 10
TIE = 0.005  # mean recall@10 differences on the tuning half below this count as a tie

# Distinctive parts of a title, or the abbreviation the article's questions use for it, also taken
# as its subject. Only names of the subject itself: no words the title merely implies
# ("plague" for Black Death) and no generic heads ("Parliament", "engine", "war").
SUBJECT_PARTS = {
    "Normans": ("Norman",),
    "Nikola_Tesla": ("Tesla",),
    "Computational_complexity_theory": ("complexity theory", "computational complexity"),
    "Martin_Luther": ("Luther",),
    "Sky_(United_Kingdom)": ("BSkyB", "British Sky Broadcasting"),
    "1973_oil_crisis": ("oil crisis",),
    "Apollo_program": ("Apollo", "Apollo programme"),
    "European_Union_law": ("EU law",),
    "Amazon_rainforest": ("Amazon",),
    "Ctenophora": ("ctenophore",),
    "Packet_switching": ("packet-switching",),
    "Newcastle_upon_Tyne": ("Newcastle",),
    "Victoria_and_Albert_Museum": ("V&A", "Victoria and Albert"),
    "American_Broadcasting_Company": ("ABC",),
    "Genghis_Khan": ("Genghis", "Temujin", "Temüjin"),
    "Harvard_University": ("Harvard",),
    "Economic_inequality": ("inequality",),
    "University_of_Chicago": ("UChicago",),
    "Yuan_dynasty": ("Yuan",),
    "Intergovernmental_Panel_on_Climate_Change": ("IPCC",),
    "Prime_number": ("primes",),
    "United_Methodist_Church": ("UMC",),
}
PERSONS = {"Nikola_Tesla", "Martin_Luther", "Genghis_Khan"}
PLURAL_NAMES = {"normans", "primes"}  # names that are plural as written (not "oil crisis")
AUXILIARIES = frozenset("is was are were be been did does do has have had can could will would should may might must".split())
# Words after which a bare mention still reads as a noun phrase a pronoun can replace.
FUNCTION_WORDS = AUXILIARIES | frozenset(
    """a an the and or but of in on at to for from by with as into during after before about against between
    than that which who whom whose when where while because if since until over under through its their his
    her first last ever also not never originally""".split()
)
# A lower-case word after "did <subject>" with one of these endings is a noun, not the verb
# ("did Huguenot immigration have").
NOUN_ENDINGS = ("tion", "sion", "ment", "ity", "ence", "ance", "ness", "ship", "ism")
WH_WORDS = frozenset("what which who whom whose when where why how".split())
PRONOUNS = {  # kind -> (subject, object, possessive)
    "thing": ("it", "it", "its"),
    "plural": ("they", "them", "their"),
    "person": ("he", "him", "his"),
}
# Anaphora a follow-up uses for what came before (the "guard" of some variants).
# "that" and "there" are left out: in questions they are mostly a conjunction or relative
# pronoun ("the theory that ...") and an existential ("are there ...").
ANAPHORA = frozenset("it its they them their theirs he him his she her hers this these those".split())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SQUAD_DEV, help="SQuAD v1.1 dev JSON (default: %(default)s)")
    parser.add_argument("--per-article", type=int, default=20, help="at most this many pairs per article; 0 = all (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own, 0)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep the paragraph vectors here between runs, keyed by model and corpus (outside the repository)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures and the pairs' texts here")
    parser.add_argument("--show", type=int, default=5, help="print this many example pairs (default: %(default)s)")
    return parser.parse_args()


# --- the data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    article: str  # SQuAD title, underscores kept
    paragraph: str  # paragraph id "<article index>-<paragraph index>"
    text: str
    answer: str  # the first reference answer
    answer_start: int


@dataclass(frozen=True)
class Pair:
    pair_id: str
    article: str
    first: Question  # q1
    question: Question  # q2 as written
    follow_up: str  # q2 with the subject replaced by a pronoun
    reply: str  # the assistant's reply to q1 in the history


def load_squad(path: Path) -> tuple[dict[str, str], dict[str, list[Question]], dict[str, str]]:
    """(paragraph id -> indexed text, article -> its questions, paragraph id -> context)."""
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    corpus, contexts, questions = {}, {}, {}
    for article_index, article in enumerate(data):
        title = article["title"]
        for paragraph_index, paragraph in enumerate(article["paragraphs"]):
            paragraph_id = f"{article_index}-{paragraph_index}"
            corpus[paragraph_id] = f"{title.replace('_', ' ')}\n\n{paragraph['context']}"
            contexts[paragraph_id] = paragraph["context"]
            for qa in paragraph["qas"]:
                first = qa["answers"][0]
                questions.setdefault(title, []).append(Question(
                    article=title, paragraph=paragraph_id, text=" ".join(qa["question"].split()),
                    answer=first["text"], answer_start=first["answer_start"],
                ))
    return corpus, questions, contexts


def subject_names(title: str) -> list[str]:
    spaced = title.replace("_", " ")
    names = {re.sub(r"\s*\([^)]*\)\s*$", "", spaced).strip()}
    if ", " in spaced:
        names.add(spaced.split(", ")[0])
    names.update(SUBJECT_PARTS.get(title, ()))
    return sorted(names, key=lambda n: (-len(n), n))  # longest first, so "Nikola Tesla" wins over "Tesla"


def subject_pattern(title: str) -> re.Pattern:
    names = "|".join(re.escape(name) for name in subject_names(title))
    return re.compile(
        rf"(?<![\w&/-])(?P<the>(?:the|an?)\s+)?(?P<name>{names})(?P<plural>e?s)?(?P<possessive>['’]s|['’])?(?![\w&/-])", re.IGNORECASE
    )


def _word_before(text: str, index: int) -> str:
    words = re.findall(r"[\w'’-]+", text[:index])
    return words[-1].lower() if words else ""


def _word_after(text: str, index: int) -> str | None:
    """The next word, or None when punctuation or the end comes first."""
    match = re.match(r"\s*([\w'’-]+)", text[index:])
    return match.group(1).lower() if match else None


def _next_is_lower(text: str, index: int) -> bool:
    match = re.match(r"\s*([\w'’-]+)", text[index:])
    return bool(match) and match.group(1)[0].islower()


def pronoun_follow_up(question: str, *, title: str, pattern: re.Pattern) -> str | None:
    """`question` with each mention of the subject replaced by a pronoun, or None where a mention
    cannot be (a modifier), or too little of the question is left."""
    matches = list(pattern.finditer(question))
    if not matches:
        return None
    pieces, last = [], 0
    for match in matches:
        before, after = _word_before(question, match.start()), _word_after(question, match.end())
        possessive = bool(match.group("possessive"))
        at_start = not question[: match.start()].strip()
        if len(re.findall(r'["“”]', question[: match.start()])) % 2:
            return None  # inside a quoted title ("On the Computational Complexity of Algorithms")
        # Where a pronoun can stand: after the start, "the", a function word or what looks like a
        # verb ("-s", "-ed"), not after an adjective ("singlet oxygen"); before punctuation, a
        # function word, or (after an auxiliary) a verb, not before a noun ("the Amazon Basin").
        if not (at_start or match.group("the") or before in FUNCTION_WORDS | WH_WORDS or before.endswith(("s", "ed"))):
            return None
        verb_after = (before in AUXILIARIES and after is not None and _next_is_lower(question, match.end())
                      and not after.endswith(("s", *NOUN_ENDINGS)))
        if not (possessive or after is None or after in FUNCTION_WORDS or verb_after):
            return None
        if title in PERSONS:
            kind = "person"
        elif match.group("plural") or match.group("name").lower() in PLURAL_NAMES:
            kind = "plural"
        else:
            kind = "thing"
        subject, obj, owner = PRONOUNS[kind]
        if possessive:
            pronoun = owner
        elif at_start or before in AUXILIARIES or after in AUXILIARIES:
            pronoun = subject
        else:
            pronoun = obj
        pieces.append(question[last : match.start()])
        pieces.append(pronoun.capitalize() if at_start else pronoun)
        last = match.end()
    pieces.append(question[last:])
    follow_up = " ".join("".join(pieces).split())
    if pattern.search(follow_up) or len(salient_words(follow_up)) < 2:
        return None
    return follow_up


def answer_sentence(context: str, start: int) -> str:
    """The sentence of `context` that holds the character `start`."""
    offset = 0
    for sentence in re.split(r"(?<=[.!?])\s+", context):
        found = context.find(sentence, offset)
        if found <= start < found + len(sentence):
            return sentence
        offset = found + len(sentence)
    return context


def build_pairs(questions: dict[str, list[Question]], contexts: dict[str, str], *, per_article: int, seed: int) -> tuple[list[Pair], dict]:
    rng = random.Random(seed)
    pairs: list[Pair] = []
    counts = {}
    for title in sorted(questions):
        pattern = subject_pattern(title)
        mentioning = [q for q in questions[title] if pattern.search(q.text)]
        usable = [(q, f) for q in mentioning if (f := pronoun_follow_up(q.text, title=title, pattern=pattern))]
        counts[title] = {"questions": len(questions[title]), "mention the subject": len(mentioning), "usable follow-ups": len(usable)}
        rng.shuffle(usable)
        taken = 0
        for question, follow_up in usable:
            if per_article and taken >= per_article:
                break
            firsts = [q for q in mentioning if q.text.lower() != question.text.lower()]
            elsewhere = [q for q in firsts if q.paragraph != question.paragraph]
            if not (elsewhere or firsts):
                continue
            first = rng.choice(elsewhere or firsts)
            reply = answer_sentence(contexts[first.paragraph], first.answer_start)
            pairs.append(Pair(pair_id=f"p{len(pairs)}", article=title, first=first, question=question, follow_up=follow_up, reply=reply))
            taken += 1
        counts[title]["pairs"] = taken
    return pairs, counts


def split_articles(pairs: list[Pair], *, seed: int) -> tuple[set[str], set[str]]:
    """(tuning articles, report articles): the articles with pairs, shuffled with the seed and halved."""
    articles = sorted({p.article for p in pairs})
    random.Random(seed).shuffle(articles)
    half = len(articles) // 2
    return set(articles[:half]), set(articles[half:])


def control_histories(pairs: list[Pair], *, seed: int) -> dict[str, Pair]:
    """For each pair, the pair of a different article whose q1 and reply come before its full q2."""
    rng = random.Random(seed + 1)
    chosen = {}
    for pair in pairs:
        others = [p for p in pairs if p.article != pair.article]
        chosen[pair.pair_id] = rng.choice(others)
    return chosen


def history_of(pair: Pair) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=pair.first.text), ChatMessage(role="assistant", content=pair.reply)]


# --- the variants -------------------------------------------------------------------------


def reads_as_follow_up(question: str) -> bool:
    """The "anaphora" guard: a pronoun or demonstrative of ANAPHORA, or at most 3 salient words."""
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", question)}
    return bool(words & ANAPHORA) or len(salient_words(question)) <= 3


@dataclass(frozen=True)
class Variant:
    """A way to rewrite a follow-up from its history (the grid this benchmark compares).

    source: "user" = the previous user message only; "user+assistant" = also the assistant's reply
    after it; "concatenate" = prepend the previous user message verbatim (no word selection).
    words: "all" salient words, or "capitalised" (with an upper-case letter or a digit), or
    "capitalised-else-all" (those, or all when there are none).
    cap: at most this many carried words (first ones first); None = no cap.
    repeat: the question written this many times before the carried words (weighs it in the
    mean-pooled embedding).
    guard: None = always; "anaphora" = only when the follow-up holds a pronoun or demonstrative
    (ANAPHORA) or has at most 3 salient words.
    """

    name: str
    source: str = "user"
    words: str = "all"
    cap: int | None = None
    repeat: int = 1
    guard: str | None = None

    def rewrite(self, question: str, history: list[ChatMessage]) -> str:
        users = [i for i, m in enumerate(history) if m.role == "user"]
        if not users:
            return question
        previous = history[users[-1]].content
        if self.source == "concatenate":
            return f"{previous} {question}"
        if self.guard == "anaphora" and not reads_as_follow_up(question):
            return question
        texts = [previous]
        if self.source == "user+assistant":
            texts += [m.content for m in history[users[-1] + 1 :] if m.role == "assistant"]
        present = {w.lower() for w in salient_words(question)}
        carried: list[str] = []
        for text in texts:
            for word in salient_words(text):
                if word.lower() not in present:
                    present.add(word.lower())
                    carried.append(word)
        if self.words != "all":
            named = [w for w in carried if any(c.isupper() or c.isdigit() for c in w)]
            carried = named if (named or self.words == "capitalised") else carried
        if self.cap is not None:
            carried = carried[: self.cap]
        if not carried:
            return question
        return " ".join([question] * self.repeat + carried)


BEFORE = Variant("previous user question's salient words (before this change)")
VARIANTS = [
    BEFORE,
    Variant("previous user question, verbatim, prepended", source="concatenate"),
    Variant("user question + assistant reply", source="user+assistant"),
    Variant("capitalised words only", words="capitalised"),
    Variant("capitalised words, else all", words="capitalised-else-all"),
    Variant("at most 3 words", cap=3),
    Variant("at most 5 words", cap=5),
    Variant("question written twice", repeat=2),
    Variant("question written three times", repeat=3),
    Variant("capitalised-else-all, question twice", words="capitalised-else-all", repeat=2),
    Variant("only if it reads as a follow-up (anaphora or <= 3 words)", guard="anaphora"),
    Variant("anaphora guard + capitalised-else-all", words="capitalised-else-all", guard="anaphora"),
    Variant("anaphora guard + capitalised-else-all + twice", words="capitalised-else-all", repeat=2, guard="anaphora"),
    Variant("anaphora guard + capitalised-else-all + three times", words="capitalised-else-all", repeat=3, guard="anaphora"),
]


# --- retrieval ----------------------------------------------------------------------------


class Index:
    def __init__(self, embedder, corpus: dict[str, str], *, cache_dir: Path | None) -> None:
        self.embedder = embedder
        self.ids = list(corpus)
        self.vectors = self._vectors(corpus, cache_dir=cache_dir)
        self._query_vectors: dict[str, np.ndarray] = {}
        self.query_seconds = 0.0

    def _vectors(self, corpus: dict[str, str], *, cache_dir: Path | None) -> np.ndarray:
        key = hashlib.sha256(json.dumps([str(self.embedder.model_path), list(corpus.items())]).encode()).hexdigest()[:16]
        cached = cache_dir / f"squad-dev-paragraphs-{key}.npy" if cache_dir else None
        if cached and cached.exists():
            say(f"paragraph vectors from {cached}")
            self.corpus_seconds = None
            return np.load(cached)
        say(f"encoding {len(corpus)} paragraphs with the base retriever")
        started = time.perf_counter()
        vectors = self.embedder.encode_documents(list(corpus.values()), batch_size=32)
        self.corpus_seconds = time.perf_counter() - started
        say(f"encoded in {clock(self.corpus_seconds)} ({len(corpus) / self.corpus_seconds:.1f} paragraphs/s)")
        if cached:
            cache_dir.mkdir(parents=True, exist_ok=True)
            np.save(cached, vectors)
        return vectors

    def search(self, texts: dict[str, str]) -> dict[str, list[str]]:
        """Query id -> the top RANK_CUTOFF paragraph ids; each distinct text is encoded once."""
        new = sorted({t for t in texts.values() if t not in self._query_vectors})
        if new:
            started = time.perf_counter()
            for text, vector in zip(new, self.embedder.encode_queries(new)):
                self._query_vectors[text] = vector
            self.query_seconds += time.perf_counter() - started
        ids = list(texts)
        scores = np.stack([self._query_vectors[texts[i]] for i in ids]) @ self.vectors.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :RANK_CUTOFF]
        return {query_id: [self.ids[j] for j in row] for query_id, row in zip(ids, top)}


@dataclass
class Row:
    label: str
    mean: dict
    per_query: dict  # recall@10 by pair id


def score(index: Index, texts: dict[str, str], gold: dict[str, str], *, label: str) -> Row:
    report = retrieval_report(runs=index.search(texts), qrels={q: {gold[q]: 1} for q in texts}, ks=(1, RANK_CUTOFF),
                              rank_cutoff=RANK_CUTOFF)
    return Row(label=label, mean=report["mean"], per_query={q: f[f"recall@{RANK_CUTOFF}"] for q, f in report["per_query"].items()})


def change(row: Row, base: Row, *, seed: int) -> str:
    interval = paired_bootstrap_interval(row.per_query, base.per_query, seed=seed)
    return f"{interval['delta']:+.3f} [{interval['low']:+.3f}, {interval['high']:+.3f}]"


# --- one half -----------------------------------------------------------------------------


@dataclass
class Half:
    name: str
    pairs: list[Pair]
    full: Row
    alone: Row
    follow_ups: dict[str, Row]  # variant name -> row
    controls: dict[str, Row]


def measure(index: Index, pairs: list[Pair], controls: dict[str, Pair], *, name: str) -> Half:
    gold = {p.pair_id: p.question.paragraph for p in pairs}
    full = score(index, {p.pair_id: p.question.text for p in pairs}, gold, label="full q2")
    alone = score(index, {p.pair_id: p.follow_up for p in pairs}, gold, label="follow-up alone")
    follow_ups, control_rows = {}, {}
    for variant in VARIANTS:
        follow_ups[variant.name] = score(
            index, {p.pair_id: variant.rewrite(p.follow_up, history_of(p)) for p in pairs}, gold, label=variant.name
        )
        control_rows[variant.name] = score(
            index, {p.pair_id: variant.rewrite(p.question.text, history_of(controls[p.pair_id])) for p in pairs}, gold,
            label=variant.name,
        )
    return Half(name=name, pairs=pairs, full=full, alone=alone, follow_ups=follow_ups, controls=control_rows)


def choose(half: Half) -> str:
    """The variant to ship, by the rule of the module docstring, on `half` (the tuning half)."""
    best = max(objective(half, v.name) for v in VARIANTS)
    close = [v for v in VARIANTS if objective(half, v.name) >= best - TIE]
    return max(close, key=lambda v: (half.controls[v.name].mean[f"recall@{RANK_CUTOFF}"], -VARIANTS.index(v))).name


def objective(half: Half, name: str) -> float:
    return (half.follow_ups[name].mean[f"recall@{RANK_CUTOFF}"] + half.controls[name].mean[f"recall@{RANK_CUTOFF}"]) / 2


def shipped_variant(pairs: list[Pair], controls: dict[str, Pair]) -> str | None:
    """The variant whose texts `condense_heuristic` reproduces exactly on every pair and control."""
    cases = [(p.follow_up, history_of(p)) for p in pairs] + [(p.question.text, history_of(controls[p.pair_id])) for p in pairs]
    shipped = [condense_heuristic(question=q, history=h) for q, h in cases]
    for variant in VARIANTS:
        if all(variant.rewrite(q, h) == s for (q, h), s in zip(cases, shipped)):
            return variant.name
    return None


def print_half(half: Half, *, seed: int, chosen: str, shipped: str | None, title: str) -> list[dict]:
    r, m, r1 = f"recall@{RANK_CUTOFF}", f"mrr@{RANK_CUTOFF}", "recall@1"
    rows = [
        ["full q2 (subject intact, upper bound)", f"{half.full.mean[r]:.3f}", f"{half.full.mean[m]:.3f}", f"{half.full.mean[r1]:.3f}", "-", "-", "-", "-"],
        # Not rewriting leaves the control question as it is: its control figure is the full q2's.
        ["follow-up alone (no rewriting)", f"{half.alone.mean[r]:.3f}", f"{half.alone.mean[m]:.3f}", f"{half.alone.mean[r1]:.3f}", "-",
         f"{half.full.mean[r]:.3f}", "+0.000", f"{(half.alone.mean[r] + half.full.mean[r]) / 2:.3f}"],
    ]
    figures = []
    for variant in VARIANTS:
        follow, control = half.follow_ups[variant.name], half.controls[variant.name]
        marks = []
        if variant.name == chosen:
            marks.append("chosen on the tuning half")
        if variant.name == shipped:
            marks.append("= condense_heuristic now")
        label = f"+ {variant.name}" + (f" ({'; '.join(marks)})" if marks else "")
        rows.append([
            label, f"{follow.mean[r]:.3f}", f"{follow.mean[m]:.3f}", f"{follow.mean[r1]:.3f}", change(follow, half.alone, seed=seed),
            f"{control.mean[r]:.3f}", change(control, half.full, seed=seed), f"{objective(half, variant.name):.3f}",
        ])
        figures.append({"variant": variant.name, "follow_up": follow.mean, "control": control.mean})
    print(table(
        title,
        ["question sent to the retriever", f"{r}", f"{m}", f"{r1}", f"{r} change vs alone [95% CI]",
         f"control {r}", "control change vs full q2 [95% CI]", "mean of the two recalls"],
        rows,
    ))
    return figures


def main() -> None:
    args = parse_args()
    import sentence_transformers
    import torch

    from rag.embedding import BASE_RETRIEVER_NAME, base_retriever_path, load_embedder

    if args.threads:
        torch.set_num_threads(args.threads)
    load_at_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    corpus, questions, contexts = load_squad(args.data)
    pairs, counts = build_pairs(questions, contexts, per_article=args.per_article, seed=args.seed)
    tuning_articles, report_articles = split_articles(pairs, seed=args.seed)
    controls = control_histories(pairs, seed=args.seed)
    tuning = [p for p in pairs if p.article in tuning_articles]
    report = [p for p in pairs if p.article in report_articles]
    say(f"{len(corpus)} paragraphs; {len(pairs)} pairs from {len({p.article for p in pairs})} of {len(questions)} articles: "
        f"{len(tuning)} tuning ({len(tuning_articles)} articles), {len(report)} report ({len(report_articles)} articles)")
    for pair in pairs[: args.show]:
        print(f"  [{pair.article}] q1: {pair.first.text}\n      q2: {pair.question.text}\n      follow-up: {pair.follow_up}\n"
              f"      rewritten: {condense_heuristic(question=pair.follow_up, history=history_of(pair))}")

    embedder = load_embedder(base_retriever_path())
    index = Index(embedder, corpus, cache_dir=args.cache_dir)
    tuned = measure(index, tuning, controls, name="tuning")
    reported = measure(index, report, controls, name="report")
    chosen = choose(tuned)
    shipped = shipped_variant(pairs, controls)

    print(f"\nEnvironment: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), load average at start "
          f"{load_at_start} (1, 5, 15 min), at the end {load_average()} (1 min); torch threads {torch.get_num_threads()}; "
          f"GPU {'yes' if torch.cuda.is_available() else 'none'} (device {embedder.device}); Python {platform.python_version()}, "
          f"torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}; retriever "
          f"{BASE_RETRIEVER_NAME}; whole run {clock(time.perf_counter() - STARTED)}"
          + (f", of which {clock(index.corpus_seconds)} encoding the corpus" if index.corpus_seconds else ""))
    guarded = sum(reads_as_follow_up(p.question.text) for p in pairs)
    print(f"Pairs: {len(pairs)} (at most {args.per_article or 'all'} per article, seed {args.seed}); "
          f"the control puts each full q2 after the q1 and reply of a pair of another article. "
          f"The anaphora guard lets through {sum(reads_as_follow_up(p.follow_up) for p in pairs)} of the {len(pairs)} "
          f"follow-ups (all hold a pronoun by construction) and {guarded} of the {len(pairs)} full q2s "
          f"({guarded / len(pairs):.0%}). condense_heuristic as shipped = {shipped!r}")
    tuning_figures = print_half(tuned, seed=args.seed, chosen=chosen, shipped=shipped,
                                title=f"TUNING half: {len(tuning)} pairs from {len(tuning_articles)} articles (the variant is chosen here)")
    report_figures = print_half(reported, seed=args.seed, chosen=chosen, shipped=shipped,
                                title=f"REPORT half: {len(report)} pairs from {len(report_articles)} other articles (the figures to quote)")
    if shipped and shipped != BEFORE.name:
        print(f"\nREPORT half, condense_heuristic now against before, recall@{RANK_CUTOFF} change [95% CI]: follow-ups "
              f"{change(reported.follow_ups[shipped], reported.follow_ups[BEFORE.name], seed=args.seed)}, control "
              f"{change(reported.controls[shipped], reported.controls[BEFORE.name], seed=args.seed)}")
    print(f"\nchosen on the tuning half (largest mean of follow-up and control recall@{RANK_CUTOFF}; within {TIE} of it, "
          f"the best control): {chosen!r}; query encoding {clock(index.query_seconds)} in all")
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "counts": counts, "chosen": chosen, "shipped": shipped,
            "tuning": {"pairs": len(tuning), "full": tuned.full.mean, "alone": tuned.alone.mean, "variants": tuning_figures},
            "report": {"pairs": len(report), "full": reported.full.mean, "alone": reported.alone.mean, "variants": report_figures},
            "pairs": [{"id": p.pair_id, "article": p.article, "half": "tuning" if p.article in tuning_articles else "report",
                       "q1": p.first.text, "reply": p.reply, "q2": p.question.text, "follow_up": p.follow_up,
                       "gold": p.question.paragraph, "control_q1": controls[p.pair_id].first.text} for p in pairs],
        }, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
