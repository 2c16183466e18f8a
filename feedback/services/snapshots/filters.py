"""The filters of a snapshot: checked against what the user may see, normalised (equal
filters, equal key), and the judgments they keep."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import reduce
from operator import or_

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from annotation.models import Campaign, Enrollment, ItemMember, Judgment
from annotation.selectors import campaign_list_for
from feedback.models import RaterStatus
from policy.models import CandidateSource

QC_POLICIES = ("trusted", "all")
DEFAULT_TEST_FRACTION = 0.1
_FILTER_KEYS = ("campaigns", "qc", "since", "until", "sources", "test_fraction")


class SnapshotError(ValueError):
    """A snapshot that cannot be made as asked; the message names the field and says why."""

    code = "invalid"

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


# --- filters -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Filters:
    """The normalised filters: equal filters give equal ``key``s."""

    campaigns: tuple[str, ...]
    qc: str = "trusted"
    since: datetime | None = None
    until: datetime | None = None
    sources: tuple[str, ...] = ()
    test_fraction: float = DEFAULT_TEST_FRACTION

    def as_json(self) -> dict:
        def when(d: datetime | None) -> str | None:
            return d.astimezone(UTC).isoformat() if d else None

        return {"campaigns": list(self.campaigns), "qc": self.qc, "since": when(self.since),
                "until": when(self.until), "sources": list(self.sources),
                "test_fraction": self.test_fraction}

    @property
    def key(self) -> str:
        text = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _when(name: str, value: object) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        moment = parse_datetime(value) or (
            datetime.combine(d, datetime.min.time()) if (d := parse_date(value)) else None)
        if moment is None:
            raise SnapshotError(f"{name}: expected an ISO date or date-time, got {value!r}",
                                field=name)
    else:
        raise SnapshotError(f"{name}: expected an ISO date or date-time, got {value!r}",
                            field=name)
    return moment.replace(tzinfo=UTC) if timezone.is_naive(moment) else moment.astimezone(UTC)


def source_labels(campaign: Campaign) -> list[str]:
    """The campaign's sources as labels (ground_truth / policy:<version> / baseline:<name>, as
    ``annotation.services.ordering.source_label`` names candidates)."""
    out = []
    for s in campaign.sources or []:
        kind = s.get("kind") if isinstance(s, dict) else None
        if kind == "policy":
            out.append(f"policy:{s.get('version')}")
        elif kind == "ground_truth":
            out.append("ground_truth")
        elif kind == "baseline":
            out.append(f"baseline:{s.get('name')}")
    return out


def _label(source: str, version: str | None, baseline: str) -> str:
    if source == CandidateSource.POLICY:
        return f"policy:{version}"
    if source == CandidateSource.GROUND_TRUTH:
        return "ground_truth"
    return f"baseline:{baseline}"


def snapshot_filters_clean(filters: dict | None, *, user) -> tuple[Filters, list[Campaign]]:
    """The filters, normalised, and their campaigns; raises ``SnapshotError`` naming the field.
    ``user`` None is the platform itself (a command, a round): every campaign."""
    data = dict(filters or {})
    unknown = sorted(set(data) - set(_FILTER_KEYS))
    if unknown:
        raise SnapshotError(f"{unknown[0]}: not a filter (filters are {', '.join(_FILTER_KEYS)})",
                            field=unknown[0])
    slugs = data.get("campaigns")
    if isinstance(slugs, str):
        slugs = [slugs]
    if not isinstance(slugs, list | tuple) or not slugs or not all(
            isinstance(s, str) and s for s in slugs):
        raise SnapshotError("campaigns: expected a non-empty list of campaign slugs",
                            field="campaigns")
    visible = campaign_list_for(user) if user is not None else Campaign.objects.all()
    found = {c.slug: c for c in visible.filter(slug__in=slugs).select_related("dataset")}
    for slug in sorted(set(slugs)):
        if slug not in found:
            raise SnapshotError(f"campaigns: no campaign {slug!r} that you may see",
                                field="campaigns")
    campaigns = [found[s] for s in sorted(found)]
    layouts = sorted({c.dataset.face_model for c in campaigns})
    if len(layouts) > 1:
        which = ", ".join(f"{c.slug} ({c.dataset.face_model})" for c in campaigns)
        raise SnapshotError(
            f"campaigns: {which} use different face layouts ({' and '.join(layouts)}): their "
            "sequences have different dimensions and meanings, so one snapshot cannot hold "
            "them; export each layout separately", field="campaigns")
    qc = data.get("qc") or "trusted"
    if qc not in QC_POLICIES:
        raise SnapshotError(f"qc: expected one of {', '.join(QC_POLICIES)}, got {qc!r}",
                            field="qc")
    since, until = _when("since", data.get("since")), _when("until", data.get("until"))
    if since and until and since >= until:
        raise SnapshotError("until: must come after since", field="until")
    sources = data.get("sources") or []
    if isinstance(sources, str):
        sources = [sources]
    known = {label for c in campaigns for label in source_labels(c)}
    for label in sources:
        if label not in known:
            raise SnapshotError(f"sources: {label!r} is not a source of these campaigns "
                                f"(they have {', '.join(sorted(known))})", field="sources")
    fraction = data.get("test_fraction", DEFAULT_TEST_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not (
            0 <= fraction < 1):
        raise SnapshotError(f"test_fraction: expected a number in [0, 1), got {fraction!r}",
                            field="test_fraction")
    return Filters(tuple(c.slug for c in campaigns), qc, since, until,
                   tuple(sorted(set(sources))), float(fraction)), campaigns


def rater_statuses(campaign_ids: list[int]) -> dict[tuple[int, int], tuple[str, str]]:
    """(campaign id, rater id) -> pseudonym and status now: quality control's latest decision
    (trusted when there is none yet), ``excluded`` whenever the switch is on, ``blocked`` for
    a rater stopped by failed probes."""
    from feedback.services.qc import latest_status

    rows = list(Enrollment.objects.filter(campaign_id__in=campaign_ids).values_list(
        "id", "campaign_id", "rater_id", "pseudonym", "excluded", "blocked"))
    status = latest_status(enrollment_ids=[r[0] for r in rows])
    out = {}
    for eid, campaign_id, rater_id, pseudonym, excluded, blocked in rows:
        s = status.get(eid) or RaterStatus.TRUSTED
        if excluded or s == RaterStatus.EXCLUDED:
            s = RaterStatus.EXCLUDED
        elif blocked:
            s = "blocked"
        out[(campaign_id, rater_id)] = (str(pseudonym), str(s))
    return out


def _source_match(labels: tuple[str, ...]) -> Q:
    """ItemMember rows whose candidate comes from one of ``labels``."""
    def one(label: str) -> Q:
        kind, _, name = label.partition(":")
        if kind == "policy":
            return Q(candidate__source=CandidateSource.POLICY,
                     candidate__policy_version__name=name)
        if kind == "baseline":
            return Q(candidate__source=CandidateSource.BASELINE, candidate__baseline=name)
        return Q(candidate__source=CandidateSource.GROUND_TRUTH)

    return reduce(or_, (one(label) for label in labels))


def snapshot_judgments(f: Filters, campaigns: list[Campaign],
                       raters: dict[tuple[int, int], tuple[str, str]]) -> QuerySet[Judgment]:
    """The judgments the filters keep."""
    qs = Judgment.objects.filter(campaign__in=[c.pk for c in campaigns])
    if f.since:
        qs = qs.filter(created_at__gte=f.since)
    if f.until:
        qs = qs.filter(created_at__lt=f.until)
    if f.qc == "trusted":
        for c in campaigns:
            out = [r for (cid, r), (_, status) in raters.items()
                   if cid == c.pk and status != RaterStatus.TRUSTED]
            if out:
                qs = qs.exclude(campaign_id=c.pk, rater_id__in=out)
    if f.sources:
        kept = (ItemMember.objects.filter(_source_match(f.sources), item_id=OuterRef("item_id"))
                .order_by().values("item_id").annotate(n=Count("pk")).values("n"))
        qs = qs.annotate(n_selected=Subquery(kept)).filter(n_selected__gte=2)
    return qs
