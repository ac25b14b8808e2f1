"""The corpus, serving-log and token models now belong to the knowledge app: curation's foreign
keys point there, and the models leave curation's state. State only (the tables keep their
names). It runs after training's 0002, which repoints training's foreign keys first, so no
state ever refers to a model that has left."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('curation', '0006_turn_created_at_default'),
        ('knowledge', '0001_models_from_curation'),
        ('training', '0002_models_from_knowledge'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.RemoveField(
                    model_name='chunk',
                    name='document',
                ),
                migrations.RemoveField(
                    model_name='chunk',
                    name='knowledge_base',
                ),
                migrations.RemoveField(
                    model_name='retrievedpassage',
                    name='chunk',
                ),
                migrations.AlterField(
                    model_name='passagejudgment',
                    name='chunk',
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='knowledge.chunk'),
                ),
                migrations.RemoveField(
                    model_name='chunkembedding',
                    name='chunk',
                ),
                migrations.RemoveField(
                    model_name='chunkembedding',
                    name='space',
                ),
                migrations.RemoveField(
                    model_name='document',
                    name='knowledge_base',
                ),
                migrations.AlterField(
                    model_name='passagejudgment',
                    name='document',
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='knowledge.document'),
                ),
                migrations.RemoveField(
                    model_name='retrievedpassage',
                    name='document',
                ),
                migrations.RemoveField(
                    model_name='embeddingjob',
                    name='space',
                ),
                migrations.RemoveField(
                    model_name='embeddingspace',
                    name='knowledge_base',
                ),
                migrations.RemoveField(
                    model_name='knowledgebase',
                    name='live_space',
                ),
                migrations.RemoveField(
                    model_name='turn',
                    name='knowledge_base',
                ),
                migrations.AlterField(
                    model_name='membership',
                    name='knowledge_base',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='memberships', to='knowledge.knowledgebase'),
                ),
                migrations.RemoveField(
                    model_name='retrievedpassage',
                    name='turn',
                ),
                migrations.AlterField(
                    model_name='passagejudgment',
                    name='retrieved_passage',
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='judgments', to='knowledge.retrievedpassage'),
                ),
                migrations.AlterField(
                    model_name='labeldraft',
                    name='turn',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='drafts', to='knowledge.turn'),
                ),
                migrations.AlterField(
                    model_name='turnhold',
                    name='turn',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='holds', to='knowledge.turn'),
                ),
                migrations.AlterField(
                    model_name='label',
                    name='turn',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='labels', to='knowledge.turn'),
                ),
                migrations.AlterField(
                    model_name='adjudication',
                    name='turn',
                    field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='adjudication', to='knowledge.turn'),
                ),
                migrations.AlterField(
                    model_name='invitation',
                    name='knowledge_bases',
                    field=models.ManyToManyField(blank=True, related_name='+', to='knowledge.knowledgebase'),
                ),
                migrations.DeleteModel(
                    name='ApiToken',
                ),
                migrations.DeleteModel(
                    name='Chunk',
                ),
                migrations.DeleteModel(
                    name='ChunkEmbedding',
                ),
                migrations.DeleteModel(
                    name='Document',
                ),
                migrations.DeleteModel(
                    name='EmbeddingJob',
                ),
                migrations.DeleteModel(
                    name='EmbeddingSpace',
                ),
                migrations.DeleteModel(
                    name='KnowledgeBase',
                ),
                migrations.DeleteModel(
                    name='RetrievedPassage',
                ),
                migrations.DeleteModel(
                    name='Turn',
                ),
            ],
        ),
    ]
