"""What the dataset card says beyond the rows: campaigns, agreement, quality control,
policy versions."""

from __future__ import annotations

import json

from django.conf import settings
from django.db import connection
from django.db.models import Count, QuerySet

from annotation.models import Campaign, Judgment, Probe
from policy.models import PolicyVersion

from .filters import Filters, source_labels
from .references import _References


def _agreement(qs: QuerySet[Judgment]) -> dict:
    """How often two judgments of one regular pairwise item agree, in one query."""
    groups = (qs.filter(probe=Probe.NONE, campaign__protocol="pairwise").exclude(outcome="")
              .order_by().values("item_id", "outcome").annotate(n=Count("id")))
    sql, params = groups.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(  # built from the queryset's own SQL; every value is a parameter
            "SELECT COUNT(*), COALESCE(SUM(same), 0), COALESCE(SUM(t * (t - 1)), 0) FROM "  # noqa: S608
            f"(SELECT item_id, SUM(n * (n - 1)) AS same, SUM(n) AS t FROM ({sql}) g "
            "GROUP BY item_id) h WHERE t > 1", params)
        items, same, pairs = cursor.fetchone()
    return {"items": int(items), "item_pairs": int(pairs) // 2,
            "rate": round(int(same) / int(pairs), 6) if pairs else None}


def _qc_text(f: Filters, campaigns: list[Campaign], statuses: list[str]) -> str:
    from feedback.services.qc import qc_thresholds

    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    lines = [f"Policy `{f.qc}`: " + (
        "only judgments of trusted raters." if f.qc == "trusted" else
        "every rater's judgments, excluded ones included; filter on `rater_status`."),
        "", "Raters of these campaigns by status when the snapshot was made: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".", "",
        "Quality control decides a rater's status from their answers and records each "
        "decision with its reason and figures (config `raters`): gold accuracy, catch "
        "accuracy, hidden-repeat consistency, side bias, too-fast answers, agreement with the "
        "others' majority and a MACE-style reliability. Any exclusion rule makes a rater "
        "`excluded`, any warning rule `flagged`; no rule applies before its minimum count. "
        "Thresholds in force (`settings.FEEDBACK_QC`):", "", "```json",
        json.dumps(qc_thresholds().as_dict(), indent=2, sort_keys=True), "```", "",
        "Probes, per campaign: gold items (the ground truth against a clearly wrong answer), "
        "catch items (the same clip twice: a tie is right) and hidden repeats, drawn at these "
        "rates; the rating page warns a rater and then stops serving them (`blocked`) after "
        "these many failed probes:", ""]
    for c in campaigns:
        probes = {"gold_rate": c.gold_rate, "catch_rate": c.catch_rate,
                  "repeat_rate": c.repeat_rate, "warn_after": c.warn_after,
                  "block_after": c.block_after}
        lines.append(f"* `{c.slug}`: `{json.dumps(probes, sort_keys=True)}`")
    return "\n".join(lines)


def _card_meta(f: Filters, campaigns: list[Campaign], qs: QuerySet[Judgment],
               loader: _References, counts: dict) -> dict:
    versions = [
        {"name": name, "sha256": sha, "parent": parent, "lineage": line, "dataset": dataset}
        for name, sha, parent, line, dataset in PolicyVersion.objects.filter(
            name__in=loader.versions).order_by("name").values_list(
            "name", "checkpoint_sha", "parent__name", "lineage", "dataset__name")]
    camps = [{"slug": c.slug, "name": c.name, "protocol": c.protocol,
              "dataset": c.dataset.name, "face_model": c.dataset.face_model,
              "sources": source_labels(c), "overlap": c.overlap,
              **({"group_size": c.group_size, "criteria_weights": c.weights}
                 if c.protocol == "group" else
                 {"ask_strength": c.ask_strength, "reason_tags": list(c.reason_tags or [])})}
             for c in campaigns]
    return {"counts": {k: v for k, v in counts.items() if k != "arrays"},
            "arrays": len(loader.arrays), "filters": f.as_json(), "campaigns": camps,
            "face_model": campaigns[0].dataset.face_model, "agreement": _agreement(qs),
            "qc_text": _qc_text(f, campaigns, loader.refs.raters.columns["status"].to_pylist()),
            "versions": versions,
            "license": getattr(settings, "SNAPSHOT_LICENSE", "other"),
            "pretty_name": "Backchannel preference snapshot"}
