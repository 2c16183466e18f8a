"""Tasks of retraining rounds. The step task is sent to its step's queue (``gpu`` for training
and sampling, ``default`` for the snapshot and the bookkeeping); the beat tasks run on
``default``."""

from celery import shared_task

from config.queues import Queue

__all__ = ["round_reap_task", "round_schedule_task", "round_step_task"]

# The longest step (optimisation of a large policy) stays well under the Redis visibility
# timeout (12 h): a step that is still running is not delivered twice.
ROUND_STEP_TIME_LIMIT_S = 8 * 3600


@shared_task(acks_late=True, soft_time_limit=ROUND_STEP_TIME_LIMIT_S,
             time_limit=ROUND_STEP_TIME_LIMIT_S + 300, ignore_result=True)
def round_step_task(round_id: int, step: str) -> None:
    # Claimed inside: a second delivery, or a step already done, does nothing.
    from feedback.services.rounds import round_step_run

    round_step_run(round_id=round_id, step=step)


@shared_task(queue=Queue.DEFAULT, ignore_result=True, time_limit=120)
def round_reap_task() -> None:
    from feedback.services.rounds import round_reap_stale

    round_reap_stale()


@shared_task(queue=Queue.DEFAULT, ignore_result=True, time_limit=300)
def round_schedule_task() -> None:
    from feedback.services.rounds import rounds_due

    rounds_due()
