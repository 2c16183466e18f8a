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


@shared_task(
    queue=Queue.GPU, acks_late=True, soft_time_limit=3600, time_limit=3660, ignore_result=True
)
def generate_candidates_task(
    version_id: int,
    episode_ids: list[int],
    k: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    ground_truth: bool = True,
) -> None:
    from policy.models import Episode, PolicyVersion
    from policy.services.candidates import candidates_generate

    version = PolicyVersion.objects.filter(pk=version_id).select_related("dataset").first()
    if version is None:
        return
    episodes = list(Episode.objects.filter(pk__in=episode_ids).order_by("key"))
    candidates_generate(
        version=version,
        episodes=episodes,
        k=k,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        ground_truth=ground_truth,
    )
