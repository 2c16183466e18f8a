"""Candidate jobs: made by candidate_job_create, run by the gpu-queue task (tiny model, CPU)."""

import os
import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from config.celery import app as celery_app
from config.queues import Queue
from policy.models import Candidate, CandidateJob, Dataset, Episode, JobStatus
from policy.services import candidate_jobs
from policy.services.candidate_jobs import (
    STALE_AFTER,
    CandidateJobError,
    candidate_job_claim,
    candidate_job_create,
    candidate_job_run,
)
from policy.tasks import generate_candidates_task
from tests.conftest import media_files, require_real_services
from tests.workers import start_worker, stop, wait_until_finished, worker_env

FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED)


def state(job: CandidateJob) -> tuple:
    """Everything a run can change: the job row, the candidate rows, the stored files."""
    job.refresh_from_db()
    row = (
        job.status,
        job.progress,
        job.error,
        job.episodes_total,
        job.candidates_created,
        job.started_at,
        job.finished_at,
    )
    rows = sorted(Candidate.objects.values_list("episode_id", "source_key", "array_sha"))
    return row, rows, media_files()


@pytest.mark.django_db
def test_create_enqueues_the_task_on_the_gpu_queue_after_commit(
    version, monkeypatch, django_capture_on_commit_callbacks
):
    sent: list[int] = []
    monkeypatch.setattr(generate_candidates_task, "delay", lambda job_id: sent.append(job_id))
    # when
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = candidate_job_create(version=version, split="test", limit=3, k=2, top_p=0.9)
        assert sent == []  # nothing leaves before the row is committed
    for callback in callbacks:
        callback()
    # then
    assert sent == [job.pk]
    assert (job.status, job.split, job.limit, job.k, job.top_p) == (
        JobStatus.QUEUED,
        "test",
        3,
        2,
        0.9,
    )
    assert generate_candidates_task.queue == Queue.GPU
    assert generate_candidates_task.acks_late is True
    assert 0 < generate_candidates_task.soft_time_limit < generate_candidates_task.time_limit


@pytest.mark.django_db
def test_the_task_called_twice_leaves_the_same_state(version):
    # given
    job = candidate_job_create(
        version=version, split="test", limit=2, k=2, baselines=["mirror"], enqueue=False
    )
    # when: the task runs, then runs again (a redelivery)
    generate_candidates_task.apply(args=(job.pk,))
    first = state(job)
    generate_candidates_task.apply(args=(job.pk,))
    # then
    assert state(job) == first
    assert job.status == JobStatus.SUCCEEDED and job.progress == 100.0 and job.error == ""
    assert (job.episodes_total, job.candidates_created) == (2, 2 * 2 + 2 + 2)  # K, GT, mirror
    assert Candidate.objects.filter(source="policy").count() == 4
    assert job.started_at <= job.finished_at


@pytest.mark.django_db
def test_a_job_makes_only_the_missing_candidates(version, corpus, monkeypatch):
    three = list(corpus.episodes.order_by("key")[:3])
    done = candidate_job_run(
        job_id=candidate_job_create(version=version, episodes=three[:2], k=2, enqueue=False).pk
    )
    assert done.candidates_created == 2 * 3
    files = media_files()
    # when: a job over the same two and one more episode
    seen: list[tuple[int, int, float]] = []

    def hook(n: int, total: int) -> None:
        seen.append((n, total, CandidateJob.objects.get(pk=job.pk).progress))

    job = candidate_job_create(version=version, episodes=three, k=2, enqueue=False)
    job = candidate_job_run(job_id=job.pk, progress=hook)
    # then: one episode sampled (its two samples and its ground truth), progress written
    assert job.status == JobStatus.SUCCEEDED
    assert (job.episodes_total, job.candidates_created) == (3, 2 + 1)
    assert seen == [(1, 1, 95.0)]
    assert len(media_files() - files) == 2
    # and a job asked a third time does not even load the policy
    from policy.services import training

    def no_loading(*args, **kwargs):
        raise AssertionError("nothing is missing: the policy must not be loaded")

    monkeypatch.setattr(training, "load_version_policy", no_loading)
    again = candidate_job_create(version=version, episodes=three, k=2, enqueue=False)
    again = candidate_job_run(job_id=again.pk)
    assert (again.status, again.candidates_created) == (JobStatus.SUCCEEDED, 0)


