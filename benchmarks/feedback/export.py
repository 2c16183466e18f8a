"""Snapshot export at scale: 1,000,000 judgments (quick: 20,000) of one pairwise campaign.

1. A PostgreSQL database of the benchmark's own (``bc_bench_feedback``, dropped and made again,
   migrated by ``manage.py migrate`` in a subprocess; ``BENCH_FEEDBACK_DATABASE_URL`` names
   another) and a media folder in a temporary directory.
2. A synthetic campaign, filled by a Django subprocess (``python -m benchmarks.feedback.export
   --fill N``): episodes with speaker and listener arrays, one policy version with three
   samples per episode plus the ground truth (six pairs per episode) and a gold item per
   episode, clips, raters; then assignments and judgments written with ``COPY`` (answers a / b
   / tie / both-bad, strengths, reasons, a short playback log).
3. The export as a user runs it: ``manage.py export_preferences --campaign bench --out DIR`` in
   a subprocess, timed, with its peak resident memory read from ``wait4`` (that child's own
   ``ru_maxrss``, not the largest of every child this process ran).

Goals (benchmarks.feedback.GOALS): under 30 s, under 500 MB.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from benchmarks.common import recreate_database

ROOT = Path(__file__).resolve().parents[2]
DB_NAME = "bc_bench_feedback"
SLUG = "bench"
SAMPLES = 3  # policy samples per episode, besides the ground truth
FRAMES, DIMS = 64, 20  # each sequence is (FRAMES, DIMS) float32


def _env(url: str, tmp: Path) -> dict[str, str]:
    (tmp / "celery").mkdir(exist_ok=True)
    return {**os.environ, "DATABASE_URL": url, "MEDIA_ROOT": str(tmp / "media"),
            "DJANGO_SETTINGS_MODULE": "config.settings", "SECRET_KEY": "benchmark-only",
            "DEBUG": "0", "SECURE_SSL_REDIRECT": "0", "SESSION_COOKIE_SECURE": "0",
            "CSRF_COOKIE_SECURE": "0", "STATIC_MANIFEST": "0", "LOG_LEVEL": "WARNING",
            "CELERY_BROKER_URL": "filesystem://",
            "CELERY_FILESYSTEM_BROKER_DIR": str(tmp / "celery")}


def measure(*, quick: bool) -> dict:
    n = 20_000 if quick else 1_000_000
    url = os.environ.get("BENCH_FEEDBACK_DATABASE_URL",
                         f"postgres://postgres@127.0.0.1:5432/{DB_NAME}")
    with tempfile.TemporaryDirectory(prefix="bench-export-") as name:
        tmp = Path(name)
        env = _env(url, tmp)
        t0 = time.perf_counter()
        recreate_database(url)
        subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], env=env,
                       cwd=ROOT, check=True)
        subprocess.run([sys.executable, "-m", "benchmarks.feedback.export", "--fill", str(n)],
                       env=env, cwd=ROOT, check=True)
        setup_s = time.perf_counter() - t0
        print(f"  export: {n} judgments inserted in {setup_s:.0f} s", flush=True)

        out = tmp / "out"
        log = tmp / "export.log"
        with open(log, "wb") as fh:
            t0 = time.perf_counter()
            child = subprocess.Popen(
                [sys.executable, "manage.py", "export_preferences", "--campaign", SLUG,
                 "--out", str(out), "--no-progress"], env={**env, "LOG_LEVEL": "INFO"},
                cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(child.pid, 0)
            export_s = time.perf_counter() - t0
            child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            raise SystemExit(f"export failed:\n{log.read_text()[-4000:]}")
        import psycopg

        with psycopg.connect(url) as conn:
            counts, size, digest = conn.execute(
                "SELECT counts, size_bytes, content_hash FROM feedback_snapshot "
                "ORDER BY id DESC LIMIT 1").fetchone()
        phases = _phases(log.read_text())
        peaks = _phase_peaks(log.read_text())
    return {
        "export_judgments": n,
        "export_s": round(export_s, 1),
        "export_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
        "export_judgments_per_s": round(n / export_s),
        "export_rows": counts,
        "export_size_mb": round(size / 2**20, 1),
        "export_content_hash": digest,
        "export_phases_s": phases,
        "export_phase_peak_mb": peaks,
        "export_setup_s": round(setup_s, 1),
    }


_PHASES = {  # the job's own log lines (feedback.services.snapshots): phase -> pattern
    "ratings_and_raters": r"ratings and raters in ([0-9.]+)s",
    "references": r"arrays loaded in ([0-9.]+)s",
    "references_and_stream": r"judgments written in ([0-9.]+)s",
    "hash": r"hashed in ([0-9.]+)s",
}


def _phases(log: str) -> dict[str, float]:
    """Seconds per phase of the export, from its log (what the total is made of)."""
    out = {}
    for name, pattern in _PHASES.items():
        if found := re.search(pattern, log):
            out[name] = float(found.group(1))
    return out


def _phase_peaks(log: str) -> dict[str, float]:
    """The export's peak memory (MB) as each phase ended, from its log."""
    out = {}
    for name, pattern in _PHASES.items():
        if found := re.search(pattern + r".*?\(peak ([0-9.]+) MB\)", log):
            out[name] = float(found.group(2))
    return out


