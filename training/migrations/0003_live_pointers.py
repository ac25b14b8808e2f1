"""Serving now reads what is live from the knowledge base, not from model versions: write the
live retriever's and generator's pointers onto each knowledge base, and a QueryEncoder for every
query-only retriever version, from the model versions that exist."""

from django.db import migrations


def write_live_pointers(apps, schema_editor):
    KnowledgeBase = apps.get_model("knowledge", "KnowledgeBase")
    QueryEncoder = apps.get_model("knowledge", "QueryEncoder")
    ModelVersion = apps.get_model("training", "ModelVersion")
    retrievers = ModelVersion.objects.filter(component="retriever", embedding_space__isnull=False).select_related(
        "embedding_space"
    )
    for version in retrievers:
        space = version.embedding_space
        if version.query_model_reference and version.query_model_reference != space.model_reference:
            QueryEncoder.objects.get_or_create(
                knowledge_base_id=version.knowledge_base_id,
                retriever_version=version.name,
                defaults={"space": space, "model_reference": version.query_model_reference},
            )
        if version.status == "live":
            KnowledgeBase.objects.filter(pk=version.knowledge_base_id).update(
                live_space=space,
                live_retriever_version=version.name,
                live_query_model_reference=version.query_model_reference,
            )
    for version in ModelVersion.objects.filter(component="generator", status="live"):
        KnowledgeBase.objects.filter(pk=version.knowledge_base_id).update(
            live_generator_version=version.name,
            live_generator_backend=version.generator_backend,
            live_generator_model=version.generator_model,
            live_generator_adapter_path=version.generator_adapter_path,
        )


class Migration(migrations.Migration):
    dependencies = [
        ("training", "0002_models_from_knowledge"),
        ("knowledge", "0002_live_pointers_and_query_encoders"),
    ]

    operations = [migrations.RunPython(write_live_pointers, migrations.RunPython.noop)]
