"""The corpus, serving-log and token models move from the curation app to this one.

State only: the tables keep their names (each model's Meta.db_table), so no row moves and raw
SQL and the per-space HNSW index names stay valid. On a new database the tables are created by
curation's migrations 0001-0006, which ran before this one. Content types (and so the admin's
permissions) are relabelled to the new app.
"""

import django.contrib.postgres.indexes
import django.contrib.postgres.search
import django.db.models.deletion
import django.utils.timezone
import pgvector.django.vector
from django.conf import settings
from django.db import migrations, models

MOVED_MODELS = [
    "knowledgebase", "document", "chunk", "embeddingspace", "chunkembedding",
    "embeddingjob", "turn", "retrievedpassage", "apitoken",
]


def relabel_content_types(apps, schema_editor, source="curation", target="knowledge"):
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model in MOVED_MODELS:
        moving = ContentType.objects.filter(app_label=source, model=model)
        if moving.exists():
            ContentType.objects.filter(app_label=target, model=model).delete()
            moving.update(app_label=target)


def relabel_content_types_back(apps, schema_editor):
    relabel_content_types(apps, schema_editor, source="knowledge", target="curation")


class Migration(migrations.Migration):

    dependencies = [
        ("curation", "0006_turn_created_at_default"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name='EmbeddingSpace',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('retriever_version', models.CharField(max_length=100)),
                        ('model_reference', models.CharField(max_length=500)),
                        ('dimensions', models.PositiveIntegerField()),
                        ('status', models.CharField(choices=[('building', 'Building'), ('ready', 'Ready'), ('retired', 'Retired')], default='building', max_length=20)),
                        ('hnsw_index_built', models.BooleanField(default=False)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                    ],
                    options={
                        'db_table': 'curation_embeddingspace',
                    },
                ),
                migrations.CreateModel(
                    name='EmbeddingJob',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('status', models.CharField(choices=[('queued', 'Queued'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed')], default='queued', max_length=20)),
                        ('total_chunks', models.PositiveIntegerField(default=0)),
                        ('embedded_chunks', models.PositiveIntegerField(default=0)),
                        ('error', models.TextField(blank=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('started_at', models.DateTimeField(blank=True, null=True)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('heartbeat_at', models.DateTimeField(blank=True, null=True)),
                        ('space', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='jobs', to='knowledge.embeddingspace')),
                    ],
                    options={
                        'db_table': 'curation_embeddingjob',
                        'ordering': ['-created_at'],
                    },
                ),
                migrations.CreateModel(
                    name='KnowledgeBase',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('slug', models.SlugField(max_length=64, unique=True)),
                        ('name', models.CharField(max_length=200)),
                        ('description', models.TextField(blank=True)),
                        ('chunk_max_tokens', models.PositiveIntegerField(default=200)),
                        ('chunk_overlap_tokens', models.PositiveIntegerField(default=40)),
                        ('generator_backend', models.CharField(choices=[('extractive', 'Extractive (offline)'), ('openai', 'OpenAI-compatible endpoint'), ('hf', 'Local Hugging Face model')], default='extractive', max_length=20)),
                        ('generator_model', models.CharField(blank=True, max_length=500)),
                        ('labels_per_turn', models.PositiveSmallIntegerField(default=1)),
                        ('hold_minutes', models.PositiveSmallIntegerField(default=15)),
                        ('guidelines', models.TextField(blank=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('live_space', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='knowledge.embeddingspace')),
                    ],
                    options={
                        'db_table': 'curation_knowledgebase',
                        'ordering': ['slug'],
                    },
                ),
                migrations.AddField(
                    model_name='embeddingspace',
                    name='knowledge_base',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='embedding_spaces', to='knowledge.knowledgebase'),
                ),
                migrations.CreateModel(
                    name='Document',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('external_id', models.CharField(max_length=512)),
                        ('title', models.TextField(blank=True)),
                        ('text', models.TextField()),
                        ('metadata', models.JSONField(blank=True, default=dict)),
                        ('content_hash', models.CharField(max_length=64)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('knowledge_base', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='documents', to='knowledge.knowledgebase')),
                    ],
                    options={
                        'db_table': 'curation_document',
                    },
                ),
                migrations.CreateModel(
                    name='Chunk',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('order', models.PositiveIntegerField()),
                        ('text', models.TextField()),
                        ('token_count', models.PositiveIntegerField()),
                        ('document', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='chunks', to='knowledge.document')),
                        ('knowledge_base', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='chunks', to='knowledge.knowledgebase')),
                    ],
                    options={
                        'db_table': 'curation_chunk',
                    },
                ),
                migrations.CreateModel(
                    name='ApiToken',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=100)),
                        ('key_prefix', models.CharField(max_length=12)),
                        ('key_hash', models.CharField(max_length=64, unique=True)),
                        ('all_knowledge_bases', models.BooleanField(default=False)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('last_used_at', models.DateTimeField(blank=True, null=True)),
                        ('revoked_at', models.DateTimeField(blank=True, null=True)),
                        ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='api_tokens', to=settings.AUTH_USER_MODEL)),
                        ('knowledge_bases', models.ManyToManyField(blank=True, db_table='curation_apitoken_knowledge_bases', related_name='api_tokens', to='knowledge.knowledgebase')),
                    ],
                    options={
                        'db_table': 'curation_apitoken',
                    },
                ),
                migrations.CreateModel(
                    name='Turn',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('source', models.CharField(choices=[('served', 'Served'), ('ingested', 'Ingested')], max_length=20)),
                        ('external_id', models.CharField(blank=True, max_length=255, null=True)),
                        ('query', models.TextField()),
                        ('answer', models.TextField(blank=True)),
                        ('retriever_version', models.CharField(blank=True, max_length=200)),
                        ('generator_version', models.CharField(blank=True, max_length=200)),
                        ('latency_ms', models.FloatField(blank=True, null=True)),
                        ('feedback', models.SmallIntegerField(blank=True, choices=[(-1, 'Thumbs Down'), (1, 'Thumbs Up')], null=True)),
                        ('feedback_comment', models.TextField(blank=True)),
                        ('metadata', models.JSONField(blank=True, default=dict)),
                        ('created_at', models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
                        ('queue_tier', models.PositiveSmallIntegerField(default=2)),
                        ('queue_order', models.FloatField(default=0.0)),
                        ('label_count', models.PositiveSmallIntegerField(default=0)),
                        ('needs_labels', models.BooleanField(default=True)),
                        ('disputed', models.BooleanField(default=False)),
                        ('imported', models.BooleanField(default=False, help_text='Created by a label import, with no model answer.')),
                        ('knowledge_base', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='turns', to='knowledge.knowledgebase')),
                    ],
                    options={
                        'db_table': 'curation_turn',
                        'ordering': ['-created_at'],
                    },
                ),
                migrations.CreateModel(
                    name='RetrievedPassage',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('rank', models.PositiveIntegerField()),
                        ('score', models.FloatField(blank=True, null=True)),
                        ('source_id', models.CharField(blank=True, max_length=512)),
                        ('title', models.TextField(blank=True)),
                        ('text', models.TextField()),
                        ('chunk', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='knowledge.chunk')),
                        ('document', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='knowledge.document')),
                        ('turn', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='passages', to='knowledge.turn')),
                    ],
                    options={
                        'db_table': 'curation_retrievedpassage',
                        'ordering': ['rank'],
                    },
                ),
                migrations.CreateModel(
                    name='ChunkEmbedding',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('embedding', pgvector.django.vector.VectorField()),
                        ('chunk', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='embeddings', to='knowledge.chunk')),
                        ('space', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='embeddings', to='knowledge.embeddingspace')),
                    ],
                    options={
                        'db_table': 'curation_chunkembedding',
                        'constraints': [models.UniqueConstraint(fields=('space', 'chunk'), name='chunk_embedding_unique_per_space')],
                    },
                ),
                migrations.AddConstraint(
                    model_name='embeddingspace',
                    constraint=models.UniqueConstraint(fields=('knowledge_base', 'retriever_version'), name='space_retriever_version_unique_per_kb'),
                ),
                migrations.AddConstraint(
                    model_name='document',
                    constraint=models.UniqueConstraint(fields=('knowledge_base', 'external_id'), name='document_external_id_unique_per_kb'),
                ),
                migrations.AddIndex(
                    model_name='chunk',
                    index=django.contrib.postgres.indexes.GinIndex(django.contrib.postgres.search.SearchVector('text', config='english'), name='chunk_text_search'),
                ),
                migrations.AddConstraint(
                    model_name='chunk',
                    constraint=models.UniqueConstraint(fields=('document', 'order'), name='chunk_order_unique_per_document'),
                ),
                migrations.AddIndex(
                    model_name='turn',
                    index=models.Index(condition=models.Q(('needs_labels', True)), fields=['knowledge_base', 'queue_tier', 'queue_order', 'id'], name='turn_queue_open'),
                ),
                migrations.AddIndex(
                    model_name='turn',
                    index=models.Index(fields=['knowledge_base', 'queue_tier', 'queue_order', 'id'], include=('label_count', 'disputed', 'feedback', 'created_at'), name='turn_queue_all'),
                ),
                migrations.AddConstraint(
                    model_name='turn',
                    constraint=models.UniqueConstraint(condition=models.Q(('external_id__isnull', False)), fields=('knowledge_base', 'external_id'), name='turn_external_id_unique_per_kb'),
                ),
                migrations.AddConstraint(
                    model_name='retrievedpassage',
                    constraint=models.UniqueConstraint(fields=('turn', 'rank'), name='passage_rank_unique_per_turn'),
                ),
            ],
        ),
        migrations.RunPython(relabel_content_types, relabel_content_types_back),
    ]
