"""Reads for clips."""

from __future__ import annotations

import uuid

from rendering.models import Clip, ClipStatus


def clip_get_servable(*, public_id: uuid.UUID | str) -> Clip | None:
    """A finished clip by its public id, or None. Only finished clips are ever served."""
    try:
        public_id = uuid.UUID(str(public_id))
    except ValueError:
        return None
    return Clip.objects.filter(public_id=public_id, status=ClipStatus.SUCCEEDED).first()
