"""The account page: your API tokens (never their secrets), with revoke and rotate buttons.
Admins also see the other users' tokens and may revoke them (a rotation hands out a new secret,
so only a token's user may rotate it)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import path
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from curation.permissions import user_is_admin, user_may_revoke_token, user_may_rotate_token
from knowledge.errors import ServiceError
from knowledge.models import ApiToken
from knowledge.selectors import api_tokens_of, api_tokens_of_others
from knowledge.services.tokens import api_token_revoke, api_token_rotate


def _tokens_page(request, *, new_secret: str = "", new_token: ApiToken | None = None, error: str = "", status: int = 200):
    is_admin = user_is_admin(request.user)
    context = {
        "tokens": api_tokens_of(user=request.user),
        "others": api_tokens_of_others(user=request.user) if is_admin else None,
        "new_secret": new_secret,
        "new_token": new_token,
        "error": error,
        "now": timezone.now(),
    }
    response = render(request, "curation/account/tokens.html", context, status=status)
    if new_secret:
        response["Cache-Control"] = "no-store"  # the page holds a secret shown once
    return response


def _token_or_404(token_id: int) -> ApiToken:
    token = ApiToken.objects.select_related("user").filter(pk=token_id).first()
    if token is None:
        raise Http404("No such token.")
    return token


@require_GET
@login_required
def account_tokens(request):
    return _tokens_page(request)


@require_POST
@login_required
def account_token_revoke(request, token_id: int):
    token = _token_or_404(token_id)
    if not user_may_revoke_token(request.user, token):
        # A curator must not learn whether another user's token id exists.
        raise Http404("No such token.")
    api_token_revoke(token=token)
    messages.success(request, f"Token {token.name!r} ({token.key_prefix}…) is revoked; it is refused from now on.")
    return redirect("account_tokens")


@require_POST
@login_required
def account_token_rotate(request, token_id: int):
    token = _token_or_404(token_id)
    if not user_may_rotate_token(request.user, token):
        if user_may_revoke_token(request.user, token):
            raise PermissionDenied("Only the token's own user may rotate it; you may revoke it.")
        raise Http404("No such token.")
    try:
        new, plain = api_token_rotate(token=token)
    except ServiceError as error:
        return _tokens_page(request, error=str(error), status=error.status_code)
    return _tokens_page(request, new_secret=plain, new_token=new)


urlpatterns = [
    path("account/tokens/", account_tokens, name="account_tokens"),
    path("account/tokens/<int:token_id>/revoke/", account_token_revoke, name="account_token_revoke"),
    path("account/tokens/<int:token_id>/rotate/", account_token_rotate, name="account_token_rotate"),
]
