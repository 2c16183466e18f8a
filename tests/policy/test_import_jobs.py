import io
import os
import uuid
import zipfile
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile

from config.celery import app as celery_app
from policy.models import Dataset, DatasetImport, Episode, JobStatus
from policy.services.imports import dataset_import_request, dataset_import_run
from tests.conftest import media_files, require_real_services
from tests.policy.corpus_files import write_backchannel_corpus
from tests.workers import start_worker, stop, wait_until_finished, worker_env

ROOT = Path(__file__).resolve().parents[2]


def corpus_zip(
    tmp_path: Path, *, n: int = 3, name: str = "uploaded", broken: bool = False
) -> bytes:
    folder = tmp_path / f"corpus-{uuid.uuid4().hex[:6]}"
    write_backchannel_corpus(folder, n=n, name=name)
    if broken:
        (folder / "episodes" / f"ep-{n - 1:03d}" / "listener.npy").write_bytes(b"\x93NUMPY garbage")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


def upload(data: bytes, name: str = "corpus.zip") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/zip")


@pytest.mark.django_db
def test_import_job_runs_once_and_a_rerun_is_a_noop(tmp_path, django_capture_on_commit_callbacks):
    # given: a queued job (the enqueue happens on commit)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = dataset_import_request(
            upload=upload(corpus_zip(tmp_path)), fmt="backchannel", user=None
        )
    assert len(callbacks) == 1
    # when: the task body runs twice (a redelivery)
    dataset_import_run(import_id=job.pk)
    files_after_first = media_files()
    dataset_import_run(import_id=job.pk)
    # then
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.progress == 100.0
    assert (job.episodes_created, job.episodes_existing) == (3, 0)
    assert job.dataset.name == "uploaded"
    assert Episode.objects.count() == 3
    assert media_files() == files_after_first


@pytest.mark.django_db
def test_failed_import_job_records_the_error_and_stores_nothing(tmp_path):
    job = dataset_import_request(
        upload=upload(corpus_zip(tmp_path, broken=True)), fmt="backchannel", user=None
    )
    stored_before = media_files()
    dataset_import_run(import_id=job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "ep-002/listener.npy: listener: not a valid .npy file" in job.error
    assert Dataset.objects.count() == 0
    assert media_files() == stored_before  # only the uploaded archive itself


@pytest.mark.django_db
def test_admin_upload_is_superuser_only(client, tmp_path, django_capture_on_commit_callbacks):
    User = get_user_model()
    staff = User.objects.create_user("staff", password="pw-staff-123", is_staff=True)
    root = User.objects.create_superuser("root", password="pw-root-123")
    url = "/admin/policy/datasetimport/add/"

    client.force_login(staff)
    assert client.get(url).status_code == 403
    assert client.post(url, {"upload": upload(b"x"), "format": "backchannel"}).status_code == 403

    client.force_login(root)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            url,
            {"upload": upload(corpus_zip(tmp_path)), "format": "backchannel", "dataset_name": ""},
        )
    assert response.status_code == 302, response.content[:2000]
    job = DatasetImport.objects.get()
    assert job.status == JobStatus.QUEUED and job.created_by == root
    assert len(callbacks) == 1
    page = client.get(f"/admin/policy/datasetimport/{job.pk}/change/")
    assert b"<progress" in page.content


@pytest.mark.django_db
def test_admin_upload_refuses_non_zip_and_oversized(client, settings, tmp_path):
    client.force_login(get_user_model().objects.create_superuser("root", password="pw-root-123"))
    url = "/admin/policy/datasetimport/add/"
    response = client.post(url, {"upload": upload(b"hello", "corpus.txt"), "format": "backchannel"})
    assert b"upload a .zip archive" in response.content
    settings.IMPORT_MAX_TOTAL_BYTES = 1000
    response = client.post(url, {"upload": upload(corpus_zip(tmp_path)), "format": "backchannel"})
    assert b"over the limit" in response.content
    assert DatasetImport.objects.count() == 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_the_import_through_redis(tmp_path):
    """A Celery worker process, started here, takes the job from Redis and imports the upload
    into the test database; the web side only enqueued it."""
    require_real_services()
    assert django_settings.CELERY_BROKER_URL.startswith("redis://")
    with celery_app.connection_for_write() as conn:
        conn.default_channel.queue_purge("default")  # nothing left over from earlier runs
    worker = start_worker("default", worker_env(dict(os.environ)))
    try:
        # when: the web side enqueues (autocommit here, so on_commit sends at once)
        job = dataset_import_request(
            upload=upload(corpus_zip(tmp_path, n=4)), fmt="backchannel", user=None
        )
        wait_until_finished(job, worker, (JobStatus.SUCCEEDED, JobStatus.FAILED), timeout=90)
    finally:
        output = stop(worker)
    # then
    assert job.status == JobStatus.SUCCEEDED, output[-3000:]
    assert Episode.objects.filter(dataset__name="uploaded").count() == 4
    assert "policy.tasks.import_dataset_task" in output


@pytest.mark.django_db
def test_reaper_fails_imports_abandoned_by_a_dead_worker(tmp_path):
    from datetime import timedelta

    from django.utils import timezone

    from policy.services.imports import dataset_import_reap_stale

    old = dataset_import_request(upload=upload(b"x"), fmt="backchannel", user=None)
    fresh = dataset_import_request(upload=upload(b"y"), fmt="backchannel", user=None)
    DatasetImport.objects.filter(pk=old.pk).update(
        status=JobStatus.RUNNING, started_at=timezone.now() - timedelta(hours=5)
    )
    DatasetImport.objects.filter(pk=fresh.pk).update(
        status=JobStatus.RUNNING, started_at=timezone.now()
    )
    assert dataset_import_reap_stale(older_than=timedelta(hours=4)) == 1
    assert dataset_import_reap_stale(older_than=timedelta(hours=4)) == 0
    old.refresh_from_db()
    fresh.refresh_from_db()
    assert old.status == JobStatus.FAILED and "no worker finished" in old.error
    assert fresh.status == JobStatus.RUNNING
