"""Accounts: sign-up by admin invitation only, a user's role, and curators' memberships of
knowledge bases. Each change is recorded in the audit log.

An invitation carries a random key that is shown once (in the invitation link); only its
sha256 is stored, as for API tokens. Accepting it creates the user in the group of the
invited role with memberships of the invited knowledge bases, and uses the invitation up.
"""

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.models import AbstractBaseUser, Group
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from curation.models import Invitation, Membership, TurnHold
from curation.permissions import ADMIN_GROUP, CURATOR_GROUP, user_is_curator
from knowledge.errors import Conflict, InvalidInput, NotFound, ServiceError
from knowledge.models import KnowledgeBase
from knowledge.services.audit import audit_record

INVITATION_VALID_FOR = timedelta(days=7)
_ROLE_GROUPS = {Invitation.Role.CURATOR: CURATOR_GROUP, Invitation.Role.ADMIN: ADMIN_GROUP}


class InvitationUnusable(ServiceError):
    """The invitation exists but has expired or was already accepted."""

    status_code = 410


def _hash(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def invitation_create(
    *,
    invited_by: AbstractBaseUser,
    email: str,
    role: str = Invitation.Role.CURATOR,
    knowledge_bases: list[KnowledgeBase] | None = None,
    valid_for: timedelta = INVITATION_VALID_FOR,
) -> tuple[Invitation, str]:
    """Create an invitation; returns it and its key, which is never stored and must be
    passed on now (as /invitations/<key>/accept/). The caller checks that the inviter is an admin."""
    email = (email or "").strip()
    try:
        validate_email(email)
    except ValidationError:
        raise InvalidInput(f"{email!r} is not an email address.") from None
    if role not in _ROLE_GROUPS:
        raise InvalidInput(f"Role {role!r} is unknown; choose one of {', '.join(_ROLE_GROUPS)}.")
    key = secrets.token_urlsafe(32)
    with transaction.atomic():
        invitation = Invitation.objects.create(
            email=email,
            role=role,
            key_hash=_hash(key),
            invited_by=invited_by,
            expires_at=timezone.now() + valid_for,
        )
        if knowledge_bases:
            invitation.knowledge_bases.set(knowledge_bases)
        audit_record(
            action="invitation.create", object_type="invitation", object_id=invitation.pk, actor=invited_by,
            after={"email": email, "role": role, "knowledge_bases": sorted(kb.slug for kb in knowledge_bases or [])},
        )  # fmt: skip
    return invitation, key


def invitation_for_key(*, key: str, lock: bool = False) -> Invitation:
    """The usable invitation with this key: NotFound for an unknown key, InvitationUnusable
    for an expired or already accepted one."""
    invitations = Invitation.objects.select_for_update() if lock else Invitation.objects.all()
    invitation = invitations.filter(key_hash=_hash(key or "")).first()
    if invitation is None:
        raise NotFound("This invitation link is not valid. Ask an admin for a new one.")
    if invitation.accepted_at is not None:
        raise InvitationUnusable("This invitation has already been used. Log in, or ask an admin for a new one.")
    if invitation.revoked_at is not None:
        raise InvitationUnusable("This invitation was revoked. Ask an admin for a new one.")
    if invitation.expires_at <= timezone.now():
        raise InvitationUnusable("This invitation has expired. Ask an admin for a new one.")
    return invitation


def invitation_revoke(*, invitation_id: int, actor: AbstractBaseUser) -> Invitation:
    """Revoke a pending invitation, so its link no longer works; the caller checks that the
    actor is an admin. An accepted invitation cannot be revoked (remove the user's access
    instead); revoking one already revoked or expired changes nothing and records nothing."""
    with transaction.atomic():
        invitation = Invitation.objects.select_for_update().filter(pk=invitation_id).first()
        if invitation is None:
            raise NotFound(f"No invitation {invitation_id}.")
        if invitation.accepted_at is not None:
            raise Conflict(
                f"The invitation for {invitation.email} was accepted already: remove the user's access instead."
            )
        if invitation.revoked_at is not None or invitation.expires_at <= timezone.now():
            return invitation
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
        audit_record(
            action="invitation.revoke", object_type="invitation", object_id=invitation.pk, actor=actor,
            before={"email": invitation.email, "status": "pending"}, after={"email": invitation.email, "status": "revoked"},
        )  # fmt: skip
    return invitation


def invitation_accept(*, key: str, username: str, password: str) -> AbstractBaseUser:
    """Create the invitee's account: a user in the role's group, members of the invited
    knowledge bases. Single use: a second accept (even a concurrent one) is refused."""
    user_model = get_user_model()
    username = (username or "").strip()
    if not username:
        raise InvalidInput("Choose a username.")
    try:
        user_model.username_validator(username)
    except ValidationError as error:
        raise InvalidInput(" ".join(error.messages)) from None
    if len(username) > user_model._meta.get_field("username").max_length:
        raise InvalidInput("The username is too long.")
    with transaction.atomic():
        # Lock the invitation: two tabs accepting at once must not create two accounts.
        invitation = invitation_for_key(key=key, lock=True)
        if user_model.objects.filter(username__iexact=username).exists():
            raise InvalidInput(f"The username {username!r} is taken; choose another.")
        candidate = user_model(username=username, email=invitation.email)
        try:
            password_validation.validate_password(password or "", user=candidate)
        except ValidationError as error:
            raise InvalidInput(" ".join(error.messages)) from None
        try:
            user = user_model.objects.create_user(username=username, email=invitation.email, password=password)
        except IntegrityError:
            raise InvalidInput(f"The username {username!r} is taken; choose another.") from None
        user.groups.add(Group.objects.get(name=_ROLE_GROUPS[invitation.role]))
        Membership.objects.bulk_create(
            [Membership(knowledge_base=kb, user=user) for kb in invitation.knowledge_bases.all()],
            ignore_conflicts=True,
        )
        invitation.accepted_by = user
        invitation.accepted_at = timezone.now()
        invitation.save(update_fields=["accepted_by", "accepted_at"])
        audit_record(
            action="invitation.accept", object_type="invitation", object_id=invitation.pk, actor=user,
            after={"user": username, "role": invitation.role,
                   "knowledge_bases": sorted(invitation.knowledge_bases.values_list("slug", flat=True))},
        )  # fmt: skip
    return user


def membership_add(*, knowledge_base: KnowledgeBase, username: str) -> Membership:
    """Let a curator judge the knowledge base's turns (adding one twice changes nothing)."""
    user = get_user_model().objects.filter(username=(username or "").strip()).first()
    if user is None:
        raise NotFound(f"No user {username!r}.")
    if not user_is_curator(user):
        raise InvalidInput(f"{user.get_username()} is not a curator (or is deactivated).")
    with transaction.atomic():
        membership, created = Membership.objects.get_or_create(knowledge_base=knowledge_base, user=user)
        if created:
            audit_record(
                action="membership.add", object_type="user", object_id=user.pk, knowledge_base=knowledge_base,
                after={"user": user.get_username(), "member": True},
            )  # fmt: skip
    return membership


def membership_remove(*, knowledge_base: KnowledgeBase, user: AbstractBaseUser) -> None:
    """Take a curator off the knowledge base; their labels stay, their held turns are freed."""
    with transaction.atomic():
        removed, _ = Membership.objects.filter(knowledge_base=knowledge_base, user=user).delete()
        TurnHold.objects.filter(turn__knowledge_base=knowledge_base, curator=user).delete()
        if removed:
            audit_record(
                action="membership.remove", object_type="user", object_id=user.pk, knowledge_base=knowledge_base,
                before={"user": user.get_username(), "member": True}, after={"member": False},
            )  # fmt: skip


ROLES = ("admin", "curator", "none")


def user_role(user: AbstractBaseUser) -> str:
    names = set(user.groups.values_list("name", flat=True))
    return "admin" if ADMIN_GROUP in names else "curator" if CURATOR_GROUP in names else "none"


def user_role_set(*, user: AbstractBaseUser, role: str) -> AbstractBaseUser:
    """Make the user an admin, a curator, or neither ("none"): their group changes, their
    memberships stay (they count again if the user is made a curator again). Superusers stay
    superusers: that flag is not a role here. The caller checks that the actor is an admin."""
    if role not in ROLES:
        raise InvalidInput(f"Role {role!r} is unknown; choose one of {', '.join(ROLES)}.")
    with transaction.atomic():
        before = user_role(user)
        if before == role:
            return user
        groups = {name: Group.objects.get_or_create(name=name)[0] for name in (ADMIN_GROUP, CURATOR_GROUP)}
        user.groups.remove(*groups.values())
        if role != "none":
            user.groups.add(groups[_ROLE_GROUPS[role]])
        audit_record(
            action="user.role_change", object_type="user", object_id=user.pk,
            before={"user": user.get_username(), "role": before}, after={"role": role},
        )  # fmt: skip
    return user
