"""A fair verdict for hidden repeats of group items, on the database path as in Python.

A hidden repeat passed when its outcome matched the first answer's. Group answers have no outcome
(they are scores), so a repeat of a group item compared two empty outcomes and always passed.
Now it passes when the candidates the repeat scores best (by the campaign's weighted criteria)
include one the first answer scored best (``judgments._qc`` and ``judgments.group_best``). Its
``qc`` keeps both sets of slots (``first``, ``best``).

* ``annotation_group_best(scores, weights)``: the best-scored slots of a group answer; the
  weights are the campaign's ``criteria_weights`` that are numbers, the default (1, as
  ``annotation.models.criteria_weights_read``) for the rest; values within a relative 1e-9 tie,
  as ``math.isclose``.
* ``annotation_answer`` (migration 0005) again, with its lease query reading the campaign's
  weights and the repeat's verdict for group items. It is 0005's text with the edits in
  ``EDITS``, each checked to apply exactly once, so the function a reader finds in 0005 is the
  one here but for them.

Verdicts stored before stay as they were (passed), as do the raters' probe counts, which decided
warnings and blocking at the time.
"""

import importlib

from django.db import migrations

from annotation.migrations._sql_edits import edited

before = importlib.import_module("annotation.migrations.0005_answer_in_one_call")

GROUP_BEST = r"""
CREATE FUNCTION annotation_group_best(p_scores jsonb, p_weights jsonb)
RETURNS integer[]
LANGUAGE sql IMMUTABLE AS $fn$
    WITH w AS (
        SELECT c.name, CASE WHEN jsonb_typeof(p_weights -> c.name) = 'number'
                            THEN (p_weights ->> c.name)::float8 ELSE 1.0 END AS weight
          FROM unnest(ARRAY['empathy', 'appropriateness', 'engagement', 'naturalness'])
               AS c(name)
    ), v AS (
        SELECT (s.slot - 1)::integer AS slot,
               (SELECT sum(w.weight * (s.entry ->> w.name)::float8) FROM w)
               / coalesce(nullif((SELECT sum(w.weight) FROM w), 0), 1.0) AS value
          FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_scores) = 'array'
                                         THEN p_scores ELSE '[]'::jsonb END)
               WITH ORDINALITY AS s(entry, slot)
    ), top AS (SELECT max(v.value) AS value FROM v)
    SELECT coalesce(array_agg(v.slot ORDER BY v.slot), '{}')
      FROM v, top
     WHERE abs(top.value - v.value) <= 1e-9 * greatest(abs(top.value), abs(v.value));
$fn$;
"""

EDITS = [
    ("CREATE FUNCTION annotation_answer(", "CREATE OR REPLACE FUNCTION annotation_answer("),
    ("    v_first text;\n", "    v_first text;\n    v_best_first integer[];\n    v_best integer[];\n"),
    ("c.protocol, c.ask_strength,", "c.protocol, c.criteria_weights, c.ask_strength,"),
    ("""    ELSIF a.probe = 'repeat' THEN
        SELECT j.outcome INTO v_first""",
     """    ELSIF a.probe = 'repeat' AND a.protocol = 'group' THEN
        -- The best-scored candidates again, one of them at least (judgments._qc).
        SELECT annotation_group_best(j.scores, a.criteria_weights) INTO v_best_first
          FROM annotation_judgment j WHERE j.assignment_id = a.repeat_of_id;
        v_best_first := coalesce(v_best_first, '{}');
        v_best := annotation_group_best(v_scores, a.criteria_weights);
        v_qc := jsonb_build_object('probe', 'repeat', 'passed', v_best_first && v_best,
                                   'first', to_jsonb(v_best_first), 'best', to_jsonb(v_best));
    ELSIF a.probe = 'repeat' THEN
        SELECT j.outcome INTO v_first"""),
]


def create(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(GROUP_BEST, params=None)
        schema_editor.execute(edited(before.FUNCTIONS, EDITS, "0006"), params=None)


def restore(apps, schema_editor) -> None:
    """Back to 0005's function."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(before.FUNCTIONS.replace(*EDITS[0]), params=None)
        schema_editor.execute("DROP FUNCTION IF EXISTS annotation_group_best(jsonb, jsonb);",
                              params=None)


class Migration(migrations.Migration):
    dependencies = [("annotation", "0005_answer_in_one_call")]

    operations = [migrations.RunPython(create, restore)]