# --- the fill (a Django subprocess) ------------------------------------------------------------

def _copy(cursor, table: str, columns: list[str], lines) -> None:
    """COPY text lines (tab-separated, already escaped) into ``table``, a megabyte at a time."""
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        buf = io.StringIO()
        for line in lines:
            buf.write(line)
            if buf.tell() > 1 << 20:
                copy.write(buf.getvalue())
                buf = io.StringIO()
        copy.write(buf.getvalue())


def fill(n: int) -> None:
    import django

    django.setup()
    import numpy as np
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from annotation.models import Campaign, CampaignStatus, Enrollment, Item, ItemMember
    from policy.models import Candidate, CandidateSource, Dataset, Episode, PolicyVersion
    from rendering import blobs
    from rendering.models import Clip, ClipKind, ClipStatus

    rng = np.random.default_rng(0)
    episodes_n = max(50, n // 200)  # ~200 judgments per episode, ~30 per pair
    raters_n = max(50, min(1000, n // 1000))
    words = ["so", "I", "finally", "got", "the", "job", "and", "then", "they", "called",
             "me", "back", "today"]

    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    with transaction.atomic():
        User = get_user_model()
        User.objects.bulk_create([User(username=f"bench-rater-{i}", password="!")  # noqa: S106 - unusable
                                  for i in range(raters_n)])
        users = list(User.objects.filter(username__startswith="bench-rater-").order_by("id"))
        dataset = Dataset.objects.create(name="bench", face_model="builtin",
                                         source_format="synthetic")
        version = PolicyVersion.objects.create(name="bench-v1", checkpoint_sha=sha("ckpt"),
                                               config={}, tokenizer={}, dataset=dataset)
        eps, cands, clips = [], [], []
        for e in range(episodes_n):
            arrays = [blobs.put_array(rng.standard_normal((FRAMES, DIMS)).astype(np.float32))[0]
                      for _ in range(SAMPLES + 2)]  # speaker, ground truth, samples
            transcript = [{"word": w, "start": 0.3 * i, "end": 0.3 * i + 0.25}
                          for i, w in enumerate(words)]
            eps.append(Episode(dataset=dataset, key=f"bench-{e:06d}", fps=30.0,
                               n_frames=FRAMES, content_hash=sha(f"ep{e}"),
                               listener_sha=arrays[1], speaker_sha=arrays[0],
                               transcript=transcript))
            cands.append((e, arrays))
        Episode.objects.bulk_create(eps, batch_size=2000)
        eps = list(Episode.objects.filter(dataset=dataset).order_by("id"))
        rows = []
        for e, arrays in cands:
            ep = eps[e]
            rows.append(Candidate(episode=ep, source=CandidateSource.GROUND_TRUTH,
                                  source_key="ground_truth", array_sha=arrays[1],
                                  n_frames=FRAMES))
            for k in range(SAMPLES):
                rows.append(Candidate(
                    episode=ep, source=CandidateSource.POLICY, policy_version=version, seed=0,
                    temperature=1.0, top_p=0.9, n_frames=FRAMES, array_sha=arrays[2 + k],
                    source_key=f"policy:{version.pk}:seed0:k{SAMPLES}#{k}:t1:p0.9"))
        Candidate.objects.bulk_create(rows, batch_size=5000)
        by_episode: dict[int, list] = {}
        for c in Candidate.objects.filter(episode__dataset=dataset).order_by("id"):
            by_episode.setdefault(c.episode_id, []).append(c)
        settings = {"width": 256, "height": 256, "crf": 20, "preset": "ultrafast"}
        done = {"status": ClipStatus.SUCCEEDED, "mp4_sha": sha("mp4"), "poster_sha": sha("png"),
                "fps": 30.0, "n_frames": FRAMES, "face_model": "builtin", "settings": settings}
        for ep in eps:
            clips.append(Clip(content_hash=sha(f"speaker{ep.pk}"), kind=ClipKind.SPEAKER,
                              sequence_sha=ep.speaker_sha, **done))
            clips += [Clip(content_hash=sha(f"cand{c.pk}"), sequence_sha=c.array_sha, **done)
                      for c in by_episode[ep.pk]]
        Clip.objects.bulk_create(clips, batch_size=5000)
        clip_of = dict(Clip.objects.values_list("content_hash", "id"))
        campaign = Campaign.objects.create(
            name="Benchmark", slug=SLUG, dataset=dataset, status=CampaignStatus.ACTIVE,
            sources=[{"kind": "ground_truth"},
                     {"kind": "policy", "version": version.name, "samples": SAMPLES}],
            reason_tags=["timing", "too still", "too busy"], overlap=3,
            target_items=10**7, per_rater_limit=10**7)
        items, pairs = [], []
        for ep in eps:
            cs = by_episode[ep.pk]
            speaker = clip_of[sha(f"speaker{ep.pk}")]
            for a in range(len(cs)):
                for b in range(a + 1, len(cs)):
                    items.append(Item(campaign=campaign, episode=ep, speaker_clip_id=speaker,
                                      size=2, shuffle=len(items)))
                    pairs.append((cs[a], cs[b]))
            items.append(Item(campaign=campaign, episode=ep, speaker_clip_id=speaker, size=2,
                              probe="gold", shuffle=len(items)))
            pairs.append((cs[0], cs[1]))
        Item.objects.bulk_create(items, batch_size=5000)
        items = list(Item.objects.filter(campaign=campaign).order_by("id"))
        ItemMember.objects.bulk_create(
            [ItemMember(item=item, slot=s, candidate=c, clip_id=clip_of[sha(f"cand{c.pk}")])
             for item, pair in zip(items, pairs, strict=True) for s, c in enumerate(pair)],
            batch_size=10000)
        Enrollment.objects.bulk_create([Enrollment(campaign=campaign, rater=u) for u in users])

    # Assignments and judgments: judgment k answers item k mod I for rater (k div I + 7 item)
    # mod R, so no rater sees an item twice.
    item_ids = [i.pk for i in items]
    probes = [i.probe for i in items]
    rater_ids = [u.pk for u in users]
    n_items, n_raters = len(item_ids), len(rater_ids)
    if n > n_items * n_raters:
        raise SystemExit(f"{n} judgments need more items or raters")
    outcome = rng.choice(4, size=n, p=[0.35, 0.35, 0.15, 0.15])
    strength = rng.integers(1, 4, size=n)
    swap = rng.integers(0, 2, size=n)
    reasons = rng.integers(0, 4, size=n)
    decision = rng.integers(400, 9000, size=n)
    base = timezone.now() - timedelta(days=30)
    playback = json.dumps({
        "events": [{"t": 100 * i, "e": e, "v": 0} for i, e in enumerate(
            ["play", "pause", "play", "seeking", "play", "stall", "play", "pause"])],
        "events_dropped": 0, "plays": 4, "pauses": 2, "seeks": 1, "replays": 0, "stalls": 1,
        "holds": 0, "quality": [{"dropped": 0, "total": 64}] * 3})
    reason_text = ['[]', '["timing"]', '["too still"]', '["timing", "too busy"]']
    campaign_id = campaign.pk

    def rows(kind: str):
        for k in range(n):
            it = k % n_items
            rater = rater_ids[(k // n_items + 7 * it) % n_raters]
            order = "[1, 0]" if swap[k] else "[0, 1]"
            when = (base + timedelta(seconds=2 * k)).isoformat()
            if kind == "assignment":
                yield (f"{k + 1}\t{uuid.UUID(int=k + 1)}\t{campaign_id}\t{item_ids[it]}\t{rater}"
                       f"\t{probes[it]}\t{order}\tsubmitted\t{when}\t{when}\t{when}\n")
                continue
            o = ("a", "b", "tie", "both_bad")[outcome[k]]
            if o in ("a", "b"):
                choice = "left" if (o == "a") != bool(swap[k]) else "right"
                st = str(strength[k])
            else:
                choice, st = o, "\\N"
            qc = ('{"probe": "gold", "passed": %s}' % ("true" if o == "a" else "false")
                  if probes[it] == "gold" else "{}")
            yield (f"{k + 1}\t{uuid.UUID(int=10**12 + k)}\t{k + 1}\t{campaign_id}\t{item_ids[it]}"
                   f"\t{rater}\t{probes[it]}\t{order}\t{choice}\t{o}\t{st}"
                   f"\t{reason_text[reasons[k]] if choice in ('left', 'right') else '[]'}\t\\N"
                   f"\t{decision[k]}\t{decision[k] + 3000}\t{playback}\t{qc}\t{when}\n")

    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg's own cursor, for COPY
        try:  # skip the foreign-key triggers while loading (needs a superuser)
            raw.execute("SET session_replication_role = replica")
        except Exception:  # noqa: BLE001 - then the triggers run, slower
            connection.connection.rollback()
        _copy(raw, "annotation_assignment",
              ["id", "token", "campaign_id", "item_id", "rater_id", "probe", '"order"',
               "status", "leased_at", "heartbeat_at", "expires_at"], rows("assignment"))
        _copy(raw, "annotation_judgment",
              ["id", "idempotency_key", "assignment_id", "campaign_id", "item_id", "rater_id",
               "probe", '"order"', "choice", "outcome", "strength", "reasons", "scores",
               "decision_ms", "viewing_ms", "playback", "qc", "created_at"], rows("judgment"))
        raw.execute("SET session_replication_role = DEFAULT")
        for table in ("annotation_assignment", "annotation_judgment"):
            raw.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {n})")
        raw.execute("ANALYZE")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--fill":
        fill(int(sys.argv[2]))
    else:
        raise SystemExit("usage: python -m benchmarks.feedback.export --fill N "
                         "(or run python -m benchmarks.feedback --parts export)")
