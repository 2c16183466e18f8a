"""A campaign over a policy version without candidates: made at once as a draft that waits for its
candidate jobs; the worker that finishes the last job builds the items and queues their clips.

The jobs run here, in process (``candidate_job_run``, a tiny policy on the CPU); what would go to
the ``gpu`` and ``render`` workers is recorded instead of sent."""

import re
import threading
import time

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from annotation.models import CampaignSampling, Item, SamplingStatus
from annotation.services import campaign_items
from annotation.services.campaigns import (
    CampaignError,
    campaign_create,
    campaign_sampling_advance,
    campaign_sampling_retry,
    campaign_sampling_settle,
    campaign_set_status,
    campaign_update,
)
from policy.models import Candidate, CandidateJob, Dataset, JobStatus, PolicyVersion
from policy.services import candidate_jobs
from policy.services.candidate_jobs import JOB_BASELINES, candidate_job_create, candidate_job_run
from policy.services.synthetic import synthetic_corpus_create
from policy.signals import candidate_job_finished
from policy.tasks import generate_candidates_task
from rendering import blobs
from rendering.models import Clip, ClipStatus
from rendering.tasks import render_clip_task
from tests.annotation.conftest import fake_render
from tests.policy.conftest import TINY, tiny_checkpoint  # noqa: F401 (a fixture, used by name)

pytestmark = pytest.mark.django_db

NO_PROBES = {"gold_rate": 0.0, "catch_rate": 0.0, "repeat_rate": 0.0}


@pytest.fixture
def syn(db) -> Dataset:
    """A synthetic corpus without a single candidate."""
    return synthetic_corpus_create(episodes=10, seed=5, name="syn").dataset


def make_version(dataset: Dataset, checkpoint: bytes, name: str) -> PolicyVersion:
    """A version registered from the tiny checkpoint; a second one gets the same weights in
    a file of its own (a version's checkpoint is unique)."""
    import io

    import torch

    from policy.ml.checkpoint import load_checkpoint

    if name != "tiny":
        state = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=True)
        state["extra"] = {**state["extra"], "label": name}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        checkpoint = buffer.getvalue()
    sha, _ = blobs.put_blob(checkpoint, "pt")
    tokenizer = load_checkpoint(blobs.default_storage.path(blobs.blob_name(sha, "pt"))).tokenizer
    return PolicyVersion.objects.create(
        name=name, checkpoint_sha=sha, config=TINY, dataset=dataset,
        tokenizer={"layout": tokenizer.layout, "n_bins": tokenizer.n_bins,
                   "fingerprint": tokenizer.fingerprint()})


@pytest.fixture
def tiny(syn, tiny_checkpoint) -> PolicyVersion:  # noqa: F811 (the imported fixture)
    return make_version(syn, tiny_checkpoint, "tiny")


@pytest.fixture
def sent(monkeypatch) -> dict[str, list[int]]:
    """What would have gone to the workers once committed: candidate jobs (``gpu``) and clips
    (``render``)."""
    out: dict[str, list[int]] = {"gpu": [], "render": []}
    monkeypatch.setattr(generate_candidates_task, "delay", out["gpu"].append)
    monkeypatch.setattr(render_clip_task, "delay", out["render"].append)
    return out


def create(dataset: Dataset, sources: list[dict], slug: str = "study", **kw):
    options = {"name": "Study", "slug": slug, "dataset": dataset, "sources": sources,
               "episodes": list(dataset.episodes.order_by("key")[:4]), "overlap": 2,
               **NO_PROBES, **kw}
    return campaign_create(**options)


def policy(version: PolicyVersion, samples: int = 2) -> dict:
    return {"kind": "policy", "version": version.name, "samples": samples}


GT = {"kind": "ground_truth"}


def run(job_id: int, capture) -> CandidateJob | None:
    """The ``gpu`` worker's part: run the job; once committed, the signal's receivers run."""
    with capture(execute=True):
        return candidate_job_run(job_id=job_id)


def researcher_client(researcher) -> Client:
    client = Client()
    client.force_login(researcher)
    return client


# -- making the campaign ----------------------------------------------------------------------


