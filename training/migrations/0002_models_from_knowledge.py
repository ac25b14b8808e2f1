"""Training's foreign keys to knowledge bases, turns and embedding spaces point at the knowledge
app, where those models moved. State only: the tables and constraints are unchanged."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('knowledge', '0001_models_from_curation'),
        ('training', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.AlterField(
                    model_name='datasetsnapshot',
                    name='knowledge_base',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='snapshots', to='knowledge.knowledgebase'),
                ),
                migrations.AlterField(
                    model_name='evaluation',
                    name='knowledge_base',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='evaluations', to='knowledge.knowledgebase'),
                ),
                migrations.AlterField(
                    model_name='modelversion',
                    name='embedding_space',
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='knowledge.embeddingspace'),
                ),
                migrations.AlterField(
                    model_name='modelversion',
                    name='knowledge_base',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='model_versions', to='knowledge.knowledgebase'),
                ),
                migrations.AlterField(
                    model_name='promotionevent',
                    name='knowledge_base',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='promotion_events', to='knowledge.knowledgebase'),
                ),
                migrations.AlterField(
                    model_name='snapshotexample',
                    name='turn',
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='knowledge.turn'),
                ),
                migrations.AlterField(
                    model_name='trainingrun',
                    name='knowledge_base',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='training_runs', to='knowledge.knowledgebase'),
                ),
            ],
        ),
    ]
