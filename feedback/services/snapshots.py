"""Snapshots: a filtered set of judgments frozen as a content-hashed folder.

``snapshot_request`` is the one way in (the API, the page, ``export_preferences`` and the
retraining round call it): it checks the filters against what the user may see, refuses what
would be empty or meaningless, and records one job per set of filters in progress (the partial
unique constraint on ``filter_key`` keeps it so under concurrent requests). A ``default``
worker runs ``snapshot_make``: it claims the job (``QUEUED -> RUNNING``), streams the judgments
in id order a chunk at a time into a temporary folder under ``MEDIA_ROOT/snapshots/`` (the
files are ``feedback.export``'s), hashes the folder and moves it into place whole as
``snapshots/<content hash>/``. A folder with that hash already there is the same bytes, and is
kept. A job that fails leaves nothing listed; the temporary folder of one that was killed is
removed by the next run.

Memory stays flat in the number of judgments: the rows come through a server-side cursor
(on PostgreSQL one tab-separated line per judgment, parsed by Arrow a chunk at a time), only
what they refer to is held (items, candidates, clips, episodes, raters: arrays of a few tens of
bytes each), and the Parquet files are written a row group at a time. The ``ratings`` and
``raters`` configs come from ``feedback.services.ratings.campaign_ratings`` and
``feedback.services.qc.rater_table``, which read the campaigns whole; they run first, so
their memory is given back before the stream starts.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import resource
import time
import uuid
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import reduce
from operator import or_
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from django.conf import settings
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import IntegrityError, connection, transaction
from django.db.models import (
    Count,
    Expression,
    F,
    Func,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    TextField,
    Value,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, Concat
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from annotation.models import Campaign, Enrollment, Item, ItemMember, Judgment, Probe
from annotation.selectors import campaign_list_for
from feedback import export
from feedback.models import RaterStatus, Snapshot
from feedback.qc import RATER_FIGURES
from feedback.tasks_snapshots import SNAPSHOT_TIME_LIMIT_S, snapshot_make_task
from policy.models import Candidate, CandidateSource, Episode, JobStatus, PolicyVersion
from rendering.blobs import blob_name
from rendering.models import Clip

logger = logging.getLogger(__name__)

ROOT = "snapshots"  # under MEDIA_ROOT
CHUNK = 10_000  # judgments read and turned into columns at a time
QC_POLICIES = ("trusted", "all")
DEFAULT_TEST_FRACTION = 0.1
MAX_SNAPSHOTS_LISTED = 200
# A job still RUNNING this long after its claim outlived its worker's hard time limit.
STALE_AFTER = timedelta(seconds=SNAPSHOT_TIME_LIMIT_S + 600)
_FILTER_KEYS = ("campaigns", "qc", "since", "until", "sources", "test_fraction")
_IN_PROGRESS = (JobStatus.QUEUED, JobStatus.RUNNING)
# The database columns of one judgment row, by name (feedback.export reads them so).
ROW = ("id", "campaign_id", "item_id", "rater_id", "probe", "order", "choice", "outcome",
       "strength", "reasons", "scores", "decision_ms", "viewing_ms", "qc", "created_at",
       "playback")
# JSON columns arrive as text: feedback.export decodes each distinct text once.
_JSON = ("order", "reasons", "scores", "qc")

ProgressFn = Callable[[int, int], None]


class SnapshotError(ValueError):
    """A snapshot that cannot be made as asked; the message names the field and says why."""

    code = "invalid"

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


# --- filters -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Filters:
    """The normalised filters: equal filters give equal ``key``s."""

    campaigns: tuple[str, ...]
    qc: str = "trusted"
    since: datetime | None = None
    until: datetime | None = None
    sources: tuple[str, ...] = ()
    test_fraction: float = DEFAULT_TEST_FRACTION

    def as_json(self) -> dict:
        def when(d: datetime | None) -> str | None:
            return d.astimezone(UTC).isoformat() if d else None

        return {"campaigns": list(self.campaigns), "qc": self.qc, "since": when(self.since),
                "until": when(self.until), "sources": list(self.sources),
                "test_fraction": self.test_fraction}

    @property
    def key(self) -> str:
        text = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def _when(name: str, value: object) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        moment = parse_datetime(value) or (
            datetime.combine(d, datetime.min.time()) if (d := parse_date(value)) else None)
        if moment is None:
            raise SnapshotError(f"{name}: expected an ISO date or date-time, got {value!r}",
                                field=name)
    else:
        raise SnapshotError(f"{name}: expected an ISO date or date-time, got {value!r}",
                            field=name)
    return moment.replace(tzinfo=UTC) if timezone.is_naive(moment) else moment.astimezone(UTC)


def source_labels(campaign: Campaign) -> list[str]:
    """The campaign's sources as labels (ground_truth / policy:<version> / baseline:<name>, as
    ``annotation.services.ordering.source_label`` names candidates)."""
    out = []
    for s in campaign.sources or []:
        kind = s.get("kind") if isinstance(s, dict) else None
        if kind == "policy":
            out.append(f"policy:{s.get('version')}")
        elif kind == "ground_truth":
            out.append("ground_truth")
        elif kind == "baseline":
            out.append(f"baseline:{s.get('name')}")
    return out


def _label(source: str, version: str | None, baseline: str) -> str:
    if source == CandidateSource.POLICY:
        return f"policy:{version}"
    if source == CandidateSource.GROUND_TRUTH:
        return "ground_truth"
    return f"baseline:{baseline}"


def snapshot_filters_clean(filters: dict | None, *, user) -> tuple[Filters, list[Campaign]]:
    """The filters, normalised, and their campaigns; raises ``SnapshotError`` naming the field.
    ``user`` None is the platform itself (a command, a round): every campaign."""
    data = dict(filters or {})
    unknown = sorted(set(data) - set(_FILTER_KEYS))
    if unknown:
        raise SnapshotError(f"{unknown[0]}: not a filter (filters are {', '.join(_FILTER_KEYS)})",
                            field=unknown[0])
    slugs = data.get("campaigns")
    if isinstance(slugs, str):
        slugs = [slugs]
    if not isinstance(slugs, list | tuple) or not slugs or not all(
            isinstance(s, str) and s for s in slugs):
        raise SnapshotError("campaigns: expected a non-empty list of campaign slugs",
                            field="campaigns")
    visible = campaign_list_for(user) if user is not None else Campaign.objects.all()
    found = {c.slug: c for c in visible.filter(slug__in=slugs).select_related("dataset")}
    for slug in sorted(set(slugs)):
        if slug not in found:
            raise SnapshotError(f"campaigns: no campaign {slug!r} that you may see",
                                field="campaigns")
    campaigns = [found[s] for s in sorted(found)]
    layouts = sorted({c.dataset.face_model for c in campaigns})
    if len(layouts) > 1:
        which = ", ".join(f"{c.slug} ({c.dataset.face_model})" for c in campaigns)
        raise SnapshotError(
            f"campaigns: {which} use different face layouts ({' and '.join(layouts)}): their "
            "sequences have different dimensions and meanings, so one snapshot cannot hold "
            "them; export each layout separately", field="campaigns")
    qc = data.get("qc") or "trusted"
    if qc not in QC_POLICIES:
        raise SnapshotError(f"qc: expected one of {', '.join(QC_POLICIES)}, got {qc!r}",
                            field="qc")
    since, until = _when("since", data.get("since")), _when("until", data.get("until"))
    if since and until and since >= until:
        raise SnapshotError("until: must come after since", field="until")
    sources = data.get("sources") or []
    if isinstance(sources, str):
        sources = [sources]
    known = {label for c in campaigns for label in source_labels(c)}
    for label in sources:
        if label not in known:
            raise SnapshotError(f"sources: {label!r} is not a source of these campaigns "
                                f"(they have {', '.join(sorted(known))})", field="sources")
    fraction = data.get("test_fraction", DEFAULT_TEST_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not (
            0 <= fraction < 1):
        raise SnapshotError(f"test_fraction: expected a number in [0, 1), got {fraction!r}",
                            field="test_fraction")
    return Filters(tuple(c.slug for c in campaigns), qc, since, until,
                   tuple(sorted(set(sources))), float(fraction)), campaigns


def rater_statuses(campaign_ids: list[int]) -> dict[tuple[int, int], tuple[str, str]]:
    """(campaign id, rater id) -> pseudonym and status now: quality control's latest decision
    (trusted when there is none yet), ``excluded`` whenever the switch is on, ``blocked`` for
    a rater stopped by failed probes."""
    from feedback.services.qc import latest_status

    rows = list(Enrollment.objects.filter(campaign_id__in=campaign_ids).values_list(
        "id", "campaign_id", "rater_id", "pseudonym", "excluded", "blocked"))
    status = latest_status(enrollment_ids=[r[0] for r in rows])
    out = {}
    for eid, campaign_id, rater_id, pseudonym, excluded, blocked in rows:
        s = status.get(eid) or RaterStatus.TRUSTED
        if excluded or s == RaterStatus.EXCLUDED:
            s = RaterStatus.EXCLUDED
        elif blocked:
            s = "blocked"
        out[(campaign_id, rater_id)] = (str(pseudonym), str(s))
    return out


def _source_match(labels: tuple[str, ...]) -> Q:
    """ItemMember rows whose candidate comes from one of ``labels``."""
    def one(label: str) -> Q:
        kind, _, name = label.partition(":")
        if kind == "policy":
            return Q(candidate__source=CandidateSource.POLICY,
                     candidate__policy_version__name=name)
        if kind == "baseline":
            return Q(candidate__source=CandidateSource.BASELINE, candidate__baseline=name)
        return Q(candidate__source=CandidateSource.GROUND_TRUTH)

    return reduce(or_, (one(label) for label in labels))


def snapshot_judgments(f: Filters, campaigns: list[Campaign],
                       raters: dict[tuple[int, int], tuple[str, str]]) -> QuerySet[Judgment]:
    """The judgments the filters keep."""
    qs = Judgment.objects.filter(campaign__in=[c.pk for c in campaigns])
    if f.since:
        qs = qs.filter(created_at__gte=f.since)
    if f.until:
        qs = qs.filter(created_at__lt=f.until)
    if f.qc == "trusted":
        for c in campaigns:
            out = [r for (cid, r), (_, status) in raters.items()
                   if cid == c.pk and status != RaterStatus.TRUSTED]
            if out:
                qs = qs.exclude(campaign_id=c.pk, rater_id__in=out)
    if f.sources:
        kept = (ItemMember.objects.filter(_source_match(f.sources), item_id=OuterRef("item_id"))
                .order_by().values("item_id").annotate(n=Count("pk")).values("n"))
        qs = qs.annotate(n_selected=Subquery(kept)).filter(n_selected__gte=2)
    return qs


# --- request and claim -------------------------------------------------------------------------

def _in_progress(key: str) -> Snapshot | None:
    return Snapshot.objects.filter(filter_key=key, status__in=_IN_PROGRESS).first()


def _stale(snapshot: Snapshot) -> bool:
    return (snapshot.status == JobStatus.RUNNING and snapshot.started_at is not None
            and snapshot.started_at < timezone.now() - STALE_AFTER)


def _enqueue(snapshot_id: int) -> None:
    transaction.on_commit(lambda: snapshot_make_task.delay(snapshot_id))


@transaction.atomic
def snapshot_request(*, filters: dict, user, name: str = "", enqueue: bool = True) -> Snapshot:
    """The snapshot of ``filters`` (campaigns, qc, since, until, sources, test_fraction), made by
    a ``default`` worker once this transaction commits (without ``enqueue`` the caller runs
    ``snapshot_make`` itself). The same filters asked while a snapshot of them is queued or
    running give that snapshot. Raises ``SnapshotError``: a campaign the user may not see,
    face layouts mixed, a bad value, or no judgment to export."""
    f, campaigns = snapshot_filters_clean(filters, user=user)
    raters = rater_statuses([c.pk for c in campaigns])
    if not snapshot_judgments(f, campaigns, raters).exists():
        raise SnapshotError(
            f"filters: no judgment of {', '.join(f.campaigns)} matches (qc {f.qc}, since "
            f"{f.since or '-'}, until {f.until or '-'}, sources {', '.join(f.sources) or 'all'})"
            ": there is nothing to export", field="filters")
    for _ in range(3):  # another request may take the key, or finish it, in between
        existing = _in_progress(f.key)
        if existing is not None:
            if enqueue and (existing.status == JobStatus.QUEUED or _stale(existing)):
                _enqueue(existing.pk)  # a lost or dead job's task again; claiming is once only
            return existing
        try:
            with transaction.atomic():
                snapshot = Snapshot.objects.create(
                    name=name[:200], filters=f.as_json(), filter_key=f.key,
                    created_by=user if user is not None and user.is_authenticated else None)
        except IntegrityError:
            continue
        if enqueue:
            _enqueue(snapshot.pk)
        logger.info("snapshot %s requested: %s", snapshot.pk, f.as_json())
        return snapshot
    raise SnapshotError("filters: the same snapshot is being asked for too often; try again")


def snapshot_claim(*, snapshot_id: int) -> bool:
    """Take the job: one conditional update, so of two workers exactly one gets it."""
    now = timezone.now()
    takeable = Q(status=JobStatus.QUEUED) | Q(status=JobStatus.RUNNING,
                                               started_at__lt=now - STALE_AFTER)
    return Snapshot.objects.filter(takeable, pk=snapshot_id).update(
        status=JobStatus.RUNNING, started_at=now, finished_at=None, progress=0.0,
        error="") == 1


# --- making it ---------------------------------------------------------------------------------

def snapshots_root() -> Path:
    return Path(settings.MEDIA_ROOT) / ROOT


def _writer_alive(lock: Path) -> bool | None:
    """Whether the process that writes a temporary folder still holds its lock (a dead one's
    lock is released by the system); None without a lock file."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _temp_clean(root: Path, *, own: int) -> None:
    """Remove the temporary folders no live job is writing: this job's from an earlier
    attempt, those whose writer died (its lock is free), and those of jobs that finished or
    failed."""
    live_since = timezone.now() - STALE_AFTER
    for path in root.glob(".tmp-*"):
        if path.suffix == ".lock":
            continue
        lock = path.with_name(path.name + ".lock")
        sid = path.name.split("-")[1] if path.name.count("-") >= 2 else ""
        alive = _writer_alive(lock)
        if alive is None:  # no lock: judge by the job's row
            alive = sid.isdigit() and Snapshot.objects.filter(
                pk=int(sid), status=JobStatus.RUNNING, started_at__gte=live_since).exists()
        if not alive or sid == str(own):
            logger.info("snapshot %s: removing the leftover folder %s", own, path.name)
            export.folder_remove(path)
            lock.unlink(missing_ok=True)
    for lock in root.glob(".tmp-*.lock"):
        if not lock.with_suffix("").exists():
            lock.unlink(missing_ok=True)


