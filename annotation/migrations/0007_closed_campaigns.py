"""The rating functions again: a closed campaign takes no more answers and a campaign that is not
active extends no leases (``annotation_heartbeat`` and ``annotation_answer`` return the campaign's
status, and ``annotation.rules`` names the refusal)."""

from django.db import migrations

from annotation import sql


class Migration(migrations.Migration):
    dependencies = [("annotation", "0006_campaign_sampling")]

    operations = [migrations.RunPython(sql.load, migrations.RunPython.noop)]
