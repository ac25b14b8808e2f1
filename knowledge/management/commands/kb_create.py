"""`manage.py kb_create <slug>`: a new knowledge base with the base retriever live."""

from django.core.management.base import BaseCommand

from knowledge.management.cli import service_errors_as_command_errors
from knowledge.services.knowledge_bases import knowledge_base_create


class Command(BaseCommand):
    help = "Create a knowledge base."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", default="")
        parser.add_argument("--description", default="")
        parser.add_argument("--generator", default="extractive", help="extractive (default), openai or hf")
        parser.add_argument("--generator-model", default="", help="OpenAI model name or local model path")
        parser.add_argument(
            "--retrieval-mode", default="dense", help="dense (default), lexical or hybrid (docs/retrieval.md)"
        )
        parser.add_argument("--chunk-max-tokens", type=int, default=200, help="chunk size in retriever tokens (default 200)")
        parser.add_argument(
            "--chunk-overlap-tokens", type=int, default=40, help="tokens a chunk repeats of the one before (default 40)"
        )
        parser.add_argument(
            "--personal-data", default="off", choices=["off", "redact", "reject"],
            help="what happens to e-mail addresses, phone numbers, cards, IBANs, IPs and URLs in stored text",
        )
        parser.add_argument(
            "--embedding-backend", default="torch",
            help="torch (default), onnx, onnx-int8, openvino or openvino-int8 (docs/inference-backends.md)",
        )  # fmt: skip

    def handle(self, *args, slug, name, description, generator, generator_model, retrieval_mode, **options):
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_create(
                slug=slug,
                name=name,
                description=description,
                generator_backend=generator,
                generator_model=generator_model,
                retrieval_mode=retrieval_mode,
                personal_data_mode=options["personal_data"],
                chunk_max_tokens=options["chunk_max_tokens"],
                chunk_overlap_tokens=options["chunk_overlap_tokens"],
                embedding_backend=options["embedding_backend"],
            )
        self.stdout.write(f"created knowledge base {knowledge_base.slug}")
