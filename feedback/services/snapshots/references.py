"""What the judgments refer to, loaded for ``export.Refs``, with every sequence copied
into the snapshot as it is loaded."""

from __future__ import annotations

import hashlib
import json
from array import array
from pathlib import Path

import numpy as np
import pyarrow as pa
from django.core.files.storage import FileSystemStorage, default_storage
from django.db.models import Q, QuerySet

from annotation.models import Campaign, Item, ItemMember, Judgment
from feedback import export
from policy.models import Candidate, Episode
from rendering.blobs import blob_name
from rendering.models import Clip

from .filters import Filters, SnapshotError, _label, rater_statuses


class _References:
    """Builds ``export.Refs``: what the judgments refer to, loaded once by semi-joins on the
    filtered judgments (memory grows with items and candidates, not with judgments), and again
    for anything a chunk names that was stored after (a judgment committed late). Each
    sequence is copied into the snapshot as it is loaded."""

    def __init__(self, f: Filters, temp: Path, campaigns: list[Campaign],
                 raters: dict[tuple[int, int], tuple[str, str]]) -> None:
        self.f, self.temp = f, temp
        self.arrays: set[str] = set()
        self.versions: set[str] = set()
        self._settings: dict[str, str] = {}
        self.late_raters = False
        self.refs = export.Refs(
            campaigns=export.Lookup([c.pk for c in campaigns],
                                    {"slug": [c.slug for c in campaigns],
                                     "protocol": [c.protocol for c in campaigns]},
                                    export.CAMPAIGN_TYPES),
            weights={c.pk: c.weights for c in campaigns},
            raters=self._raters(raters), episodes=self._episodes(Episode.objects.none()),
            candidates=self._candidates(Candidate.objects.none()),
            clips=self._clips(Clip.objects.none()), members=export.Members.empty(),
            selected=frozenset(f.sources) if f.sources else None)

    def load(self, qs: QuerySet[Judgment]) -> None:
        """Everything the judgments of ``qs`` refer to."""
        items = qs.order_by().values("item_id")
        members = ItemMember.objects.filter(item_id__in=items)
        self.refs.members = self._members(items)
        self.refs.candidates = self._candidates(Candidate.objects.filter(
            pk__in=members.values("candidate_id")))
        self.refs.episodes = self._episodes(Episode.objects.filter(
            pk__in=Item.objects.filter(pk__in=items).values("episode_id")))
        self.refs.clips = self._clips(Clip.objects.filter(
            Q(pk__in=members.values("clip_id"))
            | Q(pk__in=Item.objects.filter(pk__in=items).values("speaker_clip_id"))))

    def ensure(self, c: dict[str, pa.Array]) -> None:
        """Load what a chunk names and was not loaded yet: only a judgment stored after
        ``load`` (committed late, with an id below the bound) can name a new item or rater."""
        r = self.refs
        if len(new := r.members.missing(export.ints(c["item_id"]))):
            r.members.extend(self._members(new.tolist()))
            rows, at = r.members.rows(new), r.members.position(new)
            if len(more := r.candidates.missing(r.members.candidate[rows])):
                r.candidates.extend(self._candidates(Candidate.objects.filter(
                    pk__in=more.tolist())))
            if len(more := r.episodes.missing(r.members.episode[at])):
                r.episodes.extend(self._episodes(Episode.objects.filter(pk__in=more.tolist())))
            clips = np.concatenate([r.members.clip[rows], r.members.speaker_clip[at]])
            if len(more := r.clips.missing(clips)):
                r.clips.extend(self._clips(Clip.objects.filter(pk__in=more.tolist())))
        campaign_ids = export.ints(c["campaign_id"])
        keys = export.rater_key(campaign_ids, export.ints(c["rater_id"]))
        if len(r.raters.missing(keys)):
            fresh = rater_statuses(np.unique(campaign_ids).tolist())
            held = set(r.raters.keys.tolist())
            r.raters.extend(self._raters({k: v for k, v in fresh.items()
                                          if int(export.rater_key(*k)) not in held}))
            self.late_raters = True

    def _array(self, sha: str, what: str) -> str:
        if sha not in self.arrays:
            name = blob_name(sha, "npy")
            try:
                if isinstance(default_storage, FileSystemStorage):
                    export.array_link(self.temp, sha, Path(default_storage.path(name)))
                else:
                    with default_storage.open(name, "rb") as fh:
                        export.array_put(self.temp, sha, fh)
            except FileNotFoundError:
                raise SnapshotError(f"{what}: its array {sha} is missing from storage "
                                    f"({name}); nothing was written") from None
            self.arrays.add(sha)
        return export.array_path(sha)

    @staticmethod
    def _raters(raters: dict[tuple[int, int], tuple[str, str]]) -> export.Lookup:
        keys = [int(export.rater_key(*k)) for k in raters]
        return export.Lookup(keys, {"pseudonym": [v[0] for v in raters.values()],
                                    "status": [v[1] for v in raters.values()]},
                             export.RATER_TYPES)

    @staticmethod
    def _members(items: QuerySet | list[int]) -> export.Members:
        """The items (a subquery of ids, or ids) with their members, read into arrays."""
        cols = [array("q") for _ in range(6)]
        for row in ItemMember.objects.filter(item_id__in=items).order_by(
                "item_id", "slot").values_list("item_id", "candidate_id", "clip_id").iterator(
                chunk_size=50_000):
            for col, value in zip(cols[:3], row, strict=True):
                col.append(value)
        for row in Item.objects.filter(pk__in=items).order_by("id").values_list(
                "id", "episode_id", "speaker_clip_id").iterator(chunk_size=50_000):
            for col, value in zip(cols[3:], row, strict=True):
                col.append(value)
        return export.Members(*(np.frombuffer(col, np.int64) for col in cols))

    def _candidates(self, qs: QuerySet[Candidate]) -> export.Lookup:
        cols: dict[str, list] = {name: [] for name in export.CANDIDATE_TYPES}
        ids = []
        for (cid, source, baseline, version, version_sha, seed, temperature, top_p, sha,
             key) in qs.order_by("id").values_list(
                "id", "source", "baseline", "policy_version__name",
                "policy_version__checkpoint_sha", "seed", "temperature", "top_p", "array_sha",
                "episode__key").iterator(chunk_size=10_000):
            label = _label(source, version, baseline)
            ids.append(cid)
            for name, value in (("source", label), ("version", version),
                                ("version_sha256", version_sha), ("seed", seed),
                                ("temperature", temperature), ("top_p", top_p),
                                ("array", self._array(sha, f"candidate #{cid} (episode {key}, "
                                                           f"{label})"))):
                cols[name].append(value)
            if version:
                self.versions.add(version)
        return export.Lookup(ids, cols, export.CANDIDATE_TYPES)

    def _episodes(self, qs: QuerySet[Episode]) -> export.Lookup:
        cols: dict[str, list] = {name: [] for name in export.EPISODE_TYPES}
        ids = []
        for eid, dataset, key, fps, speaker, transcript in qs.order_by("id").values_list(
                "id", "dataset__name", "key", "fps", "speaker_sha",
                "transcript").iterator(chunk_size=2_000):
            ids.append(eid)
            words = " ".join(str(w.get("word", "")) for w in transcript or []
                             if isinstance(w, dict))
            for name, value in (
                    ("dataset", dataset), ("key", key), ("fps", float(fps)),
                    ("speaker_array", self._array(speaker, f"episode {dataset}/{key} (speaker)")
                     if speaker else None), ("transcript", words),
                    ("split", export.episode_split(dataset, key, self.f.test_fraction))):
                cols[name].append(value)
        return export.Lookup(ids, cols, export.EPISODE_TYPES)

    def _clips(self, qs: QuerySet[Clip]) -> export.Lookup:
        ids, shas, settings_shas = [], [], []
        for cid, content_hash, render in qs.order_by("id").values_list(
                "id", "content_hash", "settings").iterator(chunk_size=10_000):
            text = json.dumps(render, sort_keys=True, separators=(",", ":"))
            if text not in self._settings:
                self._settings[text] = hashlib.sha256(text.encode()).hexdigest()
            ids.append(cid)
            shas.append(content_hash)
            settings_shas.append(self._settings[text])
        return export.Lookup(ids, {"sha256": shas, "settings_sha256": settings_shas},
                             export.CLIP_TYPES)
