"""What items a campaign gets: candidate pools per episode, pairs or groups, gold and catch
probes, and the clips they need (queued for rendering). Called by ``campaign_create`` once the
campaign's settings are checked.

When candidates are missing, the campaign waits for them: ``sampling_plan`` says which to
sample, ``sampling_start`` queues the candidate jobs, and ``campaign_sampling_settle`` builds
the items once the jobs are done (called by the worker that finished the last one, through
``annotation.receivers``) or records why it cannot.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from dataclasses import dataclass, field

import numpy as np
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from annotation.models import (
    Campaign,
    CampaignSampling,
    CampaignStatus,
    Item,
    ItemMember,
    Probe,
    Protocol,
    SamplingStatus,
)
from annotation.services.campaign_settings import MAX_GROUP, CampaignError, refuse
from policy.models import (
    Candidate,
    CandidateJob,
    CandidateSource,
    Dataset,
    Episode,
    JobStatus,
    PolicyVersion,
)
from policy.services.candidate_jobs import (
    JOB_BASELINES,
    CandidateJobError,
    candidate_job_create,
)
from policy.services.candidates import candidate_store_array
from rendering import blobs
from rendering.models import Clip, ClipKind
from rendering.services import ClipRequestError, SpeakerInputs, clip_request

logger = logging.getLogger(__name__)

SOURCE_KINDS = ("policy", "ground_truth", "baseline")


@dataclass
class CampaignBuild:
    campaign: Campaign
    items: int = 0
    gold: int = 0
    catch: int = 0
    clips: int = 0
    skipped: list[str] = field(default_factory=list)  # "episode key: reason"
    # Candidate jobs queued first: the items are built when they finish (none: built now).
    jobs: list[CandidateJob] = field(default_factory=list)


@dataclass
class JobPlan:
    """One candidate job to ask for: ``k`` samples of ``version`` on ``episodes`` (and
    ``baselines`` there)."""

    version: PolicyVersion
    episodes: list[Episode]
    k: int
    baselines: list[str]


@dataclass
class SamplingPlan:
    episodes: list[Episode]  # what the items are built from once the jobs are done, in order
    jobs: list[JobPlan]


def source_filter(source: dict, dataset: Dataset) -> tuple[dict, int]:
    """The Candidate filter for one source descriptor, and how many samples to take."""
    if not isinstance(source, dict) or source.get("kind") not in SOURCE_KINDS:
        raise refuse("sources", f"each source needs kind one of {', '.join(SOURCE_KINDS)}, "
                                f"got {source!r}")
    samples = source.get("samples", 1)
    if not isinstance(samples, int) or not 1 <= samples <= MAX_GROUP:
        raise refuse("sources", f"samples must be 1..{MAX_GROUP}, got {samples!r}")
    kind = source["kind"]
    if kind == "policy":
        name = source.get("version")
        version = PolicyVersion.objects.filter(name=name).first()
        if version is None:
            raise refuse("sources", f"no policy version named {name!r}")
        if version.dataset_id != dataset.pk:
            raise refuse("sources", f"{name} was trained on {version.dataset.name}, "
                                    f"not {dataset.name}")
        return {"source": CandidateSource.POLICY, "policy_version": version}, samples
    if kind == "ground_truth":
        return {"source": CandidateSource.GROUND_TRUTH}, 1
    name = source.get("name")
    if not isinstance(name, str) or not name:
        raise refuse("sources", "a baseline source needs a name")
    return {"source": CandidateSource.BASELINE, "baseline": name}, samples


def _short(dataset: Dataset, episodes: list[Episode], sources: list[dict]
           ) -> list[tuple[dict, set[int]]]:
    """Per source: the ids of the episodes where it has fewer candidates than it takes."""
    out = []
    for source in sources:
        flt, samples = source_filter(source, dataset)
        have = dict(Candidate.objects.filter(episode__in=episodes, **flt).order_by()
                    .values("episode_id").annotate(n=Count("id")).values_list("episode_id", "n"))
        out.append((source, {ep.pk for ep in episodes if have.get(ep.pk, 0) < samples}))
    return out


def _items_per_episode(campaign: Campaign, sources: list[dict]) -> int:
    """Regular items one episode gives when every source has its candidates there."""
    pool = sum(1 if s["kind"] == "ground_truth" else s.get("samples", 1) for s in sources)
    if pool < 2:
        return 0
    return 1 if campaign.protocol == Protocol.GROUP else math.comb(pool, 2)


def sampling_plan(*, campaign: Campaign, episodes: list[Episode], seed: int
                  ) -> SamplingPlan | None:
    """The candidate jobs to run before the campaign's items can be built, or None to build
    them now (every episode has its candidates, or enough do for ``target_items``, or what is
    missing cannot be sampled).

    A policy version's missing samples are sampled (``k`` = the samples its source takes), and a
    baseline the samplers know (``JOB_BASELINES``) is made by the first version's job. Episodes
    that have everything come first; the rest are drawn with ``seed`` until there are enough
    for ``target_items`` (and a tenth more, for episodes a build skips), so a campaign of 100
    items over a split of thousands samples only the few dozen it uses. The ground truth is
    not planned: it needs no sampling (``campaign_create`` stores it).
    """
    dataset, sources = campaign.dataset, campaign.sources
    short = _short(dataset, episodes, sources)
    missing: set[int] = set().union(*(ids for _, ids in short))
    per_episode = _items_per_episode(campaign, sources)
    policy = [s for s in sources if s["kind"] == "policy"]
    if not missing or not per_episode:
        return None

    def can_sample(source: dict) -> bool:
        return source["kind"] == "policy" or (
            source["kind"] == "baseline" and source["name"] in JOB_BASELINES and bool(policy))

    unreachable: set[int] = set().union(*(ids for s, ids in short if not can_sample(s)))
    complete = [ep for ep in episodes if ep.pk not in missing]
    sampleable = [ep for ep in episodes if ep.pk in missing and ep.pk not in unreachable]
    needed = math.ceil(campaign.target_items / per_episode)
    needed += max(1, needed // 10)
    if not sampleable or len(complete) >= needed:
        return None
    random.Random(seed).shuffle(sampleable)
    chosen = complete + sampleable[: needed - len(complete)]
    ids = {ep.pk for ep in chosen}
    baselines = [(s["name"], got & ids) for s, got in short
                 if s["kind"] == "baseline" and got & ids]
    jobs = []
    for source, got in short:
        if source["kind"] != "policy":
            continue
        todo, names = got & ids, []
        if source is policy[0]:  # baselines depend on the corpus only: one job makes them
            names = [name for name, _ in baselines]
            todo = todo.union(*(b for _, b in baselines))
        if todo:
            flt, samples = source_filter(source, dataset)
            jobs.append(JobPlan(version=flt["policy_version"],
                                episodes=[ep for ep in chosen if ep.pk in todo],
                                k=samples, baselines=names))
    return SamplingPlan(episodes=chosen, jobs=jobs)


def _pools(dataset: Dataset, episodes: list[Episode], sources: list[dict]
           ) -> dict[int, list[Candidate]]:
    """episode id -> its candidates, one list entry per (source, sample), in source order."""
    filters = [source_filter(s, dataset) for s in sources]
    pools: dict[int, list[Candidate]] = {ep.pk: [] for ep in episodes}
    complete: dict[int, bool] = dict.fromkeys(pools, True)
    for flt, samples in filters:
        rows = (Candidate.objects.filter(episode__in=episodes, **flt).select_related("episode")
                .order_by("episode_id", "source_key"))
        by_episode: dict[int, list[Candidate]] = {}
        for c in rows:
            by_episode.setdefault(c.episode_id, []).append(c)
        for ep_id in pools:
            got = by_episode.get(ep_id, [])[:samples]
            if len(got) < samples:
                complete[ep_id] = False
            pools[ep_id].extend(got)
    return {k: v for k, v in pools.items() if complete[k] and v}


def _speaker_clip(ep: Episode, face_model: str, settings: dict) -> Clip:
    speaker = SpeakerInputs(
        audio_sha=ep.audio_sha, sample_rate=ep.audio_sample_rate, transcript=ep.transcript,
        video_sha=ep.video_sha, video_ext=ep.video_ext,
    )
    if ep.video_sha:
        return clip_request(face_model=face_model, fps=ep.fps, kind=ClipKind.SPEAKER,
                            speaker=speaker, settings=settings or None)
    if not ep.speaker_sha:
        raise ClipRequestError("the episode has neither a speaker video nor speaker coefficients")
    return clip_request(face_model=face_model, fps=ep.fps, sequence_sha=ep.speaker_sha,
                        kind=ClipKind.SPEAKER, speaker=speaker, settings=settings or None)


def _wrong_answer(ep: Episode, face_model: str, gt: Candidate, rng: np.random.Generator
                  ) -> Candidate:
    """A clearly wrong response for a gold item: the ground truth with the wrong valence where
    the episode's context is known (the synthetic corpus), otherwise frozen on its mean."""
    from policy.oracle import EpisodeContext, wrong_response

    listener = blobs.load_array(gt.array_sha)
    kind = "frozen"
    if face_model == "builtin" and ep.meta.get("sentences"):
        ctx = EpisodeContext.from_meta(ep.meta, fps=ep.fps, n_frames=ep.n_frames)
        kind = "valence_swap"
        wrong = wrong_response(listener, ctx, kind, rng)
    else:
        wrong = np.repeat(listener.mean(0, keepdims=True), len(listener), axis=0)
    return candidate_store_array(episode=ep, baseline=f"wrong-{kind}", array=wrong)


