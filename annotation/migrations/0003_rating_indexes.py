"""The lease table's indexes as the rating path reads them (migrations 0003 to 0008 of earlier
releases, squashed; their database functions now live in ``annotation/sql`` and are made by
migration 0005).

* No index on the lease table holds ``expires_at``, and its pages keep room (fillfactor 70): a
  heartbeat, the most frequent write, then changes no indexed column, so PostgreSQL writes the
  new row version on the same page without touching any index (a heap-only update).
* An item's live leases are counted through ``assignment_live_item``, keyed by item: a count
  reads that item's few entries, not every lease answered in the campaign since the last
  VACUUM.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def fillfactor(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE annotation_assignment SET (fillfactor = 70)")


def fillfactor_default(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE annotation_assignment RESET (fillfactor)")


class Migration(migrations.Migration):

    replaces = [
        ("annotation", "0003_rating_functions"),
        ("annotation", "0004_lean_lease_indexes"),
        ("annotation", "0005_answer_in_one_call"),
        ("annotation", "0006_group_repeat_verdict"),
        ("annotation", "0007_lease_lookups_by_item_and_rater"),
        ("annotation", "0008_drop_two_call_answer"),
    ]

    dependencies = [
        ("annotation", "0002_roles"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveIndex(model_name="assignment", name="assignment_item_live"),
        migrations.RemoveIndex(model_name="assignment", name="assignment_reaper"),
        migrations.AlterField(
            model_name="assignment",
            name="rater",
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE,
                                    related_name="assignments", to=settings.AUTH_USER_MODEL),
        ),
        migrations.AlterField(
            model_name="judgment",
            name="campaign",
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT,
                                    related_name="judgments", to="annotation.campaign"),
        ),
        migrations.AddIndex(
            model_name="assignment",
            index=models.Index(condition=models.Q(("status", "active")), fields=["item"],
                               name="assignment_live_item"),
        ),
        migrations.RunPython(fillfactor, fillfactor_default),
    ]
