"""What the annotation app does when an app below it says something happened (connected in
``AnnotationConfig.ready``)."""

from __future__ import annotations

from typing import Any

from annotation.services.campaign_items import campaign_sampling_advance


def on_candidate_job_finished(sender: type, *, job_id: int, **kwargs: Any) -> None:
    """A campaign waiting for this job's candidates may now be built (or has failed)."""
    campaign_sampling_advance(job_id=job_id)
