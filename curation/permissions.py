"""Who may do what: admins (superusers or the `admin` group) everything; curators (the `curator`
group) judge the turns of knowledge bases they are members of. Every view and API action asks here."""

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from knowledge.models import ApiToken, KnowledgeBase

ADMIN_GROUP = "admin"
CURATOR_GROUP = "curator"


def user_is_admin(user: AbstractBaseUser) -> bool:
    if not (user.is_authenticated and user.is_active):
        return False
    return user.is_superuser or user.groups.filter(name=ADMIN_GROUP).exists()


def user_is_curator(user: AbstractBaseUser) -> bool:
    return user.is_authenticated and user.is_active and user.groups.filter(name=CURATOR_GROUP).exists()


def knowledge_bases_for(user: AbstractBaseUser) -> QuerySet[KnowledgeBase]:
    if user_is_admin(user):
        return KnowledgeBase.objects.all()
    if not user_is_curator(user):
        return KnowledgeBase.objects.none()
    return KnowledgeBase.objects.filter(memberships__user=user)


def user_can_curate(user: AbstractBaseUser, knowledge_base: KnowledgeBase) -> bool:
    if user_is_admin(user):
        return True
    return user_is_curator(user) and knowledge_base.memberships.filter(user=user).exists()


def user_may_revoke_token(user: AbstractBaseUser, token: ApiToken) -> bool:
    """A token's user may revoke it; so may an admin (admins use every knowledge base, so
    every token's knowledge bases are theirs)."""
    return user.is_authenticated and user.is_active and (token.user_id == user.pk or user_is_admin(user))


def user_may_rotate_token(user: AbstractBaseUser, token: ApiToken) -> bool:
    """Only a token's user: a rotation hands out a new secret, for them alone to see."""
    return user.is_authenticated and user.is_active and token.user_id == user.pk
