"""Personal-data detection on a labelled synthetic fixture: precision and recall per entity type
of rag.personal_data (Presidio's pattern recognizers, no NER model), and what was missed or
wrongly flagged. The fixture is made by rag.personal_data_fixture from a fixed seed.

    python bench/pii.py [--seed 14] [--per-type 40] [--negatives 100] [--show 5]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.personal_data import analyzer, find  # noqa: E402
from rag.personal_data_fixture import score, synthetic_sentences  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--per-type", type=int, default=40)
    parser.add_argument("--negatives", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--show", type=int, default=5, help="misses and false alarms to print per type")
    args = parser.parse_args()

    sentences = synthetic_sentences(seed=args.seed, per_type=args.per_type, negatives=args.negatives, pairs=args.pairs)
    started = time.perf_counter()
    analyzer()
    load_s = time.perf_counter() - started
    findings = {}
    started = time.perf_counter()
    for sentence in sentences:
        findings[sentence.text] = find(sentence.text)
    detect_s = time.perf_counter() - started
    scores = score(sentences, lambda text: findings[text])

    entities = sum(len(s.entities) for s in sentences)
    negatives = sum(not s.entities for s in sentences)
    print(f"{len(sentences)} sentences (seed {args.seed}): {entities} labelled entities, {negatives} sentences without any")
    print(f"engine load {load_s:.1f} s; detection {1000 * detect_s / len(sentences):.1f} ms per sentence")
    print(f"{'entity type':<15}{'labelled':>9}{'found':>7}{'TP':>5}{'FP':>5}{'FN':>5}{'precision':>11}{'recall':>8}")
    for entity_type, s in scores.items():
        labelled = s.true_positives + s.false_negatives
        found = s.true_positives + s.false_positives
        print(
            f"{entity_type:<15}{labelled:>9}{found:>7}{s.true_positives:>5}{s.false_positives:>5}{s.false_negatives:>5}"
            f"{s.precision:>11.3f}{s.recall:>8.3f}"
        )
    flagged_negatives = [s.text for s in sentences if not s.entities and findings[s.text]]
    print(f"negative sentences flagged: {len(flagged_negatives)} of {negatives}")
    if args.show:
        for entity_type in scores:
            misses = [
                s.text for s in sentences
                if any(e.entity_type == entity_type for e in s.entities)
                and not any(f.entity_type == entity_type for f in findings[s.text])
            ][: args.show]
            alarms = [
                (s.text, [s.text[f.start:f.end] for f in findings[s.text] if f.entity_type == entity_type])
                for s in sentences
                if any(f.entity_type == entity_type for f in findings[s.text])
                and not any(e.entity_type == entity_type for e in s.entities)
            ][: args.show]
            for text in misses:
                print(f"  missed {entity_type}: {text}")
            for text, spans in alarms:
                print(f"  false {entity_type} {spans}: {text}")


if __name__ == "__main__":
    main()