def test_a_campaign_over_a_version_without_candidates_records_its_jobs_and_no_items(
        tiny, sent, django_capture_on_commit_callbacks):
    episodes = list(tiny.dataset.episodes.order_by("key")[:4])
    # when
    with django_capture_on_commit_callbacks(execute=True):
        build = create(tiny.dataset, [policy(tiny, 2), GT], seed=7)
    # then: a draft without items, waiting for one job of k=2 over the four episodes
    campaign = build.campaign
    assert (build.items, campaign.status, Item.objects.count()) == (0, "draft", 0)
    (job,) = build.jobs
    assert sent["gpu"] == [job.pk] and sent["render"] == []
    assert (job.version, job.k, job.seed, job.status) == (tiny, 2, 7, JobStatus.QUEUED)
    assert sorted(job.episode_ids) == sorted(e.pk for e in episodes)
    sampling = CampaignSampling.objects.get(campaign=campaign)
    assert sampling.status == SamplingStatus.SAMPLING and sampling.seed == 7
    assert sorted(sampling.episode_ids) == sorted(e.pk for e in episodes)
    assert list(sampling.jobs.all()) == [job]
    # the ground truth needs no sampling: it is there already, the policy's samples are not
    assert Candidate.objects.filter(source="ground_truth").count() == 4
    assert not Candidate.objects.filter(source="policy").exists()


def test_only_the_episodes_the_campaign_needs_are_sampled(tiny, sent):
    # given: 2 samples + the ground truth give 3 pairs per episode
    episodes = list(tiny.dataset.episodes.order_by("key"))
    # when: 3 items are asked for
    build = create(tiny.dataset, [policy(tiny, 2), GT], episodes=episodes, target_items=3)
    # then: one episode gives them, and one more is sampled in case the build skips one
    (job,) = build.jobs
    assert len(job.episode_ids) == 2
    assert CampaignSampling.objects.get().episode_ids == job.episode_ids


def test_a_baseline_the_samplers_know_is_made_by_the_first_versions_job(
        tiny, tiny_checkpoint, sent):  # noqa: F811
    other = make_version(tiny.dataset, tiny_checkpoint, "tiny-2")
    build = create(tiny.dataset, [policy(tiny, 1), policy(other, 1),
                                  {"kind": "baseline", "name": "mirror"}])
    first, second = build.jobs
    assert (first.version, first.baselines, first.ground_truth) == (tiny, ["mirror"], False)
    assert (second.version, second.baselines) == (other, [])


def test_the_job_baselines_are_the_samplers_baselines():
    from policy.ml.baselines import BASELINES

    assert set(JOB_BASELINES) == set(BASELINES) - {"ground_truth"}


def test_a_version_that_has_its_candidates_builds_at_once(tiny, sent,
                                                          django_capture_on_commit_callbacks):
    # given: the version sampled beforehand (k=2), as the command or a round does
    episodes = list(tiny.dataset.episodes.order_by("key")[:4])
    candidate_job_run(job_id=candidate_job_create(version=tiny, episodes=episodes, k=2,
                                                  enqueue=False).pk)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        build = create(tiny.dataset, [policy(tiny, 2), GT])
    # then: items and clips now, nothing sampled, nothing waited for
    assert build.jobs == [] and sent["gpu"] == []
    assert build.items == 3 * 4 == Item.objects.count()
    assert len(sent["render"]) == Clip.objects.count() > 0
    assert not CampaignSampling.objects.exists()
    assert CandidateJob.objects.count() == 1


# -- the jobs finish ------------------------------------------------------------------------


def test_running_the_jobs_builds_the_items_once_and_queues_their_clips(
        tiny, tiny_checkpoint, sent, django_capture_on_commit_callbacks):  # noqa: F811
    other = make_version(tiny.dataset, tiny_checkpoint, "tiny-2")
    with django_capture_on_commit_callbacks(execute=True):
        build = create(tiny.dataset, [policy(tiny, 1), policy(other, 1), GT])
    first, second = build.jobs
    # when: the first job finishes, the campaign still waits for the second
    run(first.pk, django_capture_on_commit_callbacks)
    assert Item.objects.count() == 0 and sent["render"] == []
    assert CampaignSampling.objects.get().status == SamplingStatus.SAMPLING
    # when: the second finishes, its worker builds the items and queues their clips
    done = run(second.pk, django_capture_on_commit_callbacks)
    # then
    assert done.status == JobStatus.SUCCEEDED
    sampling = CampaignSampling.objects.get()
    assert sampling.status == SamplingStatus.DONE and sampling.error == ""
    items = sorted(Item.objects.values_list("pk", flat=True))
    assert len(items) == 3 * 4 == sampling.built["items"]  # 3 candidates, 3 pairs each
    clips = set(Clip.objects.values_list("pk", flat=True))
    assert set(sent["render"]) == clips
    assert set(Clip.objects.values_list("status", flat=True)) == {ClipStatus.QUEUED}
    # and news of either job again (a redelivery, a second receiver) builds nothing more
    for job in (first, second):
        assert run(job.pk, django_capture_on_commit_callbacks) is None
        campaign_sampling_advance(job_id=job.pk)
    campaign_sampling_settle(campaign_id=build.campaign.pk)
    assert sorted(Item.objects.values_list("pk", flat=True)) == items
    assert set(Clip.objects.values_list("pk", flat=True)) == clips
    # and once the clips are rendered it starts
    fake_render(build.campaign)
    assert campaign_set_status(campaign=build.campaign, status="active").status == "active"


