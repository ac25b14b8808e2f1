"""Every route of the URLconf, walked with `get_resolver()`, against five callers: anonymous, a
curator of another knowledge base, a curator of this one, an admin and an API token (a curator's
token on this knowledge base, sent with no session). Each route's expected status per caller is
in ROUTES below: a new route that is not in the table fails, and so does a route that answers
differently, a 200 to someone who must not see it above all.

The URL arguments come from one set of rows made here (a knowledge base's slug, a turn's,
document's, run's, snapshot's, cycle's, webhook's and token's ids, a model version's name, an
invitation's key). Each caller's request runs in a savepoint rolled back after it, so an
admin's POST (a promotion, a revocation) changes nothing the next request sees.

The Django admin's ~250 routes share one rule (ADMIN_SITE_RULE): admin.site guards them all
with its own login, and a test here still requests every one of them as every caller.
"""

import re

import pytest
from django.contrib.auth.models import Group
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from curation.models import Membership
from curation.services.accounts import invitation_create
from knowledge.models import Conversation, EmbeddingJob
from knowledge.services.documents import documents_ingest
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.tokens import api_token_create
from knowledge.services.turns import TurnRecord, turns_ingest
from rag.documents import SourceDocument
from tests.training.conftest import make_snapshot, retriever_version
from training.models import Component, LoopCycle, RetrainingPolicy, TrainingRun, WebhookEndpoint

ROLES = ("anonymous", "other_curator", "curator", "admin", "token")

