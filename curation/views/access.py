"""Access checks for pages: every view goes through one of these decorators.

`knowledge_base_page` resolves the `slug` URL argument to a knowledge base the user may
curate (admins: all; curators: their memberships) and passes it as `knowledge_base`;
anyone else gets a 404, so a curator cannot even learn that another knowledge base exists.
`admin_page` lets only admins in (403 for other logged-in users).
"""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.utils.cache import patch_vary_headers

from curation.permissions import user_can_curate, user_is_admin
from knowledge.models import KnowledgeBase


def knowledge_base_page(view):
    @login_required
    @wraps(view)
    def wrapper(request, slug: str, *args, **kwargs):
        knowledge_base = KnowledgeBase.objects.select_related("live_space").filter(slug=slug).first()
        if knowledge_base is None or not user_can_curate(request.user, knowledge_base):
            raise Http404("No such knowledge base.")
        return view(request, *args, knowledge_base=knowledge_base, **kwargs)

    return wrapper


def admin_page(view):
    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not user_is_admin(request.user):
            raise PermissionDenied("Admins only.")
        return view(request, *args, **kwargs)

    return wrapper


def fragment(response):
    """Mark an HTMX fragment response: caches must keep it apart from the full page."""
    patch_vary_headers(response, ["HX-Request"])
    return response
