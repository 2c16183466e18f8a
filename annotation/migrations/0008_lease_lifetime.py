"""The rating functions again: a heartbeat extends a lease no further than ``LEASE_MAX_AGE_S``
after it was granted (``annotation_heartbeat`` and ``annotation_answer`` take the limit), and
``annotation_seat`` counts the rater's leases that ended unanswered, for the cool-down that
``annotation.rules`` decides."""

from django.db import migrations

from annotation import sql


class Migration(migrations.Migration):
    dependencies = [("annotation", "0007_closed_campaigns")]

    operations = [migrations.RunPython(sql.load, migrations.RunPython.noop)]
