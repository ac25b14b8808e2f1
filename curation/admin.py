"""The Django admin's view of memberships, invitations, labels, adjudications and suggestions:
read-only (knowledge.admin_read_only says why)."""

from curation.models import (
    Adjudication,
    FailureTag,
    Invitation,
    Label,
    LabelDraft,
    LabelRevision,
    Membership,
    PassageJudgment,
    RetrieverCalibration,
    Suggestion,
    SuggestionAgentAgreement,
    SuggestionAttempt,
    SyntheticQuestionJob,
    TurnHold,
)
from knowledge.admin_read_only import read_only_admin_register

read_only_admin_register(
    FailureTag, Membership, Invitation, TurnHold, Label, PassageJudgment, LabelRevision, LabelDraft, Adjudication, Suggestion,
    SuggestionAttempt, RetrieverCalibration, SuggestionAgentAgreement, SyntheticQuestionJob,
)  # fmt: skip