@pytest.mark.django_db
def test_a_failed_job_records_its_error(version):
    job = candidate_job_create(
        version=version, split="test", limit=1, k=1, baselines=["oracle"], enqueue=False
    )
    generate_candidates_task.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "unknown baseline 'oracle'" in job.error
    assert job.finished_at is not None
    # a failed job is finished: running it again changes nothing
    before = state(job)
    generate_candidates_task.apply(args=(job.pk,))
    assert state(job) == before


@pytest.mark.django_db
def test_a_tampered_checkpoint_fails_the_job_and_stores_nothing(version, settings):
    from pathlib import Path

    from rendering import blobs

    path = Path(settings.MEDIA_ROOT) / blobs.blob_name(version.checkpoint_sha, "pt")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    job = candidate_job_create(
        version=version, split="test", limit=1, k=1, ground_truth=False, enqueue=False
    )
    generate_candidates_task.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "sha256" in job.error
    assert not Candidate.objects.exists()


@pytest.mark.django_db
def test_a_crash_fails_the_job_and_reaches_the_worker(version, monkeypatch):
    def crash(**kwargs):
        raise RuntimeError("GPU fell off the bus")

    monkeypatch.setattr(candidate_jobs, "candidates_generate", crash)
    job = candidate_job_create(version=version, split="test", limit=1, enqueue=False)
    with pytest.raises(RuntimeError):
        generate_candidates_task.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error == "internal error: RuntimeError('GPU fell off the bus')"


