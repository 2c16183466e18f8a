"""Lease lookups that do not wade through answered leases' stale index entries.

An answer changes its lease's ``status``, an indexed column, so PostgreSQL writes a new row
version with new index entries and leaves the old entries (``status = 'active'``) pointing at a
dead version until VACUUM. Under a busy campaign two lookups paid for every such entry on every
call, measured at saturation with ``pg_statio_user_tables``: 233 heap pages of the lease table
read per judgment, of about 440 pages in all.

* A rater's live leases (``assignment_rater_live``), read by the heartbeat, the top-up and the
  listing: PostgreSQL chose a bitmap scan, which visits the heap page of every entry in the
  range, live or stale, and never marks a stale one. A plain index scan marks each entry whose
  row is dead to every transaction, and every later scan of the index (bitmap ones included)
  skips marked entries without visiting the heap. The heartbeat, which runs once per item
  before the answer, now plans without bitmap scans (a setting on the function), so it clears
  what the rater's last answer left behind for the answer's own lookups. Heap pages read per
  judgment went from about 440 to 300. The setting is on the heartbeat alone: on the top-up it
  made the item pick read every lease of the rater instead of probing item by item.
* The live leases of an item, counted for each item the pick considers: they were found by
  AND-ing the item's entries with ``assignment_active``, an index of every active row of the
  campaign, stale entries included, so each count read the whole campaign's entries. The index
  is now keyed by item (``assignment_live_item``): a count reads that item's few entries. The
  sweep of expired leases and the progress page, which read active rows across items, scan it
  whole as they scanned the old one.
* A gold or catch item the rater has not been shown: ``annotation_top_up`` (migration 0003)
  looked for any lease of that item and rater, a condition no index answers, so PostgreSQL read
  the whole lease table for each probe it served (240 rows per judgment at saturation on a
  fresh campaign, growing with the campaign). It now looks for a lease the rater holds or
  answered, which ``one_live_exposure_per_rater`` answers in one probe. A probe lease that ran
  out unanswered no longer keeps that item from the rater, as it never kept a regular one; the
  portable statements do the same.
* A hidden repeat: the answered items of the rater not repeated yet were found by comparing
  them with every lease of the table that repeats something (read whole, the same growth). The
  repeats looked at are now the rater's own in the campaign, the only ones that can repeat a
  lease of theirs (as the portable statements always did), so the cost follows the rater's
  history, not the campaign's.
"""

import importlib

from django.conf import settings
from django.db import migrations, models

from annotation.migrations._sql_edits import edited, function_text

HEARTBEAT = "annotation_heartbeat(uuid, bigint, bigint, timestamptz)"
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
        schema_editor.execute(f"ALTER FUNCTION {HEARTBEAT} SET enable_bitmapscan = off")
        schema_editor.execute(edited(TOP_UP, TOP_UP_EDITS, "0007"), params=None)


def restore(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER FUNCTION {HEARTBEAT} RESET enable_bitmapscan")
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
