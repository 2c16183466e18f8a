from datetime import timedelta

from celery import shared_task

from config.queues import Queue

# A render of a few minutes of video takes well under this; the soft limit leaves time to
# record the failure. Redis's visibility timeout (settings) is far longer, so a slow render is
# never delivered twice while it runs.
RENDER_SOFT_LIMIT_S = 30 * 60


@shared_task(
    queue=Queue.RENDER,
    acks_late=True,
    soft_time_limit=RENDER_SOFT_LIMIT_S,
    time_limit=RENDER_SOFT_LIMIT_S + 60,
    ignore_result=True,
)
def render_clip_task(clip_id: int) -> None:
    from rendering.services import clip_render

    clip_render(clip_id=clip_id)


@shared_task(queue=Queue.DEFAULT, acks_late=True, time_limit=300, ignore_result=True)
def requeue_stale_clips_task() -> None:
    """For the beat schedule: clips left running by a worker that died."""
    from django.conf import settings

    from rendering.services import clips_requeue_stale

    # A rendering clip writes a heartbeat every few seconds; CLIP_SILENT_S without one means
    # its worker is gone (Redis would redeliver the task only after its visibility timeout).
    clips_requeue_stale(silent_for=timedelta(seconds=settings.CLIP_SILENT_S))
