from celery import shared_task

from config.queues import Queue


@shared_task(
    queue=Queue.DEFAULT,
    acks_late=True,
    soft_time_limit=3 * 3600,
    time_limit=3 * 3600 + 60,
    ignore_result=True,
)
def import_dataset_task(import_id: int) -> None:
    from policy.services.imports import dataset_import_run

    dataset_import_run(import_id=import_id)
