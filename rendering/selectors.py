"""Reads for clips."""

from __future__ import annotations

import uuid

from django.db.models import Count, QuerySet

from rendering.models import Clip, ClipStatus


def clip_get_servable(*, public_id: uuid.UUID | str) -> Clip | None:
    """A finished clip by its public id, or None. Only finished clips are ever served."""
    try:
        public_id = uuid.UUID(str(public_id))
    except ValueError:
        return None
    return Clip.objects.filter(public_id=public_id, status=ClipStatus.SUCCEEDED).first()


def clip_get_by_content_hash(*, content_hash: str) -> Clip | None:
    return Clip.objects.filter(content_hash=content_hash).first()


def clips_by_ids(*, ids: list[int]) -> QuerySet[Clip]:
    return Clip.objects.filter(pk__in=ids)


def clip_status_counts() -> dict[str, int]:
    counts = {s: 0 for s in ClipStatus.values}
    for row in Clip.objects.values("status").annotate(n=Count("pk")):
        counts[row["status"]] = row["n"]
    return counts
