"""A labelled fixture for measuring rag.personal_data: synthetic sentences with known entities,
made by code from a fixed seed (nothing copied from real data), and per-type precision and
recall of the detector on them. Used by bench/pii.py and tests/rag/test_personal_data.py.

Card numbers carry a valid Luhn check digit and IBANs valid mod-97 check digits, so they are
numbers the checksum-validating recognizers must find; the negatives are sentences with order,
invoice and ticket numbers, versions, dates, amounts, file names, and card-like and IBAN-like
strings whose checksums fail, none of which may be flagged.
"""

import random
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rag.personal_data import ENTITY_TYPES, Finding


@dataclass(frozen=True)
class Entity:
    entity_type: str
    start: int
    end: int


@dataclass(frozen=True)
class LabelledSentence:
    text: str
    entities: tuple[Entity, ...]


# --- values -------------------------------------------------------------------------------

FIRST = ["alice", "bob", "chen", "dana", "emre", "fatima", "gus", "hana", "ivan", "jo", "kofi", "lena", "marta", "noor"]
LAST = ["smith", "okafor", "nguyen", "muller", "rossi", "kowalski", "dubois", "tanaka", "silva", "hansen"]
DOMAINS = ["example.com", "example.org", "mail.example.net", "uni-example.de", "example.co.uk", "corp.example.io"]
URL_HOSTS = ["example.com", "docs.example.org", "shop.example.net", "example.de", "portal.example.co.uk", "example.io"]


def luhn_check_digit(digits: str) -> str:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 0:  # doubled: the check digit will sit to the right of these
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    digits = [c for c in number if c.isdigit()]
    return luhn_check_digit("".join(digits[:-1])) == digits[-1]


def _card(rng: random.Random) -> str:
    kind = rng.choice(["visa", "mastercard", "amex", "discover"])
    if kind == "amex":
        body = rng.choice(["34", "37"]) + "".join(rng.choices(string.digits, k=12))
        number = body + luhn_check_digit(body)
        groups = [number[:4], number[4:10], number[10:]]
    else:
        prefix = {"visa": "4", "mastercard": str(rng.randint(51, 55)), "discover": "6011"}[kind]
        body = prefix + "".join(rng.choices(string.digits, k=15 - len(prefix)))
        number = body + luhn_check_digit(body)
        groups = [number[i : i + 4] for i in range(0, 16, 4)]
    return rng.choice([" ", "-", ""]).join(groups)


def _card_invalid(rng: random.Random) -> str:
    """A 16-digit Visa-like number whose last digit breaks the Luhn checksum."""
    body = "4" + "".join(rng.choices(string.digits, k=14))
    wrong = str((int(luhn_check_digit(body)) + rng.randint(1, 9)) % 10)
    number = body + wrong
    return " ".join(number[i : i + 4] for i in range(0, 16, 4))


# country: (BBAN pattern, "n" = digit, "a" = upper-case letter, "c" = letter or digit)
IBAN_FORMATS = {
    "DE": "n" * 18,
    "GB": "aaaa" + "n" * 14,
    "FR": "n" * 10 + "c" * 11 + "nn",
    "NL": "aaaa" + "n" * 10,
    "ES": "n" * 20,
    "IT": "a" + "n" * 10 + "c" * 12,
    "BE": "n" * 12,
    "AT": "n" * 16,
}


