"""Dataset import jobs: an admin uploads an archive, a worker imports it."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from django.contrib.auth.models import AbstractBaseUser
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from policy.importers import ImportProblem
from policy.models import DatasetImport, JobStatus
from policy.services.datasets import dataset_import
from policy.tasks import import_dataset_task

logger = logging.getLogger(__name__)

# Write progress to the row at most this often (percent), not once per episode.
_PROGRESS_STEP = 2.0


@transaction.atomic
def dataset_import_request(
    *, upload: UploadedFile, fmt: str, dataset_name: str = "", user: AbstractBaseUser | None
) -> DatasetImport:
    job = DatasetImport.objects.create(
        upload=upload, format=fmt, dataset_name=dataset_name, created_by=user
    )
    transaction.on_commit(lambda: import_dataset_task.delay(job.pk))
    return job


def dataset_import_run(*, import_id: int) -> None:
    """Claim a queued import and run it. A second call (a redelivery, a retry) finds the job
    no longer queued and does nothing."""
    claimed = DatasetImport.objects.filter(pk=import_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, started_at=timezone.now(), progress=0.0
    )
    if not claimed:
        logger.info("import %s: not queued (gone or taken), nothing to do", import_id)
        return
    job = DatasetImport.objects.get(pk=import_id)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        percent = 100.0 * done / max(total, 1)
        if percent - last[0] >= _PROGRESS_STEP or done == total:
            last[0] = percent
            # Stored as 99 % at most until the rows are committed.
            DatasetImport.objects.filter(pk=import_id).update(progress=min(percent, 99.0))

    try:
        with _local_copy(job) as path:
            result = dataset_import(
                path=path,
                fmt=job.format,
                name=job.dataset_name or None,
                user=job.created_by,
                progress=progress,
            )
    except ImportProblem as exc:
        logger.warning("import %s failed: %s", import_id, exc)
        _finish(import_id, status=JobStatus.FAILED, error=str(exc))
        return
    except Exception as exc:
        logger.exception("import %s crashed", import_id)
        _finish(import_id, status=JobStatus.FAILED, error=f"internal error: {exc!r}")
        raise
    _finish(
        import_id,
        status=JobStatus.SUCCEEDED,
        progress=100.0,
        dataset=result.dataset,
        episodes_created=result.created,
        episodes_existing=result.existing,
    )


@contextmanager
def _local_copy(job: DatasetImport) -> Iterator[Path]:
    """The upload as a local file: in place on the file system, else a temporary copy (S3)."""
    try:
        local = Path(job.upload.path)
    except NotImplementedError:  # storage without local paths
        local = None
    if local is not None:
        yield local
        return
    suffix = Path(job.upload.name).suffix
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp, job.upload.open("rb") as src:
        shutil.copyfileobj(src, tmp)
        tmp.flush()
        yield Path(tmp.name)


def dataset_import_reap_stale(*, older_than: timedelta) -> int:
    """Fail imports still RUNNING long after any worker could be on them (a worker killed
    mid-import). Their partial blobs were never referenced; the rows say what happened."""
    cutoff = timezone.now() - older_than
    return DatasetImport.objects.filter(status=JobStatus.RUNNING, started_at__lt=cutoff).update(
        status=JobStatus.FAILED,
        finished_at=timezone.now(),
        error=f"no worker finished this import within {older_than}; upload it again",
    )


def _finish(import_id: int, **fields: object) -> None:
    DatasetImport.objects.filter(pk=import_id).update(finished_at=timezone.now(), **fields)
