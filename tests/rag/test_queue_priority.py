"""A turn's place in the curation queue, from its feedback and its passages' scores."""

import pytest

from rag.queue_priority import turn_queue_position


def test_queue_position_tiers():
    assert turn_queue_position(feedback=-1, scores=[0.9, 0.1], created=100.0) == (0, -100.0)
    tier, order = turn_queue_position(feedback=None, scores=[0.80, 0.78, 0.1])
    assert tier == 1 and order == pytest.approx(0.02)
    assert turn_queue_position(feedback=1, scores=[0.9, 0.5])[0] == 2
    assert turn_queue_position(feedback=None, scores=[0.9])[0] == 2
