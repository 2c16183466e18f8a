"""Making campaigns: candidate pools per episode, items, probes, clips, invites, status."""

from __future__ import annotations

import itertools
import logging
import math
import random
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from django.db import transaction
from django.utils import timezone

from annotation.models import (
    CRITERIA,
    Campaign,
    CampaignStatus,
    Invite,
    Item,
    ItemMember,
    Probe,
    Protocol,
)
from policy.models import Candidate, CandidateSource, Dataset, Episode, PolicyVersion
from policy.services.candidates import candidate_store_array
from rendering import blobs
from rendering.models import Clip, ClipKind, ClipStatus
from rendering.services import ClipRequestError, SpeakerInputs, clip_request

logger = logging.getLogger(__name__)

SOURCE_KINDS = ("policy", "ground_truth", "baseline")
MAX_GROUP = 8  # candidates on one screen


class CampaignError(ValueError):
    """A campaign cannot be made or changed as asked; the message names the field."""


@dataclass
class CampaignBuild:
    campaign: Campaign
    items: int = 0
    gold: int = 0
    catch: int = 0
    clips: int = 0
    skipped: list[str] = field(default_factory=list)  # "episode key: reason"


def _source_filter(source: dict, dataset: Dataset) -> tuple[dict, int]:
    """The Candidate filter for one source descriptor, and how many samples to take."""
    if not isinstance(source, dict) or source.get("kind") not in SOURCE_KINDS:
        raise CampaignError(f"sources: each source needs kind one of {', '.join(SOURCE_KINDS)}, "
                            f"got {source!r}")
    samples = source.get("samples", 1)
    if not isinstance(samples, int) or not 1 <= samples <= MAX_GROUP:
        raise CampaignError(f"sources: samples must be 1..{MAX_GROUP}, got {samples!r}")
    kind = source["kind"]
    if kind == "policy":
        name = source.get("version")
        version = PolicyVersion.objects.filter(name=name).first()
        if version is None:
            raise CampaignError(f"sources: no policy version named {name!r}")
        if version.dataset_id != dataset.pk:
            raise CampaignError(f"sources: {name} was trained on {version.dataset.name}, "
                                f"not {dataset.name}")
        return {"source": CandidateSource.POLICY, "policy_version": version}, samples
    if kind == "ground_truth":
        return {"source": CandidateSource.GROUND_TRUTH}, 1
    name = source.get("name")
    if not isinstance(name, str) or not name:
        raise CampaignError("sources: a baseline source needs a name")
    return {"source": CandidateSource.BASELINE, "baseline": name}, samples


def _validate(*, protocol: str, overlap: int, group_size: int, rates: dict[str, float],
              weights: dict, sources: list) -> None:
    if protocol not in Protocol.values:
        raise CampaignError(f"protocol: expected one of {', '.join(Protocol.values)}")
    if not 1 <= overlap <= 50:
        raise CampaignError(f"overlap: must be 1..50, got {overlap}")
    if protocol == Protocol.GROUP and not 2 <= group_size <= MAX_GROUP:
        raise CampaignError(f"group_size: must be 2..{MAX_GROUP}, got {group_size}")
    for name, rate in rates.items():
        if not (isinstance(rate, int | float) and math.isfinite(rate) and 0 <= rate <= 0.5):
            raise CampaignError(f"{name}: must be a fraction between 0 and 0.5, got {rate!r}")
    for k, w in (weights or {}).items():
        if k not in CRITERIA or not (
            isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w)
            and w >= 0
        ):
            raise CampaignError(f"criteria_weights: {k!r}={w!r} is not a known criterion with "
                                "a weight >= 0")
    if not isinstance(sources, list) or not sources:
        raise CampaignError("sources: at least one candidate source is required")


def _pools(dataset: Dataset, episodes: list[Episode], sources: list[dict]
           ) -> dict[int, list[Candidate]]:
    """episode id -> its candidates, one list entry per (source, sample), in source order."""
    filters = [_source_filter(s, dataset) for s in sources]
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


