"""Snapshots say how their train / held-out split was decided. Existing snapshots keep their rows
and are marked `turn_id` (split by a hash of the turn id); snapshots made from now on split by
a hash of the normalised query text (`query_text`), so every copy of a query is on one side."""

from django.db import migrations, models

CHOICES = [("query_text", "by normalised query text"), ("turn_id", "by turn id (older snapshots)")]


class Migration(migrations.Migration):
    dependencies = [("training", "0003_live_pointers")]

    operations = [
        migrations.AddField(
            model_name="datasetsnapshot",
            name="split_rule",
            field=models.CharField(choices=CHOICES, default="turn_id", max_length=20),
        ),
        migrations.AlterField(
            model_name="datasetsnapshot",
            name="split_rule",
            field=models.CharField(choices=CHOICES, default="query_text", max_length=20),
        ),
    ]
