"""What items a campaign gets: candidate pools per episode, pairs or groups, gold and catch
probes, and the clips they need (queued for rendering). Called by ``campaign_create`` once the
campaign's settings are checked."""

from __future__ import annotations

import itertools
import logging
import random
from dataclasses import dataclass, field

import numpy as np

from annotation.models import Campaign, Item, ItemMember, Probe, Protocol
from annotation.services.campaign_settings import MAX_GROUP, refuse
from policy.models import Candidate, CandidateSource, Dataset, Episode, PolicyVersion
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
        raise refuse("episodes", "no episode has candidates from every source; generate "
                                 "them first (manage.py generate_candidates)")
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
