"""Making a snapshot: claim the job, write every file into a temporary folder, hash it and
move it into place whole."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import resource
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from django.db.models import Count, Max
from django.utils import timezone

from annotation.models import Campaign
from feedback import export
from feedback.models import RaterStatus, Snapshot
from feedback.qc import RATER_FIGURES
from policy.models import JobStatus

from .card import _card_meta
from .cleanup import _temp_clean
from .filters import (
    Filters,
    SnapshotError,
    rater_statuses,
    snapshot_filters_clean,
    snapshot_judgments,
)
from .reads import ROOT, snapshots_root
from .references import _References
from .request import snapshot_claim
from .stream import _chunks

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


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


def _trusted_only(c: dict[str, pa.Array], refs: export.Refs) -> dict[str, pa.Array]:
    """The chunk without the rows of raters not trusted: only raters enrolled after the
    query was built can be among them (the query leaves out the others)."""
    who = refs.raters.index(export.rater_key(export.ints(c["campaign_id"]),
                                             export.ints(c["rater_id"])))
    keep = pc.equal(refs.raters.take("status", who), RaterStatus.TRUSTED.value)
    return {name: column.filter(keep) for name, column in c.items()}


def _peak_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # Linux: kilobytes


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