def iban_check_digits(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    numeric = "".join(str(int(c, 36)) for c in rearranged)
    return f"{98 - int(numeric) % 97:02d}"


def _bban(rng: random.Random, pattern: str) -> str:
    pools = {"n": string.digits, "a": string.ascii_uppercase, "c": string.ascii_uppercase + string.digits}
    return "".join(rng.choice(pools[p]) for p in pattern)


def _iban(rng: random.Random, *, valid: bool = True) -> str:
    country = rng.choice(sorted(IBAN_FORMATS))
    bban = _bban(rng, IBAN_FORMATS[country])
    check = iban_check_digits(country, bban)
    if not valid:
        check = f"{(int(check) + rng.randint(1, 50)) % 97 + 2:02d}"
        if check == iban_check_digits(country, bban):
            check = f"{(int(check) + 1) % 97 + 2:02d}"
    iban = country + check + bban
    if rng.random() < 0.5:
        return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return iban


def _email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice([f"{first}.{last}", f"{first}{rng.randint(1, 99)}", f"{first[0]}{last}", f"{first}_{last}"])
    return f"{local}@{rng.choice(DOMAINS)}"


def _phone(rng: random.Random) -> str:
    digits = lambda k: "".join(rng.choices(string.digits, k=k))  # noqa: E731
    area = rng.choice(["212", "415", "617", "312", "206", "303", "512"])
    exchange = str(rng.randint(2, 9)) + digits(2)
    line = digits(4)
    return rng.choice(
        [
            f"+1 {area}-{exchange}-{line}",
            f"({area}) {exchange}-{line}",
            f"{area}-{exchange}-{line}",
            f"+44 20 7946 0{digits(3)}",
            f"07700 900{digits(3)}",
            f"+49 30 {rng.randint(2, 9)}{digits(7)}",
            f"+33 1 {digits(2)} {digits(2)} {digits(2)} {digits(2)}",
            f"+33 6 {digits(2)} {digits(2)} {digits(2)} {digits(2)}",
        ]
    )


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.8:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    return "2001:db8:" + ":".join(f"{rng.randint(0, 0xFFFF):x}" for _ in range(6))


def _url(rng: random.Random) -> str:
    host = rng.choice(URL_HOSTS)
    path = "/".join(rng.choice(["account", "orders", "help", "reset", "profile", "docs", "v2"]) for _ in range(rng.randint(0, 3)))
    query = f"?id={rng.randint(100, 99999)}" if rng.random() < 0.4 else ""
    return rng.choice(
        [
            f"https://{host}/{path}{query}",
            f"http://{host}/{path}",
            f"https://www.{host}/{path}{query}",
            f"www.{host}/{path}",
        ]
    ).rstrip("/")


# --- sentences ----------------------------------------------------------------------------

TEMPLATES: dict[str, list[str]] = {
    "EMAIL_ADDRESS": [
        "Please send the trial results to {v} by Friday.",
        "My email is {v}, can you confirm my appointment?",
        "Contact {v} if the dosage table looks wrong.",
        "I wrote to {v} but never got an answer about the side effects.",
    ],
    "PHONE_NUMBER": [
        "You can reach me on {v} after six.",
        "Call {v} to book the follow-up scan.",
        "My mobile is {v}; text me the lab values.",
        "The clinic's phone is {v}, is that still right?",
    ],
    "CREDIT_CARD": [
        "I paid with card {v} but the subscription did not start.",
        "Charge the refill to {v} please.",
        "Why was {v} declined for the premium plan?",
        "My card number is {v}, expiry next year.",
    ],
    "IBAN_CODE": [
        "Refund the fee to IBAN {v}.",
        "Please transfer it to {v} before the end of the month.",
        "My account {v} was charged twice.",
        "The insurer wants {v} for the reimbursement, is that safe?",
    ],
    "IP_ADDRESS": [
        "The dashboard at {v} keeps timing out.",
        "My login from {v} was blocked.",
        "Our lab server {v} cannot reach the knowledge base.",
        "Whitelist {v} for the API please.",
    ],
    "URL": [
        "The paper is at {v} if you need it.",
        "I reset my password on {v} but it still fails.",
        "Is {v} the right page for the consent form?",
        "See {v} for the study protocol.",
    ],
}
VALUES: dict[str, Callable[[random.Random], str]] = {
    "EMAIL_ADDRESS": _email,
    "PHONE_NUMBER": _phone,
    "CREDIT_CARD": _card,
    "IBAN_CODE": _iban,
    "IP_ADDRESS": _ip,
    "URL": _url,
}


def _negative(rng: random.Random) -> str:
    """A sentence with no personal data, though some of it looks like numbers or links."""
    digits = lambda k: "".join(rng.choices(string.digits, k=k))  # noqa: E731
    return rng.choice(
        [
            lambda: f"Where is my order {digits(3)}-{digits(3)}-{digits(3)}?",
            lambda: f"Order number {digits(10)} arrived damaged.",
            lambda: f"Invoice INV-{rng.randint(2019, 2026)}-{digits(5)} shows the wrong amount.",
            lambda: f"Ticket #{digits(8)} is still open.",
            lambda: f"My booking reference ORD-{digits(10)} does not show up.",
            lambda: f"The card-like reference {_card_invalid(rng)} on the receipt is not a card.",
            lambda: f"The form rejected {_iban(rng, valid=False)} as an account.",
            lambda: f"Version {rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 30)} fixed the export bug.",
            lambda: f"The study ran from {rng.randint(2000, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} for 12 weeks.",
            lambda: f"A dose of {rng.randint(100, 900)} mg twice a day cut the risk by {rng.randint(5, 40)} percent.",
            lambda: f"The refill costs ${rng.randint(10, 999)}.{digits(2)} without insurance.",
            lambda: f"Run setup.py and read README.md before step {rng.randint(2, 9)}.",
            lambda: "Does vitamin D prevent hip fractures in adults over 65?",
            lambda: f"Sample {digits(6)} had a value of {rng.randint(1, 99)}.{digits(1)} mmol/L.",
            lambda: f"Table {rng.randint(1, 9)} lists {rng.randint(100, 5000)} patients in {rng.randint(3, 40)} centres.",
        ]
    )()


def synthetic_sentences(*, seed: int = 14, per_type: int = 40, negatives: int = 100, pairs: int = 20) -> list[LabelledSentence]:
    """`per_type` sentences with one entity of each type, `pairs` with two (an e-mail and a
    phone number), and `negatives` with none, shuffled with a fixed seed."""
    rng = random.Random(seed)
    sentences = []
    for entity_type in ENTITY_TYPES:
        for _ in range(per_type):
            template = rng.choice(TEMPLATES[entity_type])
            value = VALUES[entity_type](rng)
            start = template.index("{v}")
            text = template.replace("{v}", value)
            sentences.append(LabelledSentence(text, (Entity(entity_type, start, start + len(value)),)))
    for _ in range(pairs):
        email, phone = _email(rng), _phone(rng)
        prefix = "Write to "
        middle = " or call "
        text = f"{prefix}{email}{middle}{phone} about the results."
        first = Entity("EMAIL_ADDRESS", len(prefix), len(prefix) + len(email))
        second_start = first.end + len(middle)
        sentences.append(LabelledSentence(text, (first, Entity("PHONE_NUMBER", second_start, second_start + len(phone)))))
    for _ in range(negatives):
        sentences.append(LabelledSentence(_negative(rng), ()))
    rng.shuffle(sentences)
    return sentences


# --- scoring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeScore:
    entity_type: str
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        expected = self.true_positives + self.false_negatives
        return self.true_positives / expected if expected else 1.0


def score(sentences: Sequence[LabelledSentence], detect: Callable[[str], list[Finding]]) -> dict[str, TypeScore]:
    """Precision and recall per entity type. A finding counts as found when it overlaps a
    labelled entity of its type; a finding overlapping none (or only other types) is a false
    positive, a labelled entity no finding of its type overlaps a false negative."""
    counts: Counter = Counter()
    for sentence in sentences:
        findings = detect(sentence.text)
        for finding in findings:
            hit = any(
                e.entity_type == finding.entity_type and finding.start < e.end and e.start < finding.end
                for e in sentence.entities
            )
            counts[(finding.entity_type, "tp" if hit else "fp")] += 1
        for entity in sentence.entities:
            if not any(
                f.entity_type == entity.entity_type and f.start < entity.end and entity.start < f.end for f in findings
            ):
                counts[(entity.entity_type, "fn")] += 1
    return {
        t: TypeScore(t, counts[(t, "tp")], counts[(t, "fp")], counts[(t, "fn")]) for t in ENTITY_TYPES
    }