@transaction.atomic
def campaign_create(
    *,
    name: str,
    slug: str,
    dataset: Dataset,
    sources: list[dict],
    created_by=None,
    split: str = "test",
    episodes: list[Episode] | None = None,
    protocol: str = Protocol.PAIRWISE,
    group_size: int = 5,
    overlap: int = 3,
    target_items: int = 100,
    per_rater_limit: int = 50,
    gold_rate: float = 0.1,
    catch_rate: float = 0.05,
    repeat_rate: float = 0.05,
    seed: int = 0,
    **options: object,
) -> CampaignBuild:
    """Make a campaign in draft with its items and queue the clips they need.

    Episodes come from ``episodes`` or the dataset's ``split``; an episode joins only if every
    source has its candidates there (``skipped`` says which did not and why). Pairwise items are
    every pair within an episode's pool; group items are the pool (at most ``group_size``).
    Gold and catch items are made for a few extra episodes. Nothing is stored if any field is
    wrong (``CampaignError``).
    """
    _validate(protocol=protocol, overlap=overlap, group_size=group_size,
              rates={"gold_rate": gold_rate, "catch_rate": catch_rate,
                     "repeat_rate": repeat_rate},
              weights=options.get("criteria_weights", {}), sources=sources)
    for source in sources:
        _source_filter(source, dataset)  # CampaignError naming the bad source
    if Campaign.objects.filter(slug=slug).exists():
        raise CampaignError(f"slug: a campaign named {slug!r} exists already")
    allowed = {f.name for f in Campaign._meta.get_fields()}
    unknown = set(options) - allowed
    if unknown:
        raise CampaignError(f"unknown campaign option {sorted(unknown)[0]!r}")
    if episodes is None:
        episodes = list(dataset.episodes.filter(split=split).order_by("key"))
    if not episodes:
        raise CampaignError(f"episodes: the {split!r} split of {dataset.name} is empty")
    campaign = Campaign.objects.create(
        name=name, slug=slug, dataset=dataset, sources=sources, created_by=created_by,
        protocol=protocol, group_size=group_size, overlap=overlap, target_items=target_items,
        per_rater_limit=per_rater_limit, gold_rate=gold_rate, catch_rate=catch_rate,
        repeat_rate=repeat_rate, **options,
    )
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
        raise CampaignError("episodes: no episode has candidates from every source; generate "
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


def campaign_clip_ids(campaign: Campaign) -> set[int]:
    """Every clip the campaign's items need: candidates' and speakers'."""
    ids = set(ItemMember.objects.filter(item__campaign=campaign).values_list("clip_id", flat=True))
    ids |= set(Item.objects.filter(campaign=campaign).values_list("speaker_clip_id", flat=True))
    return ids


def campaign_clip_progress(campaign: Campaign) -> tuple[int, int, int]:
    """(succeeded, failed, total) over the clips the campaign's items need."""
    statuses = list(Clip.objects.filter(pk__in=campaign_clip_ids(campaign))
                    .values_list("status", flat=True))
    return (statuses.count(ClipStatus.SUCCEEDED), statuses.count(ClipStatus.FAILED),
            len(statuses))


@transaction.atomic
def campaign_set_status(*, campaign: Campaign, status: str) -> Campaign:
    """Start, pause, resume or close a campaign. It starts only when every clip is rendered."""
    if status not in CampaignStatus.values:
        raise CampaignError(f"status: expected one of {', '.join(CampaignStatus.values)}")
    campaign = Campaign.objects.select_for_update(no_key=True).get(pk=campaign.pk)
    if campaign.status == CampaignStatus.CLOSED and status != CampaignStatus.CLOSED:
        raise CampaignError("status: a closed campaign stays closed")
    if status == CampaignStatus.ACTIVE:
        done, failed, total = campaign_clip_progress(campaign)
        if total == 0:
            raise CampaignError("status: the campaign has no items")
        if done < total:
            raise CampaignError(f"status: {total - done} of {total} clips are not rendered yet"
                                + (f" ({failed} failed; retry them in the admin)" if failed
                                   else ""))
    campaign.status = status
    campaign.save(update_fields=["status"])
    return campaign


def invite_create(*, campaign: Campaign, created_by=None, label: str = "",
                  max_uses: int | None = None, expires_at: datetime | None = None) -> Invite:
    if max_uses is not None and max_uses < 1:
        raise CampaignError("max_uses: must be at least 1")
    if expires_at is not None and expires_at <= timezone.now():
        raise CampaignError("expires_at: must be in the future")
    return Invite.objects.create(campaign=campaign, created_by=created_by, label=label,
                                 max_uses=max_uses, expires_at=expires_at)
