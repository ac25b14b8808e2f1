"""Where a turn stands in the curation queue, from what is known when it is stored: its user
feedback and its passages' retrieval scores. Pure, so serving can place a turn as it stores it
and the queue (curation.services.queue) can read one index in order.

Priority, in tiers:
  0. negative user feedback (newest first);
  1. low retrieval confidence: the top two passage scores are less than
     LOW_CONFIDENCE_MARGIN apart (smallest margin first);
  2. everything else, in a stable random order (a random sample, the same for everyone).
Turns with fewer than two scored passages have no margin and go to tier 2.
"""

import random
import time

LOW_CONFIDENCE_MARGIN = 0.05
RANDOM_TIER = 2


def turn_queue_position(*, feedback: int | None, scores: list[float | None], created: float | None = None) -> tuple[int, float]:
    """(tier, order within the tier) for a turn; see the module docstring."""
    if feedback == -1:
        return 0, -(created if created is not None else time.time())
    known = sorted((s for s in scores if s is not None), reverse=True)
    if len(known) >= 2 and known[0] - known[1] < LOW_CONFIDENCE_MARGIN:
        return 1, known[0] - known[1]
    return RANDOM_TIER, random.random()
