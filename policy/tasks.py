import logging
from datetime import timedelta

from celery import shared_task

from config.queues import Queue

logger = logging.getLogger(__name__)

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


# GPU work: torch is imported inside the services these call, never in the worker's parent.
# The Redis visibility timeout (CELERY_VISIBILITY_TIMEOUT, 12 h) exceeds these limits, so a long
# run is not delivered twice.
TRAIN_TIME_LIMIT_S = 8 * 3600


@shared_task(
    queue=Queue.GPU,
    acks_late=True,
    soft_time_limit=TRAIN_TIME_LIMIT_S,
    time_limit=TRAIN_TIME_LIMIT_S + 300,
    ignore_result=True,
)
def train_policy_task(run_id: int) -> None:
    # On a host with several GPUs the service launches torchrun (one process per GPU) and waits
    # for it; a time limit stops the whole launch (policy.ml.distributed.launch).
    from policy.services.training import training_run_execute

    training_run_execute(run_id=run_id)


# Sampling a whole split of a large corpus. A job cut short keeps what it stored: a new job with
# the same settings samples only the rest.
CANDIDATES_TIME_LIMIT_S = 3 * 3600


@shared_task(
    queue=Queue.GPU,
    acks_late=True,
    soft_time_limit=CANDIDATES_TIME_LIMIT_S,
    time_limit=CANDIDATES_TIME_LIMIT_S + 300,
    ignore_result=True,
)
def generate_candidates_task(job_id: int) -> None:
    from policy.services.candidate_jobs import candidate_job_run

    candidate_job_run(job_id=job_id)


# Per-frame speaker video features for a dataset: decode + a frozen vision encoder. Re-running
# computes only the videos whose features are not stored yet.
VIDEO_FEATURES_TIME_LIMIT_S = 6 * 3600


@shared_task(
    queue=Queue.GPU,
    acks_late=True,
    soft_time_limit=VIDEO_FEATURES_TIME_LIMIT_S,
    time_limit=VIDEO_FEATURES_TIME_LIMIT_S + 300,
    ignore_result=True,
)
def compute_video_features_task(dataset_id: int, encoder: str) -> None:
    from policy.models import Dataset
    from policy.services.video_features import dataset_video_features

    dataset = Dataset.objects.filter(pk=dataset_id).first()
    if dataset is None:  # deleted since the task was queued
        logger.info("video features: dataset %s is gone", dataset_id)
        return
    counts = dataset_video_features(dataset, encoder)
    if counts["failed"]:
        logger.error(
            "video features of dataset %s: %d episodes failed: %s",
            dataset_id,
            counts["failed"],
            "; ".join(counts["errors"][:20]),
        )
