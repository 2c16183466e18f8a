"""The judgments the filters keep, read in id order a chunk at a time as Arrow columns."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.csv as pa_csv
from django.db import connection
from django.db.models import Expression, F, Func, QuerySet, TextField, Value
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, Concat

from annotation.models import Judgment
from feedback import export

CHUNK = 10_000  # judgments read and turned into columns at a time
# The database columns of one judgment row, by name (feedback.export reads them so).
ROW = ("id", "campaign_id", "item_id", "rater_id", "probe", "order", "choice", "outcome",
       "strength", "reasons", "scores", "decision_ms", "viewing_ms", "qc", "created_at",
       "playback")
# JSON columns arrive as text: feedback.export decodes each distinct text once.
_JSON = ("order", "reasons", "scores", "qc")


def _row_exprs() -> dict[str, Expression]:
    """The judgment columns of ``ROW``: only the playback counters (not the event log, up to
    64 KB a judgment); JSON and times as text."""
    exprs: dict[str, Expression] = {}
    for name in ROW:
        if name in _JSON or name == "created_at":
            exprs[name] = Cast(name, TextField())
        elif name == "playback":  # "plays,pauses,...": Concat makes a missing one blank
            parts = [KT(f"playback__{p}") for p in export.PLAYBACK]
            exprs[name] = Concat(*[x for p in parts for x in (
                p, Value(",", output_field=TextField()))][:-1], output_field=TextField())
        else:
            exprs[name] = F(name)
    return exprs


_NULL = "\\N"  # no column prints so: JSON, codes, numbers, times


def _tsv_columns(data: bytes) -> dict[str, pa.Array]:
    table = pa_csv.read_csv(
        io.BytesIO(data),
        read_options=pa_csv.ReadOptions(column_names=list(ROW), use_threads=False),
        parse_options=pa_csv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False),
        convert_options=pa_csv.ConvertOptions(column_types=export.ROW_TYPES,
                                              null_values=[_NULL], strings_can_be_null=True))
    return {name: table.column(name).combine_chunks() for name in ROW}


def _chunks(qs: QuerySet[Judgment]) -> Iterator[dict[str, pa.Array]]:
    """The rows in id order, ``CHUNK`` at a time, as columns. On PostgreSQL each row comes as
    one line of tab-separated text made by the database, and a chunk's lines are parsed by
    Arrow: no Python object per value (no column holds a tab or a line break: JSON is printed
    on one line with its control characters escaped, the rest are codes, numbers and times).
    Elsewhere a column per value, through the same server-side cursor."""
    exprs = _row_exprs()
    types = export.ROW_TYPES
    if connection.vendor == "postgresql":
        text = TextField()

        def joined(sep: str, parts: list) -> Func:  # CONCAT_WS: flat, unlike nested Concat
            return Func(Value(sep, output_field=text), *parts, function="CONCAT_WS",
                        output_field=text)

        # A counter sent as text could hold a tab or a comma (the page's evidence is checked
        # for size, not for the type of each counter): blanked, it reads as "not a count".
        exprs["playback"] = joined(",", [Coalesce(Func(
            KT(f"playback__{p}"), Value("\t\n\r,", output_field=text),
            Value("    ", output_field=text), function="TRANSLATE", output_field=text),
            Value("", output_field=text), output_field=text) for p in export.PLAYBACK])
        line = joined("\t", [Coalesce(Cast(e, text), Value(_NULL, output_field=text),
                                      output_field=text) for e in exprs.values()])
        query = qs.annotate(c_line=line).order_by("id").values_list("c_line")
    else:
        query = qs.annotate(**{f"c_{k}": v for k, v in exprs.items()}).order_by("id").values_list(
            *[f"c_{k}" for k in exprs])
    sql, params = query.query.sql_with_params()
    with connection.chunked_cursor() as cursor:  # server-side on PostgreSQL
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(CHUNK):
            if connection.vendor == "postgresql":
                yield _tsv_columns("\n".join([r[0] for r in rows]).encode())
            else:
                yield {name: pa.array(values, type=types[name])
                       for name, values in zip(ROW, zip(*rows, strict=True), strict=True)}
