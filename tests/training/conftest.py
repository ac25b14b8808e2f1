"""Fixtures shared by the training tests."""

import pytest
from django.contrib.auth.models import Group

from curation.models import Membership


@pytest.fixture
def curator(db, django_user_model, knowledge_base):
    """A curator who is a member of the test knowledge base."""
    user = django_user_model.objects.create_user("alice", password="pw-alice-123")
    user.groups.add(Group.objects.get_or_create(name="curator")[0])
    Membership.objects.create(knowledge_base=knowledge_base, user=user)
    return user
