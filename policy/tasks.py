from datetime import timedelta

from celery import shared_task

from config.queues import Queue

IMPORT_TIME_LIMIT_S = 3 * 3600


@shared_task(
    queue=Queue.DEFAULT,
    acks_late=True,
    soft_time_limit=IMPORT_TIME_LIMIT_S,
    time_limit=IMPORT_TIME_LIMIT_S + 60,
    ignore_result=True,
)
def import_dataset_task(import_id: int) -> None:
    from policy.services.imports import dataset_import_run

    dataset_import_run(import_id=import_id)


@shared_task(queue=Queue.DEFAULT, ignore_result=True, time_limit=120)
def reap_stale_imports_task() -> None:
    from policy.services.imports import dataset_import_reap_stale

    dataset_import_reap_stale(older_than=timedelta(seconds=IMPORT_TIME_LIMIT_S + 600))
