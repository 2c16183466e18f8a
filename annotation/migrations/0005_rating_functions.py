"""The rating path's PostgreSQL functions, made from their files in ``annotation/sql``.

A later change to a function's file comes with a migration that runs ``annotation.sql.load``
again (it drops every function of the rating path, whatever its signature, and makes them from
the files); see docs/architecture.md.
"""

from django.db import migrations

from annotation import sql


class Migration(migrations.Migration):
    dependencies = [("annotation", "0004_excluded_raters")]

    operations = [migrations.RunPython(sql.load, sql.unload)]
