"""What serves now, on the knowledge base: promotion and rollback write the live retriever's name
and query encoder and the live generator beside `live_space`, so serving reads this row alone.
QueryEncoder: a query-only retriever version's own query encoder over another version's space."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("knowledge", "0001_models_from_curation"),
    ]

    operations = [
        migrations.AddField(
            model_name="knowledgebase",
            name="live_retriever_version",
            field=models.CharField(blank=True, max_length=100),
        ),
        migrations.AddField(
            model_name="knowledgebase",
            name="live_query_model_reference",
            field=models.CharField(blank=True, max_length=500),
        ),
        migrations.AddField(
            model_name="knowledgebase",
            name="live_generator_version",
            field=models.CharField(blank=True, max_length=100),
        ),
        migrations.AddField(
            model_name="knowledgebase",
            name="live_generator_backend",
            field=models.CharField(blank=True, max_length=20),
        ),
        migrations.AddField(
            model_name="knowledgebase",
            name="live_generator_model",
            field=models.CharField(blank=True, max_length=500),
        ),
        migrations.AddField(
            model_name="knowledgebase",
            name="live_generator_adapter_path",
            field=models.CharField(blank=True, max_length=500),
        ),
        migrations.CreateModel(
            name='QueryEncoder',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('retriever_version', models.CharField(max_length=100)),
                ('model_reference', models.CharField(max_length=500)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('knowledge_base', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='query_encoders', to='knowledge.knowledgebase')),
                ('space', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='query_encoders', to='knowledge.embeddingspace')),
            ],
        ),
        migrations.AddConstraint(
            model_name='queryencoder',
            constraint=models.UniqueConstraint(fields=('knowledge_base', 'retriever_version'), name='query_encoder_version_unique_per_kb'),
        ),
    ]
