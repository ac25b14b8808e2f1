"""Finding personal data in text and replacing it with typed placeholders, before anything is
stored (docs/personal-data.md).

Microsoft Presidio's analyzer runs with its pattern recognizers only: e-mail addresses, phone
numbers (python-phonenumbers, validated per region), credit cards (Luhn checksum), IBANs
(mod-97 checksum), IP addresses and URLs. It runs with Presidio's NoOpNlpEngine, which loads no
spaCy model and returns empty NLP artifacts, so nothing is downloaded and no NER runs: names
and postal addresses are NOT found (the doc says what that means). Two adjustments of ours:
- the e-mail recognizer checks the domain against tldextract's bundled suffix list instead of
  fetching the current one from the internet (which this platform cannot reach);
- bare domains ("example.com") count as URLs only as whole words, so "alice.smith" is not read
  as a domain of San Marino's TLD; a number after "order", "invoice", "ticket" and the like is
  a reference, not a phone number (see REFERENCE_WORDS).
"""

import functools
import logging
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

MODES = ("off", "redact", "reject")

# Presidio entity type -> the placeholder that replaces it.
PLACEHOLDERS = {
    "EMAIL_ADDRESS": "<EMAIL>",
    "PHONE_NUMBER": "<PHONE_NUMBER>",
    "CREDIT_CARD": "<CREDIT_CARD>",
    "IBAN_CODE": "<IBAN_CODE>",
    "IP_ADDRESS": "<IP_ADDRESS>",
    "URL": "<URL>",
}
ENTITY_TYPES = tuple(PLACEHOLDERS)

# Below this Presidio score a match is not reported. Phone numbers score 0.4 without context
# words (which need an NLP model), checksum-validated cards and IBANs 1.0.
SCORE_THRESHOLD = 0.35

# A run of digits right after one of these words is an order, invoice or ticket number.
REFERENCE_WORDS = (
    "order", "invoice", "ticket", "case", "reference", "ref", "tracking", "booking", "confirmation",
    "account", "customer", "serial", "batch", "lot", "item", "sku", "part", "isbn", "pmid",
)
_REFERENCE_BEFORE = re.compile(r"(?:\b(?:" + "|".join(REFERENCE_WORDS) + r")\b\.?\s*(?:#|no\.?|nr\.?|number|:)?\s*)$", re.I)
# A bare name ending in one of these ("setup.py", "README.md") is a file, not a domain, though
# Paraguay's and Moldova's TLDs say otherwise; with a scheme, "www." or a path it stays a URL.
FILE_EXTENSIONS = frozenset({"py", "sh", "md", "rs", "pl", "ps", "cs", "ts", "mk"})
# A phone number glued to letters or to a reference-style prefix ("ORD-", "INV-") is part of an id.
_GLUED_BEFORE = re.compile(r"[A-Za-z]-?$|#$")


class PersonalDataError(ValueError):
    """An unknown mode."""


@dataclass(frozen=True)
class Finding:
    entity_type: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class Redaction:
    """What `redact` made of a text: the text to store (placeholders under "redact", the text
    itself under "off" and "reject"), and the entity types found (sorted; none under "off")."""

    text: str
    entity_types: tuple[str, ...]
    findings: tuple[Finding, ...] = ()

    @property
    def found(self) -> bool:
        return bool(self.entity_types)


@functools.lru_cache(maxsize=1)
def analyzer():
    """Presidio's AnalyzerEngine with pattern recognizers only and no NLP model (loaded once)."""
    # Presidio picks a device for NLP models by importing torch (seconds), even with no model:
    # naming the device skips that, so redacting a log line does not load the model stack.
    os.environ.setdefault("PRESIDIO_DEVICE", "cpu")
    import tldextract
    from presidio_analyzer import AnalyzerEngine, Pattern, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UrlRecognizer,
    )

    offline_suffixes = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str):
            return offline_suffixes(pattern_text).fqdn != ""

    base = UrlRecognizer.BASE_URL_REGEX
    url_patterns = [
        Pattern("Standard Url", r"(?i)(?:https?://)" + base, 0.6),
        Pattern("Non schema URL", r"(?i)(?<![\w@.\-/])" + base + r"(?![\w\-@])", 0.5),
    ]
    nlp_engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    nlp_engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (
        OfflineEmailRecognizer(),
        PhoneRecognizer(supported_regions=("US", "GB", "DE", "FR", "IE", "NL", "ES", "IT", "CA", "AU")),
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
        UrlRecognizer(patterns=url_patterns),
    ):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])


