"""Tasks of snapshots (on the ``default`` queue)."""

from celery import shared_task

from config.queues import Queue

__all__ = ["snapshot_make_task"]

# A million judgments take well under a minute; the limit stops a stuck job. The Redis
# visibility timeout (12 h) is far above it, so a running export is not delivered twice.
SNAPSHOT_TIME_LIMIT_S = 3600


@shared_task(
    queue=Queue.DEFAULT,
    acks_late=True,
    soft_time_limit=SNAPSHOT_TIME_LIMIT_S,
    time_limit=SNAPSHOT_TIME_LIMIT_S + 60,
    ignore_result=True,
)
def snapshot_make_task(snapshot_id: int) -> None:
    # Claimed inside: a second delivery of the same job, or a job made already, does nothing.
    from feedback.services.snapshots import snapshot_make

    snapshot_make(snapshot_id=snapshot_id)