# route pattern -> {method: expected statuses, in ROLES order}.
# 302: to the login page (pages) or on after a POST; 401: the API wants a token; 403: the
# caller is known but may not; 404: a knowledge base the caller may not curate does not exist
# for them; 405: the method is not the route's.
# Public on purpose: the OpenAPI schema and its docs page, the login page, an invitation's
# page (its key is the secret). The API wants a token (401 to a session); POSTs with an empty
# body get as far as their validation (400/422) only for callers who may make them.
# fmt: off
ROUTES: dict[str, dict[str, tuple[int, int, int, int, int]]] = {
    "api/v1/openapi.json": {"GET": (200, 200, 200, 200, 200)},
    "api/v1/docs": {"GET": (200, 200, 200, 200, 200)},
    "api/v1/kbs": {"GET": (401, 401, 401, 401, 200)},
    "api/v1/kbs/<slug>/ask": {"POST": (401, 401, 401, 401, 400)},
    "api/v1/kbs/<slug>/retrieve": {"POST": (401, 401, 401, 401, 400)},
    "api/v1/kbs/<slug>/turns": {"POST": (401, 401, 401, 401, 400)},
    "api/v1/kbs/<slug>/conversations": {"GET": (401, 401, 401, 401, 200), "POST": (401, 401, 401, 401, 400)},
    "api/v1/kbs/<slug>/documents": {"GET": (401, 401, 401, 401, 200), "POST": (401, 401, 401, 401, 422)},
    "api/v1/kbs/<slug>/embedding-jobs/<job_id>": {"GET": (401, 401, 401, 401, 200)},
    "api/v1/turns/<turn_id>": {"GET": (401, 401, 401, 401, 200)},
    "api/v1/turns/<turn_id>/feedback": {"POST": (401, 401, 401, 401, 400)},
    "api/v1/conversations/<conversation_id>": {"GET": (401, 401, 401, 401, 200)},
    "api/v1/": {"GET": (404, 404, 404, 404, 404)},
    "v1/chat/completions": {"POST": (401, 401, 401, 401, 400)},
    "v1/models": {"GET": (401, 401, 401, 401, 200)},
    "login/": {"GET": (200, 200, 200, 200, 200)},
    "logout/": {"POST": (302, 302, 302, 302, 302)},
    "password/": {"GET": (302, 200, 200, 200, 302)},
    "": {"GET": (302, 200, 200, 200, 302)},
    "kbs/<slug:slug>/": {"GET": (302, 404, 200, 200, 302)},
    "kbs/<slug:slug>/progress/": {"GET": (302, 404, 200, 200, 302)},
    "kbs/<slug:slug>/ask/": {"POST": (302, 404, 422, 422, 302)},
    "kbs/<slug:slug>/documents/<int:document_id>/": {"GET": (302, 404, 200, 200, 302)},
    "turns/<int:turn_id>/": {"GET": (302, 404, 200, 200, 302)},
    "turns/<int:turn_id>/personal-data/clear/": {"POST": (302, 404, 403, 422, 302)},
    "kbs/<slug:slug>/queue/": {"GET": (302, 404, 200, 200, 302)},
    "kbs/<slug:slug>/judge/": {"GET": (302, 404, 302, 302, 302)},
    "kbs/<slug:slug>/turns/<int:turn_id>/judge/": {"GET": (302, 404, 200, 200, 302)},
    "kbs/<slug:slug>/turns/<int:turn_id>/draft/": {"POST": (302, 404, 422, 422, 302)},
    "kbs/<slug:slug>/turns/<int:turn_id>/label/": {"POST": (302, 404, 422, 422, 302)},
    "kbs/<slug:slug>/turns/<int:turn_id>/next/": {"POST": (302, 404, 200, 200, 302)},
    "kbs/<slug:slug>/turns/<int:turn_id>/search/": {"GET": (302, 404, 200, 200, 302)},
    "kbs/<slug:slug>/dashboard/": {"GET": (302, 404, 200, 200, 302)},
    "kbs/<slug:slug>/agreement/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/suggestions/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/disputes/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/disputes/<int:turn_id>/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/guidelines/": {"GET": (302, 404, 200, 200, 302)},
    "kbs/<slug:slug>/guidelines/edit/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/guidelines/preview/": {"POST": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/settings/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/settings/members/": {"POST": (302, 404, 403, 404, 302)},
    "kbs/<slug:slug>/settings/failure-tags/": {"POST": (302, 404, 403, 422, 302)},
    "kbs/<slug:slug>/settings/members/<int:user_id>/remove/": {"POST": (302, 404, 403, 302, 302)},
    "invitations/new/": {"GET": (302, 403, 403, 200, 302)},
    "invitations/<str:key>/accept/": {"GET": (200, 200, 200, 200, 200)},
    "kbs/<slug:slug>/labels.jsonl": {"GET": (302, 403, 403, 200, 302)},
    "account/tokens/": {"GET": (302, 200, 200, 200, 302)},
    "account/tokens/<int:token_id>/revoke/": {"POST": (302, 404, 404, 302, 302)},
    "account/tokens/<int:token_id>/rotate/": {"POST": (302, 404, 404, 200, 302)},
    "audit/": {"GET": (302, 403, 403, 200, 302)},
    "kbs/<slug:slug>/models/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/training-runs/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/training-runs/<int:run_id>/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/training-runs/<int:run_id>/log/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/training-runs/<int:run_id>/cancel/": {"POST": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/models/<str:name>/": {"GET": (302, 404, 403, 200, 302)},
    # An empty POST from an admin: 422, the promotion needs a reason.
    "kbs/<slug:slug>/models/<str:name>/promote/": {"POST": (302, 404, 403, 422, 302)},
    "kbs/<slug:slug>/models/<str:name>/rollback/": {"POST": (302, 404, 403, 409, 302)},
    "kbs/<slug:slug>/snapshots/<int:snapshot_id>/export/beir.zip": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/loop/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/loop/cycles/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/loop/cycles/<int:cycle_id>/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/loop/cycles/<int:cycle_id>/log/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/loop/policies/<str:component>/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/loop/policies/<str:component>/run/": {"POST": (302, 404, 403, 302, 302)},
    "kbs/<slug:slug>/snapshots/<int:snapshot_id>/export/<str:export_format>.jsonl": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/webhooks/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/webhooks/add/": {"POST": (302, 404, 403, 422, 302)},
    "kbs/<slug:slug>/webhooks/<int:endpoint_id>/delete/": {"POST": (302, 404, 403, 302, 302)},
    "kbs/<slug:slug>/webhooks/<int:endpoint_id>/enabled/": {"POST": (302, 404, 403, 302, 302)},
    # The admins' loop in the browser, erasure, invitation revocation.
    "knowledge-bases/new/": {"GET": (302, 403, 403, 200, 302)},
    "kbs/<slug:slug>/documents/upload/": {"POST": (302, 404, 403, 422, 302)},
    "kbs/<slug:slug>/documents/<int:document_id>/delete/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/training-runs/new/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/snapshots/new/": {"POST": (302, 404, 403, 302, 302)},
    "kbs/<slug:slug>/models/<str:name>/promote/confirm/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/models/<str:name>/rollback/confirm/": {"GET": (302, 404, 403, 200, 302)},
    "kbs/<slug:slug>/erase/": {"GET": (302, 404, 403, 200, 302)},
    "invitations/<int:invitation_id>/revoke/": {"POST": (302, 403, 403, 302, 302)},
    # Thumbs on an answer asked from the knowledge base page (an empty POST: no rating, 422).
    "kbs/<slug:slug>/turns/<int:turn_id>/feedback/": {"POST": (302, 404, 422, 422, 302)},
}
# fmt: on


def _walk(resolver: URLResolver, prefix: str = ""):
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern


def routes() -> list[str]:
    """Every route pattern, in URLconf order, each once (ninja lists a path per method)."""
    return list(dict.fromkeys(route for route, _ in _walk(get_resolver())))


def _admin_routes() -> list[str]:
    return [route for route in routes() if route.startswith("admin/")]


def _own_routes() -> list[str]:
    return [route for route in routes() if not route.startswith("admin/")]


@pytest.fixture
def world(db, django_user_model, admin_user):
    """Rows for every URL argument, and the users and token of the five callers."""
    curator_group = Group.objects.get_or_create(name="curator")[0]
    knowledge_base = knowledge_base_create(slug="test-kb", name="Test KB")
    other_kb = knowledge_base_create(slug="other-kb", name="Other KB")
    curator = django_user_model.objects.create_user("cora", password="pw-cora-123")
    curator.groups.add(curator_group)
    Membership.objects.create(knowledge_base=knowledge_base, user=curator)
    other_curator = django_user_model.objects.create_user("otto", password="pw-otto-123")
    other_curator.groups.add(curator_group)
    Membership.objects.create(knowledge_base=other_kb, user=other_curator)

    documents_ingest(
        knowledge_base=knowledge_base,
        documents=[SourceDocument(external_id="d1", title="Statins", text="Statins inhibit HMG-CoA reductase.", metadata={})],
    )
    document = knowledge_base.documents.get()
    result = turns_ingest(
        knowledge_base=knowledge_base,
        records=[TurnRecord(external_id="t1", query="What do statins inhibit?", answer="HMG-CoA reductase", conversation_id="c1", position=0)],
    )
    turn_id = result.created["t1"]
    conversation = Conversation.objects.get(knowledge_base=knowledge_base)
    snapshot = make_snapshot(knowledge_base, [{"example_id": "e1", "query": "What do statins inhibit?", "relevant": [{"text": "Statins inhibit HMG-CoA reductase.", "document_id": "d1", "chunk_id": None, "title": "Statins"}]}])
    version = retriever_version(knowledge_base, "retriever-v1", snapshot=snapshot)
    run = TrainingRun.objects.create(knowledge_base=knowledge_base, component=Component.RETRIEVER, mode="contrastive")
    policy = RetrainingPolicy.objects.create(
        knowledge_base=knowledge_base, component=Component.RETRIEVER, name="nightly", mode="contrastive", gate_metric="ndcg@10"
    )
    cycle = LoopCycle.objects.create(policy=policy, knowledge_base=knowledge_base, component=Component.RETRIEVER, trigger="manual")
    endpoint = WebhookEndpoint.objects.create(knowledge_base=knowledge_base, url="https://hooks.example/ragloop", secret="whsec_AAAA")
    admins_token, _ = api_token_create(user=admin_user, name="admin's", knowledge_bases=[knowledge_base])
    _, curator_plain = api_token_create(user=curator, name="curator's", knowledge_bases=[knowledge_base])
    invitation, invitation_key = invitation_create(invited_by=admin_user, email="new@example.com", knowledge_bases=[knowledge_base])
    job = EmbeddingJob.objects.filter(space__knowledge_base=knowledge_base).first()

    arguments = {
        "slug": knowledge_base.slug,
        "turn_id": turn_id,
        "document_id": document.pk,
        "run_id": run.pk,
        "name": version.name,
        "snapshot_id": snapshot.pk,
        "export_format": "pairs",
        "cycle_id": cycle.pk,
        "component": "retriever",
        "endpoint_id": endpoint.pk,
        "user_id": curator.pk,
        "key": invitation_key,
        "invitation_id": invitation.pk,
        "token_id": admins_token.pk,
        "job_id": job.pk if job else 1,
        "conversation_id": conversation.pk,
    }
    users = {"other_curator": other_curator, "curator": curator, "admin": admin_user}
    return {"arguments": arguments, "users": users, "token": curator_plain}


_ARGUMENT = re.compile(r"<(?:(?P<converter>\w+):)?(?P<name>\w+)>")


def route_url(route: str, arguments: dict) -> str:
    def value(match: re.Match) -> str:
        name = match.group("name")
        if name not in arguments:
            raise AssertionError(f"route {route!r}: add a fixture value for its argument {name!r} to `world`")
        return str(arguments[name])

    return "/" + _ARGUMENT.sub(value, route)


def client_for(role: str, world) -> Client:
    client = Client()
    if role == "token":
        client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {world['token']}"
    elif role != "anonymous":
        client.force_login(world["users"][role])
    return client


def observed_status(method: str, url: str, role: str, world) -> int:
    """The status `role` gets, in a savepoint rolled back afterwards."""
    with transaction.atomic():
        client = client_for(role, world)
        response = client.post(url) if method == "POST" else client.get(url)
        transaction.set_rollback(True)
    return response.status_code


def _statuses(method: str, url: str, world) -> tuple[int, ...]:
    return tuple(observed_status(method, url, role, world) for role in ROLES)


PUBLIC = {"api/v1/openapi.json", "api/v1/docs", "login/", "invitations/<str:key>/accept/"}


def test_only_the_public_routes_answer_anonymous_callers_and_sessions_never_reach_the_api():
    anonymous_200 = {route for route, methods in ROUTES.items() for statuses in methods.values() if statuses[0] == 200}
    assert anonymous_200 == PUBLIC
    for route, methods in ROUTES.items():
        if route.startswith(("api/v1/", "v1/")) and route not in PUBLIC:
            for statuses in methods.values():
                # a page session is no API credential; a token is no page login
                assert statuses[1:4] in ((401, 401, 401), (405, 405, 405), (404, 404, 404)), route
        elif route not in PUBLIC:
            assert all(statuses[4] in (302, 405) for statuses in methods.values()), route


def test_every_route_is_in_the_table():
    missing = [route for route in _own_routes() if route not in ROUTES]
    stale = [route for route in ROUTES if route not in _own_routes()]
    assert not missing, f"routes without an entry in ROUTES (say who may open them): {missing}"
    assert not stale, f"entries in ROUTES for routes that no longer exist: {stale}"


def test_every_route_answers_each_caller_as_the_table_says(world):
    wrong = []
    observed = {}
    for route in _own_routes():
        url = route_url(route, world["arguments"])
        if route in ROUTES:
            observed[route] = {method: _statuses(method, url, world) for method in ROUTES[route]}
        else:  # not in the table yet: what it answers, for the message
            observed[route] = {"GET": _statuses("GET", url, world)}
            if set(observed[route]["GET"]) == {405}:
                observed[route] = {"POST": _statuses("POST", url, world)}
        for method, statuses in observed[route].items():
            expected = ROUTES.get(route, {}).get(method)
            if expected is not None and expected != statuses:
                wrong.append(f"{method} {url}: expected {dict(zip(ROLES, expected))}, got {dict(zip(ROLES, statuses))}")
    table = "\n".join(f"    {route!r}: {methods}," for route, methods in observed.items())
    assert not wrong and set(observed) <= set(ROUTES), "\n".join(wrong) + "\n\nobserved:\n" + table


# --- the Django admin ---------------------------------------------------------------------

# Every admin route: anyone who is not staff, a token included, is sent to the admin's login
# (302 to /admin/login/); the admin gets an answer, never a server error (403 where the
# view-only admin refuses to add or delete: knowledge/admin_read_only.py).
ADMIN_SITE_RULE = {"anonymous": "login", "other_curator": "login", "curator": "login", "token": "login", "admin": "answer"}

ADMIN_ARGUMENTS = {"url": "no-such-page/", "object_id": "999999", "id": "999999", "content_type_id": "1", "app_label": None}
# Open to everyone (the admin's own login; logout is POST only): never a server error.
ADMIN_OPEN = {"admin/login/", "admin/logout/"}


def admin_url(route: str) -> str:
    # app_list routes are a regex of the app labels: take the first label
    route = re.sub(r"\(\?P<app_label>([\w]+)(\|[\w|]+)?\)", lambda m: m.group(1), route)
    route = route.replace("^", "").replace("$", "")
    return route_url(route, {**ADMIN_ARGUMENTS, "app_label": "knowledge"})


def test_the_django_admin_lets_only_admins_in(world):
    wrong = []
    for route in _admin_routes():
        url = admin_url(route)
        for role in ROLES:
            with transaction.atomic():
                response = client_for(role, world).get(url)
                transaction.set_rollback(True)
            if route in ADMIN_OPEN:
                ok = response.status_code < 500
            elif ADMIN_SITE_RULE[role] == "login":
                ok = response.status_code == 302 and response["Location"].startswith("/admin/login/")
            else:
                ok = response.status_code < 500 and not (
                    response.status_code == 302 and response["Location"].startswith("/admin/login/")
                )
            if not ok:
                wrong.append(f"{role} GET {url}: {response.status_code} {response.get('Location', '')}")
    assert len(_admin_routes()) > 50
    assert not wrong, "\n".join(wrong)