@pytest.mark.django_db(transaction=True)
def test_of_two_workers_handed_the_same_job_only_one_runs_it(version, monkeypatch):
    # given: two threads (each its own database connection) that start together
    calls: list[int] = []

    def slow_generate(**kwargs) -> int:
        calls.append(len(kwargs["episodes"]))
        time.sleep(0.5)  # the other worker tries while this one holds the job
        return 0

    monkeypatch.setattr(candidate_jobs, "candidates_generate", slow_generate)
    job = candidate_job_create(version=version, split="test", limit=2, enqueue=False)
    start = threading.Barrier(2)
    results: list[CandidateJob | None] = []

    def worker() -> None:
        try:
            start.wait()
            results.append(candidate_job_run(job_id=job.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    # when
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # then
    assert calls == [2]
    assert sorted(r is None for r in results) == [False, True]
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED


@pytest.mark.django_db
def test_a_job_left_running_by_a_dead_worker_can_be_claimed_again(version):
    job = candidate_job_create(version=version, split="test", enqueue=False)
    assert candidate_job_claim(job_id=job.pk)
    assert not candidate_job_claim(job_id=job.pk)  # running, and recently claimed
    # when: the claim is older than any worker's hard time limit
    CandidateJob.objects.filter(pk=job.pk).update(
        started_at=timezone.now() - STALE_AFTER - timedelta(minutes=1)
    )
    # then
    assert candidate_job_claim(job_id=job.pk)
    CandidateJob.objects.filter(pk=job.pk).update(
        status=JobStatus.SUCCEEDED, started_at=timezone.now() - 2 * STALE_AFTER
    )
    assert not candidate_job_claim(job_id=job.pk)  # finished jobs stay finished
    assert not candidate_job_claim(job_id=job.pk + 1000)  # gone


@pytest.mark.django_db
def test_create_refuses_what_it_cannot_run(version, corpus):
    other = Dataset.objects.create(name="other", face_model="builtin", source_format="test")
    stranger = Episode.objects.create(
        dataset=other, key="x", fps=25, n_frames=10, content_hash="0" * 64, listener_sha="0" * 64
    )
    mine = list(corpus.episodes.all()[:1])
    cases = [
        ({}, "either as a split or as a list"),
        ({"split": "test", "episodes": mine}, "either as a split or as a list"),
        ({"split": "holdout"}, "split must be one of"),
        ({"episodes": []}, "no episodes selected"),
        ({"episodes": [stranger]}, "episode 'x' is not in syn"),
        ({"episodes": mine, "limit": 1}, "limit applies to a split"),
        ({"split": "test", "top_p": 0.0}, "top_p must be in"),
        ({"split": "test", "temperature": float("nan")}, "temperature must be"),
        ({"split": "test", "k": 0}, "k must be at least 1"),
    ]
    for kwargs, message in cases:
        with pytest.raises(CandidateJobError, match=message):
            candidate_job_create(version=version, enqueue=False, **kwargs)
    corpus.episodes.filter(split="val").delete()
    with pytest.raises(CandidateJobError, match="no episodes in split 'val'"):
        candidate_job_create(version=version, split="val", enqueue=False)
    assert not CandidateJob.objects.exists()


@pytest.mark.django_db
def test_the_command_queues_or_runs_in_process(version, capsys, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        call_command("generate_candidates", "--version", "tiny", "--limit", "2", "--queue")
    queued = CandidateJob.objects.get()
    assert "queued on the gpu queue" in capsys.readouterr().out
    assert queued.status == JobStatus.QUEUED and len(callbacks) == 1
    assert not Candidate.objects.exists()

    keys = list(version.dataset.episodes.order_by("key").values_list("key", flat=True)[:2])
    call_command(
        "generate_candidates",
        "--version",
        "tiny",
        "--episodes",
        ",".join(keys),
        "--k",
        "1",
        "--no-progress",
    )
    assert "4 candidates created for 2 episodes of syn" in capsys.readouterr().out
    ran = CandidateJob.objects.exclude(pk=queued.pk).get()
    assert ran.status == JobStatus.SUCCEEDED and ran.split == ""
    chosen = Episode.objects.filter(pk__in=ran.episode_ids).order_by("key")
    assert list(chosen.values_list("key", flat=True)) == keys
    with pytest.raises(CommandError, match="unknown baseline"):
        call_command(
            "generate_candidates",
            "--version",
            "tiny",
            "--k",
            "1",
            "--limit",
            "1",
            "--baselines",
            "oracle",
            "--no-progress",
        )


@pytest.mark.django_db
def test_the_admin_shows_jobs_read_only_with_their_progress(version, client, django_user_model):
    job = candidate_job_create(version=version, split="test", limit=4, enqueue=False)
    CandidateJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, progress=42.0)
    client.force_login(django_user_model.objects.create_superuser("root", password="x"))
    listing = client.get("/admin/policy/candidatejob/").content.decode()
    assert '<progress max="100" value="42.0"></progress> 42%' in listing
    assert "test (first 4)" in listing
    page = client.get(f"/admin/policy/candidatejob/{job.pk}/change/").content.decode()
    assert "<progress" in page and 'name="_save"' not in page
    assert client.get("/admin/policy/candidatejob/add/").status_code == 403
    assert client.post(f"/admin/policy/candidatejob/{job.pk}/delete/").status_code == 403


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_gpu_worker_runs_the_job_through_redis(version):
    """A Celery worker process on the gpu queue takes the job from Redis and stores the
    candidates in the test database; the web side only enqueued it."""
    require_real_services()
    assert django_settings.CELERY_BROKER_URL.startswith("redis://")
    with celery_app.connection_for_write() as conn:
        conn.default_channel.queue_purge(Queue.GPU)  # nothing left over from earlier runs
    worker = start_worker(Queue.GPU, worker_env(dict(os.environ)))
    try:
        # when: autocommit here, so on_commit sends at once
        job = candidate_job_create(version=version, split="test", limit=2, k=2)
        wait_until_finished(job, worker, FINISHED, timeout=240)
    finally:
        output = stop(worker)
    # then
    assert job.status == JobStatus.SUCCEEDED, output[-3000:]
    assert (job.episodes_total, job.candidates_created, job.progress) == (2, 2 * 2 + 2, 100.0)
    assert Candidate.objects.filter(source="policy", policy_version=version).count() == 4
    assert "policy.tasks.generate_candidates_task" in output