def _is_reference_number(text: str, start: int) -> bool:
    before = text[max(0, start - 40) : start]
    return bool(_REFERENCE_BEFORE.search(before) or _GLUED_BEFORE.search(before))


def _is_file_name(match: str) -> bool:
    lowered = match.lower()
    if lowered.startswith(("http://", "https://", "www.")) or "/" in lowered:
        return False
    return lowered.rsplit(".", 1)[-1] in FILE_EXTENSIONS


def find(text: str) -> list[Finding]:
    """The personal data found in `text`, left to right, no two overlapping (a match inside a
    longer one, such as the domain of an e-mail address, is dropped)."""
    if not text or not text.strip():
        return []
    results = analyzer().analyze(text=text, language="en", entities=list(ENTITY_TYPES), score_threshold=SCORE_THRESHOLD)
    candidates = sorted(
        (Finding(r.entity_type, r.start, r.end, float(r.score)) for r in results),
        key=lambda f: (f.start, -(f.end - f.start), -f.score),
    )
    kept: list[Finding] = []
    for finding in candidates:
        if finding.entity_type == "PHONE_NUMBER" and _is_reference_number(text, finding.start):
            continue
        if finding.entity_type == "URL" and _is_file_name(text[finding.start : finding.end]):
            continue
        if kept and finding.start < kept[-1].end:
            previous = kept[-1]
            if finding.end <= previous.end:
                continue  # inside the previous match
            if finding.score > previous.score:  # overlapping: the surer one wins
                kept[-1] = finding
            continue
        kept.append(finding)
    return kept


def redact(text: str, mode: str) -> Redaction:
    """Apply a knowledge base's personal-data mode to one text.

    off: the text as it is, nothing looked for. redact: every finding replaced by its
    placeholder (PLACEHOLDERS). reject: the text unchanged, with what was found; the caller
    refuses to store it when anything was.
    """
    if mode not in MODES:
        raise PersonalDataError(f"Personal-data mode {mode!r} is unknown; choose one of {', '.join(MODES)}.")
    if mode == "off" or not text:
        return Redaction(text=text, entity_types=())
    findings = find(text)
    types = tuple(sorted({f.entity_type for f in findings}))
    if mode == "reject" or not findings:
        return Redaction(text=text, entity_types=types, findings=tuple(findings))
    return Redaction(text=_replace(text, findings), entity_types=types, findings=tuple(findings))


def _replace(text: str, findings: Iterable[Finding]) -> str:
    """Replace the findings with their placeholders through Presidio's anonymizer."""
    from presidio_anonymizer import AnonymizerEngine
    from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

    results = [RecognizerResult(f.entity_type, f.start, f.end, f.score) for f in findings]
    operators = {entity: OperatorConfig("replace", {"new_value": value}) for entity, value in PLACEHOLDERS.items()}
    return _anonymizer(AnonymizerEngine).anonymize(text=text, analyzer_results=results, operators=operators).text


@functools.lru_cache(maxsize=1)
def _anonymizer(engine_class):
    return engine_class()


def redact_all(texts: Iterable[str], mode: str) -> tuple[list[str], tuple[str, ...]]:
    """`redact` over several texts: (the texts to store, every entity type found in any)."""
    stored, found = [], set()
    for text in texts:
        result = redact(text, mode)
        stored.append(result.text)
        found.update(result.entity_types)
    return stored, tuple(sorted(found))


class RedactingLogFilter(logging.Filter):
    """A logging filter that redacts personal data from every record's message (settings'
    LOGGING puts it on the console handler), whatever the knowledge base's mode: a log line
    is not the place for a user's e-mail address. Exceptions' tracebacks are left as they are."""

    _busy = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(self._busy, "on", False) or record.name.startswith("presidio"):
            return True  # loading the analyzer logs too: do not recurse into it
        self._busy.on = True
        try:
            message = record.getMessage()
            redacted = redact(message, "redact").text
            if redacted != message:
                record.msg, record.args = redacted, None
        except Exception:  # a log line must never fail because of the filter
            pass
        finally:
            self._busy.on = False
        return True
