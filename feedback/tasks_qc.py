"""Tasks of qc (on the ``default`` queue).

Not retried: a run that fails is recorded as failed with the reason, and the beat's next run
starts over from the judgments (a run only adds rows where a status changed, so nothing is
lost or doubled).
"""

from celery import shared_task

from config.queues import Queue

__all__: list[str] = ["qc_enqueue_due_task", "qc_run_task"]

# A million judgments take seconds; the limit is for a stuck database, not for the work.
QC_TIME_LIMIT_S = 15 * 60


@shared_task(
    queue=Queue.DEFAULT,
    acks_late=True,
    soft_time_limit=QC_TIME_LIMIT_S,
    time_limit=QC_TIME_LIMIT_S + 60,
    ignore_result=True,
    max_retries=0,
)
def qc_run_task(run_id: int) -> None:
    """Claim the run (QUEUED -> RUNNING) and do it; a second delivery finds it taken."""
    from feedback.services.qc import qc_run_execute

    qc_run_execute(run_id=run_id)


@shared_task(queue=Queue.DEFAULT, acks_late=True, ignore_result=True, time_limit=120,
             max_retries=0)
def qc_enqueue_due_task() -> None:
    """Every minute (beat): a run for each active campaign with a batch of new judgments."""
    from feedback.services.qc import qc_runs_due

    qc_runs_due()
