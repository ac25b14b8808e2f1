"""rag.personal_data: Presidio's pattern recognizers without an NLP model, measured on the
synthetic labelled fixture of rag.personal_data_fixture (the one bench/pii.py prints)."""

import logging

import pytest

from rag.personal_data import PersonalDataError, RedactingLogFilter, find, redact
from rag.personal_data_fixture import (
    IBAN_FORMATS,
    _card,
    _iban,
    luhn_valid,
    score,
    synthetic_sentences,
)


@pytest.fixture(scope="module")
def fixture_scores():
    sentences = synthetic_sentences(seed=14)
    return sentences, score(sentences, find)


def test_the_fixture_is_a_few_hundred_sentences_with_negatives(fixture_scores):
    sentences, _ = fixture_scores
    assert len(sentences) >= 300
    assert sum(not s.entities for s in sentences) >= 100
    assert synthetic_sentences(seed=14) == sentences  # fixed seed, same fixture


def test_generated_cards_pass_luhn_and_ibans_pass_mod_97():
    import random

    rng = random.Random(1)
    for _ in range(50):
        assert luhn_valid(_card(rng))
        iban = _iban(rng).replace(" ", "")
        assert iban[:2] in IBAN_FORMATS
        rearranged = iban[4:] + iban[:4]
        assert int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
        bad = _iban(rng, valid=False).replace(" ", "")
        assert int("".join(str(int(c, 36)) for c in bad[4:] + bad[:4])) % 97 != 1


def test_checksum_validated_types_are_all_found(fixture_scores):
    _, scores = fixture_scores
    for entity_type in ("CREDIT_CARD", "IBAN_CODE"):
        assert scores[entity_type].recall == 1.0, scores[entity_type]
        assert scores[entity_type].precision == 1.0, scores[entity_type]


@pytest.mark.parametrize("entity_type", ["EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS", "URL"])
def test_the_other_types_meet_their_floors(fixture_scores, entity_type):
    _, scores = fixture_scores
    assert scores[entity_type].recall >= 0.95, scores[entity_type]
    assert scores[entity_type].precision >= 0.9, scores[entity_type]


def test_redact_replaces_with_typed_placeholders():
    text = "Mail alice.smith@example.com, card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, ip 192.168.1.20"
    result = redact(text, "redact")
    assert result.text == "Mail <EMAIL>, card <CREDIT_CARD>, IBAN <IBAN_CODE>, ip <IP_ADDRESS>"
    assert result.entity_types == ("CREDIT_CARD", "EMAIL_ADDRESS", "IBAN_CODE", "IP_ADDRESS")
    # A redacted text has nothing left to find.
    assert redact(result.text, "redact").entity_types == ()


def test_reject_keeps_the_text_and_says_what_was_found_and_off_looks_at_nothing():
    text = "call me on +1 415-555-0132 or see https://example.com/reset"
    rejected = redact(text, "reject")
    assert rejected.text == text and rejected.entity_types == ("PHONE_NUMBER", "URL")
    off = redact(text, "off")
    assert off.text == text and off.entity_types == ()
    with pytest.raises(PersonalDataError):
        redact(text, "sometimes")


@pytest.mark.parametrize(
    "text",
    [
        "Where is my order 451-778-219?",
        "Invoice INV-2024-00017 shows the wrong amount.",
        "The reference 4111 1111 1111 1112 fails the Luhn check.",
        "DE00 3704 0044 0532 0130 00 has wrong check digits.",
        "Run setup.py, then read README.md.",
        "alice.smith wrote version 2.3.1 on 2024-03-15.",
    ],
)
def test_look_alikes_are_not_flagged(text):
    assert find(text) == []


def test_the_log_filter_redacts_messages():
    record = logging.LogRecord("ragloop", logging.INFO, __file__, 1, "Turn from %s failed", ("bob@example.org",), None)
    assert RedactingLogFilter().filter(record) is True
    assert record.getMessage() == "Turn from <EMAIL> failed"
