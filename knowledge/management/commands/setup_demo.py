"""`manage.py setup_demo`: the admin account, an API token and the demo knowledge base.

Idempotent: what exists is kept; a password or token is printed only when it is created,
because only its hash is stored.
"""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from knowledge.models import ApiToken, KnowledgeBase
from knowledge.services.documents import documents_ingest
from knowledge.services.knowledge_bases import knowledge_base_create
from knowledge.services.tokens import api_token_create
from rag.documents import parse_path

DEMO_SLUG = "scifact-demo"


class Command(BaseCommand):
    help = "Create the admin account, an API token and the SciFact demo knowledge base (idempotent)."

    def handle(self, *args, **options):
        User = get_user_model()
        admin = User.objects.filter(username="admin").first()
        if admin is None:
            password = secrets.token_urlsafe(12)
            admin = User.objects.create_superuser("admin", "admin@localhost", password)
            self.stdout.write(self.style.SUCCESS(f"admin account: admin / {password}   (shown once)"))
        else:
            self.stdout.write("admin account exists (reset with: manage.py changepassword admin)")

        if not ApiToken.objects.filter(user=admin, name="demo", revoked_at__isnull=True).exists():
            _, plain = api_token_create(user=admin, name="demo", all_knowledge_bases=True)
            self.stdout.write(self.style.SUCCESS(f"API token: {plain}   (shown once)"))
        else:
            self.stdout.write("API token 'demo' exists (make another with: manage.py token_create admin NAME --all)")

        knowledge_base = KnowledgeBase.objects.filter(slug=DEMO_SLUG).first()
        if knowledge_base is None:
            knowledge_base = knowledge_base_create(
                slug=DEMO_SLUG,
                name="SciFact demo",
                description="300 scientific abstracts from SciFact (CC BY 4.0 / ODC-By 1.0; see demo/README.md).",
            )
        result = documents_ingest(
            knowledge_base=knowledge_base, documents=parse_path(settings.BASE_DIR / "demo" / "scifact" / "corpus.jsonl")
        )
        self.stdout.write(
            f"{DEMO_SLUG}: {result.created} documents added, {result.unchanged} unchanged; "
            f"{result.chunks_created} chunks queued for embedding"
        )