def snapshot_make(*, snapshot_id: int, progress: ProgressFn | None = None) -> Snapshot | None:
    """Claim the snapshot and write it. Returns the finished row, or None when it was not this
    call's to make (gone, finished, or being made elsewhere)."""
    if not snapshot_claim(snapshot_id=snapshot_id):
        logger.info("snapshot %s: not queued (gone, taken or finished), nothing to do",
                    snapshot_id)
        return None
    snapshot = Snapshot.objects.get(pk=snapshot_id)
    root = snapshots_root()
    root.mkdir(parents=True, exist_ok=True)
    _temp_clean(root, own=snapshot_id)
    temp = root / f".tmp-{snapshot_id}-{uuid.uuid4().hex[:12]}"
    # Held while this process writes: another job's clean-up leaves the folder alone, and
    # takes it away once the system releases the lock of a process that died.
    lock = os.open(temp.with_name(temp.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    temp.mkdir()
    t0 = time.perf_counter()

    def on_progress(done: int, total: int) -> None:
        Snapshot.objects.filter(pk=snapshot_id).update(
            progress=round(90.0 * done / max(total, 1), 1))
        if progress is not None:
            progress(done, total)

    try:
        counts = _write(snapshot, temp, on_progress)
        t1 = time.perf_counter()
        digest, size = export.content_hash(temp)
        final = root / digest
        if final.is_dir():
            export.folder_remove(temp)  # the same bytes are there already
        else:
            try:
                os.replace(temp, final)
            except OSError:
                if not final.is_dir():
                    raise
                export.folder_remove(temp)  # made at the same moment by another job
        logger.info("snapshot %s: %s written in %.1fs, hashed in %.1fs", snapshot_id, digest,
                    t1 - t0, time.perf_counter() - t1)
    except SnapshotError as exc:
        export.folder_remove(temp)
        logger.warning("snapshot %s failed: %s", snapshot_id, exc)
        return _finish(snapshot_id, status=JobStatus.FAILED, error=str(exc))
    except BaseException as exc:
        export.folder_remove(temp)
        logger.exception("snapshot %s crashed", snapshot_id)
        _finish(snapshot_id, status=JobStatus.FAILED, error=f"internal error: {exc!r}")
        raise
    finally:
        temp.with_name(temp.name + ".lock").unlink(missing_ok=True)
        os.close(lock)
    return _finish(snapshot_id, status=JobStatus.SUCCEEDED, progress=100.0, content_hash=digest,
                   path=f"{ROOT}/{digest}", counts=counts, size_bytes=size, error="")


def _finish(snapshot_id: int, **fields: object) -> Snapshot:
    Snapshot.objects.filter(pk=snapshot_id).update(finished_at=timezone.now(), **fields)
    return Snapshot.objects.get(pk=snapshot_id)


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


def _trusted_only(c: dict[str, pa.Array], refs: export.Refs) -> dict[str, pa.Array]:
    """The chunk without the rows of raters not trusted: only raters enrolled after the
    query was built can be among them (the query leaves out the others)."""
    who = refs.raters.index(export.rater_key(export.ints(c["campaign_id"]),
                                             export.ints(c["rater_id"])))
    keep = pc.equal(refs.raters.take("status", who), RaterStatus.TRUSTED.value)
    return {name: column.filter(keep) for name, column in c.items()}


def _peak_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # Linux: kilobytes


def _row_exprs() -> dict[str, Expression]:
    """The judgment columns of ``ROW``: only the playback counters (not the event log, up to
    64 KB a judgment); JSON and times as text."""
    exprs: dict[str, Expression] = {}
    for name in ROW:
        if name in _JSON or name == "created_at":
            exprs[name] = Cast(name, TextField())
        elif name == "playback":  # "plays,pauses,...": Concat makes a missing one blank
            parts = [KT(f"playback__{p}") for p in export.PLAYBACK]
            exprs[name] = Concat(*[x for p in parts for x in (
                p, Value(",", output_field=TextField()))][:-1], output_field=TextField())
        else:
            exprs[name] = F(name)
    return exprs


_NULL = "\\N"  # no column prints so: JSON, codes, numbers, times


def _tsv_columns(data: bytes) -> dict[str, pa.Array]:
    table = pa_csv.read_csv(
        io.BytesIO(data),
        read_options=pa_csv.ReadOptions(column_names=list(ROW), use_threads=False),
        parse_options=pa_csv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False),
        convert_options=pa_csv.ConvertOptions(column_types=export.ROW_TYPES,
                                              null_values=[_NULL], strings_can_be_null=True))
    return {name: table.column(name).combine_chunks() for name in ROW}


def _chunks(qs: QuerySet[Judgment]) -> Iterator[dict[str, pa.Array]]:
    """The rows in id order, ``CHUNK`` at a time, as columns. On PostgreSQL each row comes as
    one line of tab-separated text made by the database, and a chunk's lines are parsed by
    Arrow: no Python object per value (no column holds a tab or a line break: JSON is printed
    on one line with its control characters escaped, the rest are codes, numbers and times).
    Elsewhere a column per value, through the same server-side cursor."""
    exprs = _row_exprs()
    types = export.ROW_TYPES
    if connection.vendor == "postgresql":
        text = TextField()

        def joined(sep: str, parts: list) -> Func:  # CONCAT_WS: flat, unlike nested Concat
            return Func(Value(sep, output_field=text), *parts, function="CONCAT_WS",
                        output_field=text)

        # A counter sent as text could hold a tab or a comma (the page's evidence is checked
        # for size, not for the type of each counter): blanked, it reads as "not a count".
        exprs["playback"] = joined(",", [Coalesce(Func(
            KT(f"playback__{p}"), Value("\t\n\r,", output_field=text),
            Value("    ", output_field=text), function="TRANSLATE", output_field=text),
            Value("", output_field=text), output_field=text) for p in export.PLAYBACK])
        line = joined("\t", [Coalesce(Cast(e, text), Value(_NULL, output_field=text),
                                      output_field=text) for e in exprs.values()])
        query = qs.annotate(c_line=line).order_by("id").values_list("c_line")
    else:
        query = qs.annotate(**{f"c_{k}": v for k, v in exprs.items()}).order_by("id").values_list(
            *[f"c_{k}" for k in exprs])
    sql, params = query.query.sql_with_params()
    with connection.chunked_cursor() as cursor:  # server-side on PostgreSQL
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(CHUNK):
            if connection.vendor == "postgresql":
                yield _tsv_columns("\n".join([r[0] for r in rows]).encode())
            else:
                yield {name: pa.array(values, type=types[name])
                       for name, values in zip(ROW, zip(*rows, strict=True), strict=True)}


def _write(snapshot: Snapshot, temp: Path, on_progress: ProgressFn) -> dict:
    """Every file of the snapshot into ``temp``; the counts."""
    f, campaigns = snapshot_filters_clean(snapshot.filters, user=None)
    raters = rater_statuses([c.pk for c in campaigns])
    qs = snapshot_judgments(f, campaigns, raters)
    # judgments stored from now on are not this snapshot's
    bounds = qs.aggregate(n=Count("id"), last=Max("id"))
    if not bounds["n"]:
        raise SnapshotError("filters: no judgment matches any more; there is nothing to export",
                            field="filters")
    qs = qs.filter(id__lte=bounds["last"])
    # The small configs first: their readers hold the campaigns' judgments in memory for a
    # moment, which is given back before the stream starts.
    t0 = time.perf_counter()
    small = _ratings_and_raters(temp, f, campaigns)
    logger.info("snapshot %s: ratings and raters in %.1fs (peak %d MB)", snapshot.pk,
                time.perf_counter() - t0, _peak_mb())
    t0 = time.perf_counter()
    loader = _References(f, temp, campaigns, raters)
    loader.load(qs)  # and copies every sequence: a missing one stops the job here
    refs = loader.refs
    logger.info("snapshot %s: %d items, %d candidates, %d arrays loaded in %.1fs (peak %d MB)",
                snapshot.pk, len(refs.members.items), len(refs.candidates), len(loader.arrays),
                time.perf_counter() - t0, _peak_mb())
    writers = {name: export.ConfigWriter(temp, name) for name in ("judgments", "pairs",
                                                                   "unpaired")}
    done = 0
    try:
        for c in (chunks := _chunks(qs)):
            n = len(c["id"])
            loader.ensure(c)
            if f.qc == "trusted" and loader.late_raters:
                c = _trusted_only(c, refs)
            if len(c["id"]):
                k = export.Chunk(c, refs)
                writers["judgments"].write("train", export.judgments_table(k))
                pairs, unpaired = export.preference_tables(k, export.preference_picks(k))
                for split, table in pairs.items():
                    writers["pairs"].write(split, table)
                for split, table in unpaired.items():
                    writers["unpaired"].write(split, table)
            done += n
            on_progress(done, bounds["n"])
        counts = {name: w.close() for name, w in writers.items()}
    except BaseException:
        chunks.close()  # closes the cursor now
        for w in writers.values():
            w.abort()
        raise
    logger.info("snapshot %s: %d judgments written in %.1fs (peak %d MB)", snapshot.pk, done,
                time.perf_counter() - t0, _peak_mb())
    counts.update(small)
    meta = _card_meta(f, campaigns, qs, loader, counts)
    (temp / "README.md").write_text(export.card_text(meta), encoding="utf-8")
    return {**counts, "arrays": len(loader.arrays)}


def _ratings_and_raters(temp: Path, f: Filters, campaigns: list[Campaign]) -> dict:
    """The ``ratings`` and ``raters`` configs (small: one row per source, candidate, rater)."""
    from feedback.services.qc import rater_table
    from feedback.services.ratings import campaign_ratings

    # sandwich intervals (rounds=0): deterministic, so the hash stays a function of the data
    fit = campaign_ratings(campaigns=campaigns, exclude_excluded=f.qc != "all", rounds=0)
    keep = set(f.sources) if f.sources else None
    numbers = ("strength", "lo", "hi", "n")
    splits = {
        "sources": [{"player": str(r["label"]), "source": str(r["label"]), "episode_key": None,
                     **{k: r.get(k) for k in numbers}}
                    for r in fit.sources if keep is None or r["label"] in keep],
        "candidates": [{"player": str(r["id"]), "source": r.get("source"),
                        "episode_key": r.get("episode"), **{k: r.get(k) for k in numbers}}
                       for r in fit.candidates if keep is None or r.get("source") in keep],
    }
    writer = export.ConfigWriter(temp, "ratings")
    for split, rows in splits.items():
        if rows:
            writer.write(split, export.rows_table("ratings", rows))
    out = {"ratings": writer.close()}
    rows = []
    for c in campaigns:
        for r in rater_table(campaign=c):
            # the figures only: the row's enrolment id and decision time stay out
            figures = {k: r.get(k) for k in RATER_FIGURES}
            rows.append({"campaign": c.slug, "rater": str(r["pseudonym"]),
                         "n_judgments": r.get("n_judgments"), "status": r.get("status"),
                         "status_source": r.get("source"), "reason": r.get("reason") or "",
                         "figures": json.dumps(figures, sort_keys=True, default=str)})
    rows.sort(key=lambda r: (r["campaign"], r["rater"]))
    writer = export.ConfigWriter(temp, "raters")
    if rows:
        writer.write("train", export.rows_table("raters", rows))
    out["raters"] = writer.close()
    return out


def _agreement(qs: QuerySet[Judgment]) -> dict:
    """How often two judgments of one regular pairwise item agree, in one query."""
    groups = (qs.filter(probe=Probe.NONE, campaign__protocol="pairwise").exclude(outcome="")
              .order_by().values("item_id", "outcome").annotate(n=Count("id")))
    sql, params = groups.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(  # built from the queryset's own SQL; every value is a parameter
            "SELECT COUNT(*), COALESCE(SUM(same), 0), COALESCE(SUM(t * (t - 1)), 0) FROM "  # noqa: S608
            f"(SELECT item_id, SUM(n * (n - 1)) AS same, SUM(n) AS t FROM ({sql}) g "
            "GROUP BY item_id) h WHERE t > 1", params)
        items, same, pairs = cursor.fetchone()
    return {"items": int(items), "item_pairs": int(pairs) // 2,
            "rate": round(int(same) / int(pairs), 6) if pairs else None}


def _qc_text(f: Filters, campaigns: list[Campaign], statuses: list[str]) -> str:
    from feedback.services.qc import qc_thresholds

    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    lines = [f"Policy `{f.qc}`: " + (
        "only judgments of trusted raters." if f.qc == "trusted" else
        "every rater's judgments, excluded ones included; filter on `rater_status`."),
        "", "Raters of these campaigns by status when the snapshot was made: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".", "",
        "Quality control decides a rater's status from their answers and records each "
        "decision with its reason and figures (config `raters`): gold accuracy, catch "
        "accuracy, hidden-repeat consistency, side bias, too-fast answers, agreement with the "
        "others' majority and a MACE-style reliability. Any exclusion rule makes a rater "
        "`excluded`, any warning rule `flagged`; no rule applies before its minimum count. "
        "Thresholds in force (`settings.FEEDBACK_QC`):", "", "```json",
        json.dumps(qc_thresholds().as_dict(), indent=2, sort_keys=True), "```", "",
        "Probes, per campaign: gold items (the ground truth against a clearly wrong answer), "
        "catch items (the same clip twice: a tie is right) and hidden repeats, drawn at these "
        "rates; the rating page warns a rater and then stops serving them (`blocked`) after "
        "these many failed probes:", ""]
    for c in campaigns:
        probes = {"gold_rate": c.gold_rate, "catch_rate": c.catch_rate,
                  "repeat_rate": c.repeat_rate, "warn_after": c.warn_after,
                  "block_after": c.block_after}
        lines.append(f"* `{c.slug}`: `{json.dumps(probes, sort_keys=True)}`")
    return "\n".join(lines)


def _card_meta(f: Filters, campaigns: list[Campaign], qs: QuerySet[Judgment],
               loader: _References, counts: dict) -> dict:
    versions = [
        {"name": name, "sha256": sha, "parent": parent, "lineage": line, "dataset": dataset}
        for name, sha, parent, line, dataset in PolicyVersion.objects.filter(
            name__in=loader.versions).order_by("name").values_list(
            "name", "checkpoint_sha", "parent__name", "lineage", "dataset__name")]
    camps = [{"slug": c.slug, "name": c.name, "protocol": c.protocol,
              "dataset": c.dataset.name, "face_model": c.dataset.face_model,
              "sources": source_labels(c), "overlap": c.overlap,
              **({"group_size": c.group_size, "criteria_weights": c.weights}
                 if c.protocol == "group" else
                 {"ask_strength": c.ask_strength, "reason_tags": list(c.reason_tags or [])})}
             for c in campaigns]
    return {"counts": {k: v for k, v in counts.items() if k != "arrays"},
            "arrays": len(loader.arrays), "filters": f.as_json(), "campaigns": camps,
            "face_model": campaigns[0].dataset.face_model, "agreement": _agreement(qs),
            "qc_text": _qc_text(f, campaigns, loader.refs.raters.columns["status"].to_pylist()),
            "versions": versions,
            "license": getattr(settings, "SNAPSHOT_LICENSE", "other"),
            "pretty_name": "Backchannel preference snapshot"}


# --- reads -------------------------------------------------------------------------------------

def snapshot_list_for(user) -> list[Snapshot]:
    """The latest snapshots whose campaigns the user may all see (researchers, admins)."""
    visible = set(campaign_list_for(user).values_list("slug", flat=True))
    if not visible:
        return []
    out = []
    for s in Snapshot.objects.order_by("-id").iterator(chunk_size=500):
        if set(s.filters.get("campaigns") or ["?"]) <= visible:
            out.append(s)
            if len(out) == MAX_SNAPSHOTS_LISTED:
                break
    return out


def snapshot_get_for(user, snapshot_id: int) -> Snapshot | None:
    s = Snapshot.objects.filter(pk=snapshot_id).first()
    if s is None:
        return None
    visible = set(campaign_list_for(user).filter(
        slug__in=s.filters.get("campaigns") or []).values_list("slug", flat=True))
    return s if visible and visible == set(s.filters.get("campaigns") or []) else None


def snapshot_folder(snapshot: Snapshot) -> Path | None:
    """The finished snapshot's folder, or None."""
    if snapshot.status != JobStatus.SUCCEEDED or not snapshot.content_hash:
        return None
    path = snapshots_root() / snapshot.content_hash
    return path if path.is_dir() else None
