"""The curator's "contains personal data" flag on a label: while any label of a turn carries it
uncleared, training snapshots leave the turn out (training.services.snapshots). Only an admin
can clear it, after checking the turn (or redacting it by other means); the flag stays on the
label, with who cleared it and when, so the label still says what the curator saw.
"""

from django.utils import timezone

from curation.models import Label
from curation.permissions import user_can_curate, user_is_admin
from knowledge.errors import Forbidden, InvalidInput
from knowledge.models import Turn


def turn_personal_data_clear(*, turn: Turn, actor) -> int:
    """Clear every uncleared personal-data flag on the turn's labels; returns how many."""
    if not user_is_admin(actor) or not user_can_curate(actor, turn.knowledge_base):
        raise Forbidden("Only an admin can clear a personal-data flag.")
    cleared = Label.objects.filter(turn=turn, has_personal_data=True, personal_data_cleared_at__isnull=True).update(
        personal_data_cleared_by=actor, personal_data_cleared_at=timezone.now()
    )
    if not cleared:
        raise InvalidInput(f"Turn {turn.pk} has no uncleared personal-data flag.")
    return cleared