def campaign_items_build(*, campaign: Campaign, episodes: list[Episode], seed: int
                         ) -> CampaignBuild:
    """Make the items of a new campaign from its settings. Pairwise items are every pair within
    an episode's pool; group items are the pool (at most ``group_size``). Gold and catch items
    are made for a few extra episodes. An episode joins only if every source has its
    candidates there (``skipped`` says which did not and why)."""
    dataset, sources = campaign.dataset, campaign.sources
    protocol, group_size = campaign.protocol, campaign.group_size
    target_items = campaign.target_items
    gold_rate, catch_rate = campaign.gold_rate, campaign.catch_rate
    build = CampaignBuild(campaign)
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    pools = _pools(dataset, episodes, sources)
    for ep in episodes:
        if ep.pk not in pools:
            build.skipped.append(f"{ep.key}: a source has no candidate for it")
        elif len(pools[ep.pk]) < 2:
            build.skipped.append(f"{ep.key}: fewer than two candidates to compare")
            del pools[ep.pk]
    usable = [ep for ep in episodes if ep.pk in pools]
    if not usable:
        raise refuse("episodes", "no episode has candidates from every source (missing "
                                 "ones are sampled for policy versions and the baselines "
                                 f"{', '.join(JOB_BASELINES)}; store other baselines first)")
    rng.shuffle(usable)

    clips: dict[int, Clip] = {}  # candidate id -> clip
    settings = campaign.render_settings or None

    def clip_for(c: Candidate) -> Clip:
        if c.pk not in clips:
            clips[c.pk] = clip_request(face_model=dataset.face_model, fps=c.episode.fps,
                                       sequence_sha=c.array_sha, settings=settings)
        return clips[c.pk]

    def add_item(ep: Episode, speaker: Clip, members: list[Candidate], probe: str) -> None:
        item = Item.objects.create(campaign=campaign, episode=ep, probe=probe,
                                   speaker_clip=speaker, size=len(members),
                                   shuffle=rng.randrange(2**31))
        ItemMember.objects.bulk_create([
            ItemMember(item=item, slot=i, candidate=c, clip=clip_for(c))
            for i, c in enumerate(members)
        ])

    n_probe_eps = 0
    if protocol == Protocol.PAIRWISE and (gold_rate > 0 or catch_rate > 0):
        n_probe_eps = max(2, min(len(usable) // 4, 10))
    regular_eps, probe_eps = usable, usable[:n_probe_eps]
    for ep in regular_eps:
        if build.items >= target_items:
            break
        try:
            speaker = _speaker_clip(ep, dataset.face_model, campaign.render_settings)
        except ClipRequestError as exc:
            build.skipped.append(f"{ep.key}: speaker clip: {exc}")
            continue
        pool = pools[ep.pk]
        if protocol == Protocol.GROUP:
            groups = [pool[:group_size]]
        else:
            groups = [list(p) for p in itertools.combinations(pool, 2)]
            rng.shuffle(groups)
        for members in groups[: target_items - build.items]:
            add_item(ep, speaker, members, Probe.NONE)
            build.items += 1
    for ep in probe_eps:
        speaker = _speaker_clip(ep, dataset.face_model, campaign.render_settings)
        gt = Candidate.objects.filter(episode=ep, source=CandidateSource.GROUND_TRUTH).first()
        if gold_rate > 0 and gt is not None:
            wrong = _wrong_answer(ep, dataset.face_model, gt, nprng)
            add_item(ep, speaker, [gt, wrong], Probe.GOLD)
            build.gold += 1
        if catch_rate > 0:
            same = pools[ep.pk][-1]
            add_item(ep, speaker, [same, same], Probe.CATCH)
            build.catch += 1
    build.clips = len(clips)
    logger.info("campaign %s: %d items, %d gold, %d catch, %d candidate clips, %d skipped",
                campaign.slug, build.items, build.gold, build.catch, build.clips,
                len(build.skipped))
    return build


# -- campaigns waiting for candidates -------------------------------------------------------

def sampling_start(*, campaign: Campaign, plan: SamplingPlan, seed: int,
                   user: AbstractBaseUser | None) -> CampaignBuild:
    """Record what a new campaign waits for and queue its candidate jobs (on the ``gpu``
    workers once the caller's transaction commits)."""
    sampling = CampaignSampling.objects.create(
        campaign=campaign, episode_ids=[ep.pk for ep in plan.episodes], seed=seed)
    jobs = []
    for job in plan.jobs:
        try:
            jobs.append(candidate_job_create(
                version=job.version, episodes=job.episodes, k=job.k, seed=seed,
                ground_truth=False,  # stored by campaign_create: it needs no sampling
                baselines=job.baselines, user=user))
        except CandidateJobError as exc:
            raise refuse("sources", f"sampling {job.version.name}: {exc}") from None
    sampling.jobs.set(jobs)
    logger.info("campaign %s: waits for candidate jobs %s over %d episodes", campaign.slug,
                ", ".join(f"#{j.pk} ({j.version.name}, k={j.k})" for j in jobs),
                len(plan.episodes))
    return CampaignBuild(campaign, jobs=jobs)


def campaign_sampling_advance(*, job_id: int) -> None:
    """A candidate job finished: settle every campaign waiting for it. Called in the process
    that ran the job, after it committed (``annotation.receivers``)."""
    waiting = list(CampaignSampling.objects.filter(jobs=job_id, status=SamplingStatus.SAMPLING)
                   .values_list("campaign_id", flat=True))
    for campaign_id in waiting:
        try:
            campaign_sampling_settle(campaign_id=campaign_id)
        except Exception as exc:
            # Rolled back whole; recorded so the page shows it and offers to try again,
            # rather than waiting for jobs that have all finished.
            logger.exception("campaign #%s: building the items after job %s failed",
                             campaign_id, job_id)
            CampaignSampling.objects.filter(
                campaign_id=campaign_id, status=SamplingStatus.SAMPLING).update(
                status=SamplingStatus.FAILED, finished_at=timezone.now(),
                error=f"building the items: internal error: {exc!r}")


@transaction.atomic
def campaign_sampling_settle(*, campaign_id: int) -> CampaignSampling | None:
    """Build the items of a campaign whose candidate jobs have all succeeded and queue their
    clips, or record why not (a job failed). While a job is queued or running it changes
    nothing. Under the campaign's row lock: of two jobs finishing at once, one builds and the
    other finds it built."""
    campaign = Campaign.objects.select_for_update(no_key=True).filter(pk=campaign_id).first()
    if campaign is None:
        return None  # deleted while its candidates were sampled
    sampling = CampaignSampling.objects.filter(campaign=campaign).first()
    if sampling is None or sampling.status != SamplingStatus.SAMPLING:
        return sampling
    return _settle(campaign, sampling)


def _settle(campaign: Campaign, sampling: CampaignSampling) -> CampaignSampling:
    """``campaign_sampling_settle`` once the row is locked and the sampling is running."""
    jobs = list(sampling.jobs.select_related("version").order_by("pk"))
    failed = [j for j in jobs if j.status == JobStatus.FAILED]
    if not failed and any(j.status != JobStatus.SUCCEEDED for j in jobs):
        return sampling
    if failed:
        sampling.status = SamplingStatus.FAILED
        sampling.error = "; ".join(f"sampling {j.version.name} failed (candidate job #{j.pk}): "
                                   f"{j.error}" for j in failed)
    elif campaign.status == CampaignStatus.CLOSED:
        sampling.status = SamplingStatus.FAILED
        sampling.error = "the campaign was closed before its candidates were sampled; no " \
                         "items were built"
    else:
        by_id = Episode.objects.in_bulk(sampling.episode_ids)
        episodes = [by_id[i] for i in sampling.episode_ids if i in by_id]
        try:
            with transaction.atomic():  # a refused build leaves none of its items
                build = campaign_items_build(campaign=campaign, episodes=episodes,
                                             seed=sampling.seed)
        except CampaignError as exc:
            sampling.status = SamplingStatus.FAILED
            sampling.error = f"building the items: {exc}"
        else:
            sampling.status, sampling.error = SamplingStatus.DONE, ""
            sampling.built = {"items": build.items, "gold": build.gold, "catch": build.catch,
                              "clips": build.clips, "skipped": build.skipped[:50]}
    sampling.finished_at = timezone.now()
    sampling.save(update_fields=["status", "error", "built", "finished_at"])
    if sampling.status == SamplingStatus.DONE:
        logger.info("campaign %s: candidates sampled, %d items built", campaign.slug,
                    sampling.built["items"])
    else:
        logger.warning("campaign %s: %s", campaign.slug, sampling.error)
    return sampling


@transaction.atomic
def campaign_sampling_retry(*, campaign: Campaign, user: AbstractBaseUser | None = None
                            ) -> CampaignSampling:
    """Ask again for the candidate jobs that failed: new jobs with the same settings, which
    sample only what the failed ones did not store. Then settle at once, so a campaign whose
    jobs have all succeeded (its build was refused, or the news of its last job was lost) is
    built now."""
    campaign = Campaign.objects.select_for_update(no_key=True).filter(pk=campaign.pk).first()
    if campaign is None:
        raise CampaignError("the campaign no longer exists")
    sampling = CampaignSampling.objects.filter(campaign=campaign).first()
    if sampling is None or sampling.status == SamplingStatus.DONE:
        raise refuse("sampling", "the campaign waits for no candidates")
    if campaign.status == CampaignStatus.CLOSED:
        raise refuse("status", "a closed campaign stays closed")
    jobs = list(sampling.jobs.select_related("version").order_by("pk"))
    failed = [j for j in jobs if j.status == JobStatus.FAILED]
    running = [j for j in jobs if j.status in (JobStatus.QUEUED, JobStatus.RUNNING)]
    if not failed and running:
        raise refuse("sampling", f"{len(running)} of {len(jobs)} candidate jobs are still "
                                 "queued or running, and none failed: nothing to retry")
    for job in failed:
        try:
            again = candidate_job_create(
                version=job.version, episodes=list(Episode.objects.filter(
                    pk__in=job.episode_ids)), k=job.k, temperature=job.temperature,
                top_p=job.top_p, seed=job.seed, ground_truth=job.ground_truth,
                baselines=job.baselines, user=user)
        except CandidateJobError as exc:
            raise refuse("sampling", f"cannot sample {job.version.name} again: {exc}") from None
        sampling.jobs.remove(job)
        sampling.jobs.add(again)
        logger.info("campaign %s: candidate job #%s asked again as #%s", campaign.slug, job.pk,
                    again.pk)
    sampling.status, sampling.error, sampling.finished_at = SamplingStatus.SAMPLING, "", None
    sampling.save(update_fields=["status", "error", "finished_at"])
    return _settle(campaign, sampling)


def campaign_sampling_progress(campaign: Campaign) -> dict | None:
    """The candidate jobs a campaign waits for (or waited for), each with its progress; None
    for a campaign built from candidates that existed."""
    sampling = CampaignSampling.objects.filter(campaign=campaign).first()
    if sampling is None:
        return None
    jobs = [{"id": j.pk, "version": j.version.name, "status": j.status, "k": j.k,
             "episodes": len(j.episode_ids), "percent": round(j.progress, 1), "error": j.error}
            for j in sampling.jobs.select_related("version").order_by("pk")]
    moving = any(j["status"] in (JobStatus.QUEUED, JobStatus.RUNNING) for j in jobs)
    return {"status": sampling.status, "error": sampling.error,
            "episodes": len(sampling.episode_ids), "jobs": jobs,
            "jobs_done": sum(j["status"] == JobStatus.SUCCEEDED for j in jobs),
            "built": sampling.built,
            # what campaign_sampling_retry would not refuse
            "can_retry": sampling.status == SamplingStatus.FAILED
            or (sampling.status == SamplingStatus.SAMPLING and not moving)}
