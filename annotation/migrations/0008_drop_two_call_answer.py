"""Drop the answer in two calls: migration 0003's ``annotation_answer`` (19 arguments) and
``annotation_lease_for_answer``.

Migration 0005 replaced them with the one-call ``annotation_answer`` (15 arguments) and left
them in place for one release, so that workers still running the code before it kept storing
answers while they restarted. Code since then calls neither. Reversing this migration makes
them again from 0003's text.
"""

import importlib

from django.db import migrations

from annotation.migrations._sql_edits import function_text

FIRST = importlib.import_module("annotation.migrations.0003_rating_functions").FUNCTIONS
OLD = [function_text(FIRST, "annotation_lease_for_answer"),
       function_text(FIRST, "annotation_answer")]
DROP = """
DROP FUNCTION IF EXISTS annotation_answer(uuid, bigint, uuid, text, text, integer, jsonb, jsonb,
    integer, integer, jsonb, jsonb, integer, integer, timestamptz, boolean, integer, timestamptz,
    text[]);
DROP FUNCTION IF EXISTS annotation_lease_for_answer(uuid);
"""


def drop(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


def make_again(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        for sql in OLD:
            schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [("annotation", "0007_lease_lookups_by_item_and_rater")]

    operations = [migrations.RunPython(drop, make_again)]
