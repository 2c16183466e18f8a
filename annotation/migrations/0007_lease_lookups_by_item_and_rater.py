"""Lease lookups whose cost follows the item or the rater, not the whole campaign (found with
the rating benchmark's counts of PostgreSQL's reads, ``postgresql_reads_per_judgment``):

* The live leases of an item, counted for each item the pick considers, were found by AND-ing
  the item's entries with ``assignment_active``, an index of every active lease of the campaign.
  An answer changes its lease's ``status``, so the lease's old entry stays in that index,
  pointing at a dead row version, until VACUUM: each count read every lease answered in the
  campaign since then. The index is now keyed by item (``assignment_live_item``): a count reads
  that item's few entries. The sweep of expired leases, which reads active leases of every
  campaign, scans it whole as it scanned the old one; a campaign's progress page now reads the
  active leases of every campaign to count its own (a few hundred rows at most). The index is
  built in the migration's transaction, which holds up leasing while it runs: on a platform
  with millions of leases, run it between campaigns.
* A gold or catch item the rater has not been shown: ``annotation_top_up`` (migration 0003)
  looked for any lease of that item and rater, a condition no index answers, so PostgreSQL read
  the whole lease table for each such probe. It now looks for a lease the rater holds or
  answered, which ``one_live_exposure_per_rater`` answers in one probe. A probe lease that ran
  out unanswered no longer keeps that item from the rater, as it never kept a regular one; the
  portable statements do the same.
* A hidden repeat: the rater's answered items not repeated yet were found by comparing them with
  every lease of the table that repeats something (read whole, as above). Only the rater's own
  leases in the campaign can repeat one of theirs (the portable statements always looked only
  there), so the function now says so and reads the rater's history instead of the table.

With both, no probe reads the lease table whole (before, a few hundred rows per judgment on the
benchmark's fresh campaign, growing with the campaign).
"""

import importlib

from django.conf import settings
from django.db import migrations, models

from annotation.migrations._sql_edits import edited, function_text

TOP_UP = function_text(importlib.import_module("annotation.migrations.0003_rating_functions")
                       .FUNCTIONS, "annotation_top_up")
TOP_UP_EDITS = [(
    """                WHERE m.item_id = i.id AND m.rater_id = p_rater)
             ORDER BY random() LIMIT 1;""",
    """                WHERE m.item_id = i.id AND m.rater_id = p_rater
                                  AND m.probe <> 'repeat' AND m.status <> 'expired')
             ORDER BY random() LIMIT 1;""",
), (
    """                                WHERE r.repeat_of_id = x.id)""",
    """                                WHERE r.repeat_of_id = x.id AND r.rater_id = p_rater
                                  AND r.campaign_id = p_campaign)""",
)]


def create(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(edited(TOP_UP, TOP_UP_EDITS, "0007"), params=None)


def restore(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TOP_UP, params=None)


class Migration(migrations.Migration):

    dependencies = [
        ('annotation', '0006_group_repeat_verdict'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name='assignment',
            index=models.Index(condition=models.Q(('status', 'active')), fields=['item'],
                               name='assignment_live_item'),
        ),
        migrations.RemoveIndex(
            model_name='assignment',
            name='assignment_active',
        ),
        migrations.RunPython(create, restore),
    ]
