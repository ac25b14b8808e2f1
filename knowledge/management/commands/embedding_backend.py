"""`manage.py embedding_backend <kb> [BACKEND]`: show, or change, the inference backend (torch,
onnx, onnx-int8, openvino, openvino-int8) of a knowledge base's live space (or of
`--retriever-version`'s). A change is checked first: refused unless the new backend's vectors
of a sample of the space's chunks match the stored ones (docs/inference-backends.md)."""

import json

from django.core.management.base import BaseCommand

from knowledge.errors import NotFound
from knowledge.management.cli import service_errors_as_command_errors
from knowledge.selectors import knowledge_base_get
from knowledge.services.embedding_backends import embedding_space_backend_drift, embedding_space_backend_set


class Command(BaseCommand):
    help = "Show or change the inference backend of a knowledge base's embedding space."

    def add_arguments(self, parser):
        parser.add_argument("kb")
        parser.add_argument("backend", nargs="?", default="", metavar="BACKEND")
        parser.add_argument("--retriever-version", default="", help="the space of this version (default: the live space)")
        parser.add_argument("--check", action="store_true",
                            help="measure the drift to BACKEND, and its speed against the current backend, without switching")
        parser.add_argument("--sample", type=int, default=None, help="chunks compared (default RAGLOOP_BACKEND_SWITCH_SAMPLE)")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, kb, backend, retriever_version, check, sample, **options):
        with service_errors_as_command_errors():
            knowledge_base = knowledge_base_get(slug=kb)
            if retriever_version:
                space = knowledge_base.embedding_spaces.filter(retriever_version=retriever_version).first()
            else:
                space = knowledge_base.live_space
            if space is None:
                raise NotFound(f"{kb!r} has no embedding space {retriever_version or '(live)'}.")
            if not backend:
                self.stdout.write(json.dumps({"space": space.retriever_version, "backend": space.inference_backend})
                                  if options["json"] else f"{kb}/{space.retriever_version}: {space.inference_backend}")
                return
            if check:
                drift = embedding_space_backend_drift(space=space, backend=backend, sample_size=sample, measure_speed=True)
            else:
                drift = embedding_space_backend_set(space=space, backend=backend, sample_size=sample)
        if options["json"]:
            self.stdout.write(json.dumps(drift.as_dict()))
            return
        figures = (
            f"min cosine {drift.min_cosine:.5f}, mean {drift.mean_cosine:.5f} on {drift.sample_size} chunks"
            if drift.sample_size else "no stored vectors to compare"
        )  # fmt: skip
        verb = "would be compatible" if check and drift.compatible else "incompatible" if check else "now uses"
        self.stdout.write(f"{kb}/{space.retriever_version} {verb} {backend} ({figures}).")
        if drift.speedup is not None:
            self.stdout.write(
                f"Speed: {drift.speedup:.2f}x {drift.backend_from}'s chunks per CPU second on this sample, on this machine "
                f"({drift.cpu}); the int8 backends need VNNI or AMX to be fast (docs/inference-backends.md)."
            )