@pytest.mark.django_db(transaction=True)
def test_two_jobs_finishing_at_once_build_the_items_once(tiny, monkeypatch):
    # given: two jobs that have both succeeded, their news not yet handled
    monkeypatch.setattr(generate_candidates_task, "delay", lambda job_id: None)
    monkeypatch.setattr(render_clip_task, "delay", lambda clip_id: None)
    build = create(tiny.dataset, [policy(tiny, 1), GT], episodes=list(
        tiny.dataset.episodes.order_by("key")[:2]))
    (job,) = build.jobs
    assert candidate_job_finished.disconnect(dispatch_uid="annotation.campaign_sampling")
    try:
        candidate_job_run(job_id=job.pk)
    finally:
        from annotation.receivers import on_candidate_job_finished

        candidate_job_finished.connect(on_candidate_job_finished,
                                       dispatch_uid="annotation.campaign_sampling")
    calls: list[int] = []
    build_items = campaign_items.campaign_items_build

    def slow_build(**kwargs):
        calls.append(1)
        time.sleep(0.5)  # the other worker arrives while this one builds
        return build_items(**kwargs)

    monkeypatch.setattr(campaign_items, "campaign_items_build", slow_build)
    start = threading.Barrier(2)

    def worker() -> None:
        try:
            start.wait()
            campaign_sampling_advance(job_id=job.pk)
        finally:
            connection.close()

    # when: two workers hear of it at the same moment
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # then: one built, the other found it built
    assert calls == [1]
    assert Item.objects.count() == 2 == CampaignSampling.objects.get().built["items"]


# -- failing, retrying ------------------------------------------------------------------------


