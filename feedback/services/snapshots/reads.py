"""Where snapshots are, and the ones a user may see."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from annotation.selectors import campaign_list_for
from feedback.models import Snapshot
from policy.models import JobStatus

ROOT = "snapshots"  # under MEDIA_ROOT
MAX_SNAPSHOTS_LISTED = 200


def snapshots_root() -> Path:
    return Path(settings.MEDIA_ROOT) / ROOT


def snapshot_list_for(user) -> list[Snapshot]:
    """The latest snapshots whose campaigns the user may all see (researchers, admins)."""
    visible = set(campaign_list_for(user).values_list("slug", flat=True))
    if not visible:
        return []
    out = []
    for s in Snapshot.objects.order_by("-id").iterator(chunk_size=500):
        if set(s.filters.get("campaigns") or ["?"]) <= visible:
            out.append(s)
            if len(out) == MAX_SNAPSHOTS_LISTED:
                break
    return out


def snapshot_get_for(user, snapshot_id: int) -> Snapshot | None:
    s = Snapshot.objects.filter(pk=snapshot_id).first()
    if s is None:
        return None
    visible = set(campaign_list_for(user).filter(
        slug__in=s.filters.get("campaigns") or []).values_list("slug", flat=True))
    return s if visible and visible == set(s.filters.get("campaigns") or []) else None


def snapshot_folder(snapshot: Snapshot) -> Path | None:
    """The finished snapshot's folder, or None."""
    if snapshot.status != JobStatus.SUCCEEDED or not snapshot.content_hash:
        return None
    path = snapshots_root() / snapshot.content_hash
    return path if path.is_dir() else None
