"""Candidate jobs: a policy version's candidates for a set of episodes, made by a ``gpu`` worker
(or in this process, by ``manage.py generate_candidates``).

``candidate_job_create`` is the one way in: the command, the retraining round and campaigns
waiting for candidates call it. The worker claims the job (``QUEUED -> RUNNING``), stores only
the candidates that are missing (``candidates_generate``) and finishes it as succeeded or failed
with the reason; once that is committed it sends ``policy.signals.candidate_job_finished``.
torch is imported by the sampling code inside the run, never when this module is imported.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from policy.models import CandidateJob, Episode, JobStatus, PolicyVersion
from policy.selectors import candidate_job_episodes
from policy.services.candidates import ProgressFn, candidates_generate
from policy.signals import candidate_job_finished
from policy.tasks import CANDIDATES_TIME_LIMIT_S, generate_candidates_task

logger = logging.getLogger(__name__)

SPLITS = tuple(value for value, _ in CandidateJob.SPLITS)
# The baselines a job can make: ``policy.ml.baselines.BASELINES`` but the ground truth (a job
# stores that on its own flag). Written out so that the web process, which plans jobs, need not
# import torch; tests/annotation/test_campaign_sampling.py checks the two agree.
JOB_BASELINES = ("random_clip", "nearest_neighbour", "mirror", "mean_face")
# Policy samples fill the bar up to here; the ground truth and the baselines come after.
_SAMPLING_PERCENT = 95.0
# A job still RUNNING this long after its claim outlived its worker's hard time limit: the worker
# is dead, and a redelivery of its task (acks_late) may claim it again and finish the rest.
STALE_AFTER = timedelta(seconds=CANDIDATES_TIME_LIMIT_S + 600)


class CandidateJobError(ValueError):
    """A candidate job that cannot be made or run as asked, with the reason."""


@transaction.atomic
def candidate_job_create(
    *,
    version: PolicyVersion,
    split: str | None = None,
    episodes: Iterable[Episode] | None = None,
    limit: int | None = None,
    k: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    ground_truth: bool = True,
    baselines: Sequence[str] = (),
    user: AbstractBaseUser | None = None,
    enqueue: bool = True,
) -> CandidateJob:
    """Record a job for ``k`` samples per episode (and the ground truth, and ``baselines``).

    The episodes are a ``split`` of the version's dataset ("train", "val", "test" or "all"; the
    first ``limit`` by key) or the given ``episodes``, one of the two. With ``enqueue`` a ``gpu``
    worker runs the job once this transaction commits; without, the caller runs
    :func:`candidate_job_run` itself.
    """
    if (split is None) == (episodes is None):
        raise CandidateJobError("give the episodes either as a split or as a list, not both")
    if k < 1:
        raise CandidateJobError(f"k must be at least 1, got {k}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise CandidateJobError(f"temperature must be a number >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise CandidateJobError(f"top_p must be in (0, 1], got {top_p}")
    names = list(baselines)
    if not all(isinstance(n, str) and n for n in names):
        raise CandidateJobError(f"baselines must be names, got {names!r}")
    dataset = version.dataset
    ids: list[int] = []
    if split is not None:
        if split not in SPLITS:
            raise CandidateJobError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if limit is not None and limit < 1:
            raise CandidateJobError(f"limit must be at least 1, got {limit}")
        selected = dataset.episodes.all()
        if split != "all":
            selected = selected.filter(split=split)
        if not selected.exists():
            raise CandidateJobError(f"dataset {dataset.name!r} has no episodes in split {split!r}")
    else:
        if limit is not None:
            raise CandidateJobError("limit applies to a split; pass fewer episodes instead")
        chosen = list(episodes)
        if not chosen:
            raise CandidateJobError("no episodes selected")
        wrong = [e for e in chosen if e.dataset_id != version.dataset_id]
        if wrong:
            raise CandidateJobError(
                f"episode {wrong[0].key!r} is not in {dataset.name}, the corpus {version.name} "
                "was trained on (its layout and input statistics)"
            )
        ids = sorted({e.pk for e in chosen})
    job = CandidateJob.objects.create(
        version=version,
        split=split or "",
        limit=limit,
        episode_ids=ids,
        k=k,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        ground_truth=ground_truth,
        baselines=names,
        created_by=user,
    )
    if enqueue:
        transaction.on_commit(lambda: generate_candidates_task.delay(job.pk))
    return job


def candidate_job_claim(*, job_id: int) -> bool:
    """Take the job for this worker: one conditional update, so of two workers handed the same
    job exactly one gets it. False: gone, finished, or running elsewhere."""
    now = timezone.now()
    takeable = Q(status=JobStatus.QUEUED) | Q(
        status=JobStatus.RUNNING, started_at__lt=now - STALE_AFTER
    )
    claimed = CandidateJob.objects.filter(takeable, pk=job_id).update(
        status=JobStatus.RUNNING, started_at=now, finished_at=None, progress=0.0, error=""
    )
    return claimed == 1


def candidate_job_run(*, job_id: int, progress: ProgressFn | None = None) -> CandidateJob | None:
    """Claim the job and store its missing candidates. Returns the finished job, or None when it
    was not this call's to run (a second call, a redelivery). ``progress(done, total)`` follows
    the episodes that needed policy samples."""
    if not candidate_job_claim(job_id=job_id):
        logger.info("candidate job %s: not queued (gone, taken or finished), nothing to do", job_id)
        return None
    job = CandidateJob.objects.select_related("version__dataset").get(pk=job_id)
    t0 = time.perf_counter()
    episodes = list(candidate_job_episodes(job))
    CandidateJob.objects.filter(pk=job_id).update(episodes_total=len(episodes))
    logger.info(
        "candidate job %s: version %s, %d episodes, k=%d, t=%g, top_p=%g, seed %d",
        job_id,
        job.version.name,
        len(episodes),
        job.k,
        job.temperature,
        job.top_p,
        job.seed,
    )

    def on_progress(done: int, total: int) -> None:
        percent = round(_SAMPLING_PERCENT * done / max(total, 1), 1)
        CandidateJob.objects.filter(pk=job_id).update(progress=percent)
        if progress is not None:
            progress(done, total)

    try:
        if not episodes:
            raise CandidateJobError(f"none of the job's {len(job.episode_ids)} episodes exist now")
        created = candidates_generate(
            version=job.version,
            episodes=episodes,
            k=job.k,
            temperature=job.temperature,
            top_p=job.top_p,
            seed=job.seed,
            ground_truth=job.ground_truth,
            baselines=job.baselines,
            progress=on_progress,
        )
    except ValueError as exc:  # the job's inputs: a person can act on the message
        logger.warning("candidate job %s failed: %s", job_id, exc)
        return _finish(job_id, status=JobStatus.FAILED, error=str(exc))
    except SoftTimeLimitExceeded:
        logger.warning("candidate job %s: time limit reached", job_id)
        _finish(
            job_id,
            status=JobStatus.FAILED,
            error=f"stopped at the time limit ({CANDIDATES_TIME_LIMIT_S} s); the candidates "
            "stored so far are kept, and a new job with the same settings makes only the rest",
        )
        raise
    except Exception as exc:
        logger.exception("candidate job %s crashed", job_id)
        _finish(job_id, status=JobStatus.FAILED, error=f"internal error: {exc!r}")
        raise
    logger.info(
        "candidate job %s: %d rows created in %.1fs", job_id, created, time.perf_counter() - t0
    )
    return _finish(job_id, status=JobStatus.SUCCEEDED, progress=100.0, candidates_created=created)


def _finish(job_id: int, **fields: object) -> CandidateJob:
    CandidateJob.objects.filter(pk=job_id).update(finished_at=timezone.now(), **fields)
    job = CandidateJob.objects.get(pk=job_id)
    status = job.status
    transaction.on_commit(lambda: _announce(job_id, status))
    return job


def _announce(job_id: int, status: str) -> None:
    """Tell the receivers (a campaign waiting for these candidates builds its items). What a
    receiver does is its own business: its failure is logged, and changes nothing about the
    job, which has finished either way."""
    replies = candidate_job_finished.send_robust(sender=CandidateJob, job_id=job_id, status=status)
    for receiver, reply in replies:
        if isinstance(reply, Exception):
            logger.error(
                "candidate job %s: receiver %s failed",
                job_id,
                getattr(receiver, "__qualname__", receiver),
                exc_info=reply,
            )