def test_a_failed_job_is_shown_blocks_the_start_and_can_be_retried(
        tiny, sent, researcher, monkeypatch, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        build = create(tiny.dataset, [policy(tiny, 2), GT])
    build.campaign.researchers.add(researcher)
    (job,) = build.jobs

    def out_of_memory(**kwargs):
        raise ValueError("CUDA out of memory on the gpu worker")

    # when: the job fails
    with monkeypatch.context() as m:
        m.setattr(candidate_jobs, "candidates_generate", out_of_memory)
        assert run(job.pk, django_capture_on_commit_callbacks).status == JobStatus.FAILED
    # then: the campaign says why, has no items and cannot start
    sampling = CampaignSampling.objects.get()
    assert sampling.status == SamplingStatus.FAILED
    assert sampling.error == (f"sampling tiny failed (candidate job #{job.pk}): CUDA out of "
                              "memory on the gpu worker")
    assert Item.objects.count() == 0
    with pytest.raises(CampaignError, match=r"status: sampling tiny failed .* \(retry it"):
        campaign_set_status(campaign=build.campaign, status="active")
    client = researcher_client(researcher)
    url = reverse("annotation:campaign", args=[build.campaign.slug])
    page = client.get(url).content.decode()
    assert "CUDA out of memory on the gpu worker" in page
    assert 'value="retry-sampling"' in page and "Retry the failed jobs" in page
    assert 'http-equiv="refresh"' not in page  # nothing moves until someone retries
    # when: retried from the page
    with django_capture_on_commit_callbacks(execute=True):
        reply = client.post(url, {"action": "retry-sampling"})
    assert reply.status_code == 302
    # then: a new job with the same settings is queued in place of the failed one
    again = CampaignSampling.objects.get().jobs.get()
    assert again.pk != job.pk and sent["gpu"] == [job.pk, again.pk]
    assert (again.version, again.k, again.seed, again.episode_ids) == (
        tiny, job.k, job.seed, job.episode_ids)
    assert CampaignSampling.objects.get().status == SamplingStatus.SAMPLING
    with pytest.raises(CampaignError, match="nothing to retry"):
        campaign_sampling_retry(campaign=build.campaign)
    # and when it succeeds the items are built
    run(again.pk, django_capture_on_commit_callbacks)
    assert CampaignSampling.objects.get().status == SamplingStatus.DONE
    assert Item.objects.count() == 3 * 4


def test_a_build_that_fails_after_the_jobs_is_recorded_and_retried(
        tiny, sent, monkeypatch, django_capture_on_commit_callbacks):
    build = create(tiny.dataset, [policy(tiny, 1), GT])
    (job,) = build.jobs

    def broken(**kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:
        m.setattr(campaign_items, "campaign_items_build", broken)
        run(job.pk, django_capture_on_commit_callbacks)
    sampling = CampaignSampling.objects.get()
    assert sampling.status == SamplingStatus.FAILED
    assert sampling.error == "building the items: internal error: RuntimeError('disk full')"
    # when: retried, nothing is sampled again and the items are built at once
    sampling = campaign_sampling_retry(campaign=build.campaign)
    assert sampling.status == SamplingStatus.DONE and Item.objects.count() == 4
    assert CandidateJob.objects.count() == 1


# -- the page and the rules while sampling ----------------------------------------------------


def test_the_page_shows_each_jobs_progress_and_refuses_to_start(
        tiny, sent, researcher):
    build = create(tiny.dataset, [policy(tiny, 2), GT])
    build.campaign.researchers.add(researcher)
    (job,) = build.jobs
    CandidateJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, progress=42.5)
    client = researcher_client(researcher)
    url = reverse("annotation:campaign", args=[build.campaign.slug])
    # when
    page = client.get(url).content.decode()
    # then: the job's bar, a page that reloads itself, a start button that says why not
    assert "Sampling candidates" in page
    assert f"<td>#{job.pk}</td><td>tiny</td><td>2 × 4</td>" in page
    assert 'style="width: 42.5%"' in page and "running · 42.5 %" in page
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "Cannot start yet: candidates are still being sampled (0 of 1 jobs done)" in page
    assert 'value="active" disabled' in page
    # and starting anyway is refused with the reason
    reply = client.post(url, {"action": "status", "status": "active"}, follow=True)
    assert "candidates are still being sampled" in reply.content.decode()
    build.campaign.refresh_from_db()
    assert build.campaign.status == "draft"
    api = client.post(reverse("annotation:api-campaign-status", args=[build.campaign.slug]),
                      {"status": "active"}, content_type="application/json")
    assert api.status_code == 400 and "candidates are still being sampled" in api.json()["detail"]
    progress = client.get(reverse("annotation:api-campaign-progress",
                                  args=[build.campaign.slug])).json()
    assert progress["sampling"]["status"] == "sampling"
    assert progress["sampling"]["jobs"][0]["percent"] == 42.5


def test_starting_while_sampling_is_refused(tiny, sent):
    campaign = create(tiny.dataset, [policy(tiny, 2), GT]).campaign
    with pytest.raises(CampaignError, match="status: candidates are still being sampled"):
        campaign_set_status(campaign=campaign, status="active")
    # and the design the jobs were asked for stays as it is
    with pytest.raises(CampaignError, match="sources: candidates are sampled"):
        campaign_update(campaign=campaign, sources=[policy(tiny, 3), GT])
    campaign_update(campaign=campaign, name="renamed")
    assert campaign_set_status(campaign=campaign, status="closed").status == "closed"


def test_the_page_makes_a_campaign_that_waits_for_candidates(tiny, sent, researcher,
                                                             django_capture_on_commit_callbacks):
    client = researcher_client(researcher)
    # given: a link "new campaign from this version"
    form = client.get(reverse("annotation:campaign-new") + "?version=tiny").content.decode()
    assert re.search(r'<input type="checkbox" name="sources" value="policy:tiny"[^>]* checked',
                     form)
    assert not re.search(r'value="ground_truth"[^>]* checked', form)
    assert '<option value="syn" selected>' in form
    assert "missing candidates are sampled" in form
    # when
    with django_capture_on_commit_callbacks(execute=True):
        reply = client.post(reverse("annotation:campaign-new"), {
            "name": "From tiny", "slug": "from-tiny", "dataset": "syn", "split": "train",
            "sources": ["policy:tiny", "ground_truth"], "samples": 2, "protocol": "pairwise",
            "group_size": 5, "overlap": 3, "target_items": 100, "per_rater_limit": 50,
            **NO_PROBES}, follow=True)
    # then
    page = reply.content.decode()
    assert reply.redirect_chain[-1][0] == reverse("annotation:campaign", args=["from-tiny"])
    assert "Sampling the missing candidates of tiny first (1 job on the gpu queue)" in page
    (job,) = CandidateJob.objects.all()
    assert sent["gpu"] == [job.pk] and Item.objects.count() == 0


def test_the_api_makes_a_campaign_that_waits_for_candidates(tiny, sent, researcher):
    client = researcher_client(researcher)
    reply = client.post(reverse("annotation:api-campaigns"), {
        "name": "API", "slug": "api", "dataset": "syn", "split": "train",
        "sources": [policy(tiny, 1), GT],
        **NO_PROBES}, content_type="application/json")
    assert reply.status_code == 201, reply.content
    built = reply.json()["built"]
    (job,) = CandidateJob.objects.all()
    assert built["items"] == 0 and built["sampling_jobs"] == [job.pk]
