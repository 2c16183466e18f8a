"""Reads, each scoped to what the asking user may see."""

from __future__ import annotations

from urllib.parse import quote

from django.core import signing
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone

from annotation.models import (
    Assignment,
    AssignmentStatus,
    Campaign,
    Enrollment,
    Item,
    ItemMember,
    Judgment,
    Probe,
)
from annotation.roles import is_admin, is_researcher

MEDIA_SALT = "annotation.exposure-media"
_PARTS = ("video", "poster")


def campaign_list_for(user) -> QuerySet[Campaign]:
    """Admins see every campaign, researchers the ones they made or were added to, nobody
    else any."""
    qs = Campaign.objects.select_related("dataset", "created_by").order_by("-created_at")
    if is_admin(user):
        return qs
    if is_researcher(user):
        return qs.filter(Q(created_by=user) | Q(researchers=user)).distinct()
    return qs.none()


def campaigns_with_counts(qs: QuerySet[Campaign]) -> QuerySet[Campaign]:
    """Each campaign with its regular items, regular judgments and raters counted in the same
    query (lists show many campaigns; ``campaign_progress`` is for one)."""
    def count(model, **filters):
        rows = (model.objects.filter(campaign=OuterRef("pk"), **filters).order_by()
                .values("campaign").annotate(n=Count("id")).values("n"))
        return Coalesce(Subquery(rows), 0)

    return qs.annotate(n_items=count(Item, probe=Probe.NONE),
                       n_judgments=count(Judgment, probe=Probe.NONE),
                       n_raters=count(Enrollment))


def campaign_summary(campaign: Campaign) -> dict:
    """Judgments against what is needed, from a campaign of ``campaigns_with_counts``."""
    needed = campaign.n_items * campaign.overlap
    done = campaign.n_judgments
    return {"judgments": done, "judgments_needed": needed, "raters": campaign.n_raters,
            "percent": round(100.0 * min(done, needed) / needed, 1) if needed else 0.0}


def campaign_get_for(user, slug: str) -> Campaign | None:
    return campaign_list_for(user).filter(slug=slug).first()


def campaign_progress(campaign: Campaign) -> dict:
    from annotation.services.campaigns import campaign_clip_progress

    regular = Item.objects.filter(campaign=campaign, probe=Probe.NONE)
    items = regular.count()
    needed = items * campaign.overlap
    done = Judgment.objects.filter(campaign=campaign, probe=Probe.NONE).count()
    complete = regular.filter(n_judgments__gte=campaign.overlap).count()
    live = Assignment.objects.filter(campaign=campaign, status=AssignmentStatus.ACTIVE,
                                     expires_at__gt=timezone.now()).count()
    counts = {row["probe"]: row for row in (
        Judgment.objects.filter(campaign=campaign).exclude(probe=Probe.NONE).values("probe")
        .annotate(answered=Count("id"), passed=Count("id", filter=Q(qc__passed=True))))}
    probes = {}
    for probe in (Probe.GOLD, Probe.CATCH, Probe.REPEAT):
        row = counts.get(probe.value, {"answered": 0, "passed": 0})
        answered, passed = row["answered"], row["passed"]
        probes[probe.value] = {"answered": answered, "passed": passed,
                               "rate": round(passed / answered, 3) if answered else None}
    raters = Enrollment.objects.filter(campaign=campaign).aggregate(
        enrolled=Count("id"), finished=Count("id", filter=Q(finished_at__isnull=False)),
        blocked=Count("id", filter=Q(blocked=True)),
    )
    clips_done, clips_failed, clips_total = campaign_clip_progress(campaign)
    return {
        "status": campaign.status,
        "items": items,
        "items_complete": complete,
        "judgments": done,
        "judgments_needed": needed,
        "percent": round(100.0 * min(done, needed) / needed, 1) if needed else 0.0,
        "live_leases": live,
        "probes": probes,
        "raters": raters,
        "clips": {"rendered": clips_done, "failed": clips_failed, "total": clips_total},
        "ratings": campaign.ratings,
    }


def rater_rows(campaign: Campaign) -> list[Enrollment]:
    return list(Enrollment.objects.filter(campaign=campaign).select_related("rater")
                .order_by("-n_judgments"))


# -- what a rater's browser gets -------------------------------------------------------------


def media_token(assignment: Assignment) -> str:
    """A signed, dated handle for one exposure's files: it names the lease, never a clip, so
    two exposures of the same clip have unrelated URLs. One signature per exposure (the files
    are told apart by their screen position in the URL)."""
    return signing.TimestampSigner(salt=MEDIA_SALT).sign(assignment.token.hex)


def media_token_read(token: str, *, max_age: int) -> str:
    """The lease's token (hex) the handle names; raises ``signing.BadSignature`` (or
    ``SignatureExpired``)."""
    value = signing.TimestampSigner(salt=MEDIA_SALT).unsign(token, max_age=max_age)
    if len(value) != 32:
        raise signing.BadSignature("malformed")
    return value


def media_file_read(name: str) -> tuple[int, str]:
    """(position, part) from a file name of the media URL: ``speaker-video``, ``0-poster``…
    (position -1 is the speaker)."""
    where, _, part = name.partition("-")
    if part not in _PARTS or not (where == "speaker" or where.isdigit()):
        raise ValueError(f"no such file {name!r}")
    return (-1 if where == "speaker" else int(where)), part


def _media(url: str, position: int) -> dict:
    where = "speaker" if position < 0 else str(position)
    return {part: url.replace(_FILE, f"{where}-{part}") for part in _PARTS}


_PLACEHOLDER = "__media__"  # stands for the signed handle in the resolved URL
_FILE = "__file__"  # and for the file's name


def assignments_payload(assignments: list[Assignment]) -> list[dict]:
    """What the rater page needs for each lease, with the candidates in the order shown. No
    source, candidate, clip or episode id leaves the server."""
    if not assignments:
        return []
    # One URL resolution for all the files (each costs more than signing a token).
    template = reverse("annotation:media", kwargs={"token": _PLACEHOLDER, "name": _FILE})
    now = timezone.now()
    out = []
    for a in assignments:
        size = len(a.order)  # the permutation shown: one position per slot of the item
        url = template.replace(_PLACEHOLDER, quote(media_token(a), safe=":"))
        out.append({
            "id": str(a.token),
            "speaker": _media(url, -1),
            "clips": [_media(url, position) for position in range(size)],
            "expires_in": max(0, int((a.expires_at - now).total_seconds())),
        })
    return out


def exposure_clips(*, rater, assignment_token: str, position: int):
    """The clip behind one position of one of the rater's own exposures and the clips it is
    shown with (the item's members; the speaker clip alone), or None."""
    a = (Assignment.objects.filter(token=assignment_token, rater=rater)
         .select_related("item__speaker_clip").first())
    if a is None or position >= len(a.order) or position < -1:
        return None
    if position == -1:
        return a.item.speaker_clip, [a.item.speaker_clip]
    slot = a.order[position]
    members = {m.slot: m.clip for m in
               ItemMember.objects.filter(item_id=a.item_id).select_related("clip")}
    clip = members.get(slot)
    return (clip, list(members.values())) if clip is not None else None
