"""`manage.py failure_tags <kb> [list | add NAME [--slug SLUG] | rename SLUG NAME | retire SLUG |
restore SLUG | defaults]`: keep a knowledge base's failure tags (docs/failure-tags.md)."""

from django.core.management.base import BaseCommand

from curation.selectors import knowledge_base_failure_tags
from curation.services.failure_tags import (
    failure_tag_create,
    failure_tag_for,
    failure_tag_rename,
    failure_tag_restore,
    failure_tag_retire,
    failure_tags_create_defaults,
)
from knowledge.management.cli import service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get


class Command(BaseCommand):
    help = "List, add, rename, retire or restore a knowledge base's failure tags (retired tags stay on old labels)."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        actions = parser.add_subparsers(dest="action")
        actions.add_parser("list", help="every tag, retired ones marked")
        add = actions.add_parser("add", help="a new tag at the end of the picker")
        add.add_argument("name")
        add.add_argument("--slug", default="", help="default: made from the name")
        rename = actions.add_parser("rename", help="a new name (the slug stays)")
        rename.add_argument("slug")
        rename.add_argument("name")
        actions.add_parser("retire", help="no longer offered; stays on old labels").add_argument("slug")
        actions.add_parser("restore", help="offer a retired tag again").add_argument("slug")
        actions.add_parser("defaults", help="add the default tags the knowledge base lacks")

    def handle(self, *args, kb, action, **options):
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            if action == "add":
                tag = failure_tag_create(knowledge_base=knowledge_base, name=options["name"], slug=options["slug"])
                self.stdout.write(f"added {tag.slug} ({tag.name})")
            elif action == "rename":
                tag = failure_tag_rename(tag=failure_tag_for(knowledge_base=knowledge_base, slug=options["slug"]), name=options["name"])
                self.stdout.write(f"renamed {tag.slug} to {tag.name}")
            elif action == "retire":
                tag = failure_tag_retire(tag=failure_tag_for(knowledge_base=knowledge_base, slug=options["slug"]))
                self.stdout.write(f"retired {tag.slug}")
            elif action == "restore":
                tag = failure_tag_restore(tag=failure_tag_for(knowledge_base=knowledge_base, slug=options["slug"]))
                self.stdout.write(f"restored {tag.slug}")
            elif action == "defaults":
                failure_tags_create_defaults(knowledge_base=knowledge_base)
        for tag in knowledge_base_failure_tags(knowledge_base=knowledge_base, include_retired=True):
            if action in (None, "list", "defaults"):
                self.stdout.write(f"{tag.slug}\t{tag.name}{' (retired)' if tag.retired else ''}")
