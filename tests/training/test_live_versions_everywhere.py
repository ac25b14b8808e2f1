"""What is live reads the same on every page, API endpoint and command after a promotion.

A query-only retriever version serves from its parent's embedding space, so a page that read
the space's name said "base" while the knowledge base page said "retriever-v1"; every reader now
goes through `knowledge.selectors.live_version_names_of`.
"""

import json
import re
from io import StringIO

from django.core.management import call_command
from django.test import Client

from tests.training.conftest import generator_version, retriever_version
from training.services.versions import model_version_promote, model_version_rollback


def _everywhere(knowledge_base, admin_client, api_token) -> dict[str, tuple[str, str]]:
    """(retriever, generator) as each reader shows them."""
    seen = {}
    home = admin_client.get("/").content.decode()
    row = re.search(r"<tr>\s*<td><a href=\"/kbs/test-kb/\">.*?</tr>", home, re.S).group(0)
    cells = re.findall(r"<td>([^<]*)</td>", row)
    seen["knowledge base list"] = (cells[-2].strip(), cells[-1].strip())

    page = admin_client.get("/kbs/test-kb/").content.decode()
    match = re.search(r"live retriever\s*<strong>([^<]+)</strong> · generator <strong>([^<]+)</strong>", page)
    seen["knowledge base page"] = match.groups()

    api = Client(HTTP_AUTHORIZATION=f"Bearer {api_token}").get("/api/v1/kbs").json()
    seen["GET /api/v1/kbs"] = (api[0]["live_retriever_version"], api[0]["generator"])

    out = StringIO()
    call_command("kb_list", "--json", stdout=out)
    listed = json.loads(out.getvalue())[0]
    seen["kb_list --json"] = (listed["live_retriever_version"], listed["generator"])
    return seen


def test_a_promoted_query_only_retriever_and_generator_read_the_same_everywhere(
    knowledge_base, admin_user, admin_client, api_token
):
    before = _everywhere(knowledge_base, admin_client, api_token)
    assert set(before.values()) == {("base", "extractive")}, before

    query_only = retriever_version(knowledge_base, "retriever-v1")  # serves from the base space
    generator = generator_version(knowledge_base, "generator-v1")
    model_version_promote(version=query_only, actor=admin_user)
    model_version_promote(version=generator, actor=admin_user)
    after = _everywhere(knowledge_base, admin_client, api_token)
    assert set(after.values()) == {("retriever-v1", "generator-v1")}, after

    model_version_rollback(knowledge_base=knowledge_base, component=query_only.component, actor=admin_user)
    rolled_back = _everywhere(knowledge_base, admin_client, api_token)
    assert {retriever for retriever, _ in rolled_back.values()} == {"base"}, rolled_back
