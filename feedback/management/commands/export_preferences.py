import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from feedback import export
from feedback.models import Snapshot
from feedback.services.snapshots import (
    QC_POLICIES,
    SnapshotError,
    snapshot_folder,
    snapshot_make,
    snapshot_request,
)
from policy.models import JobStatus


class Command(BaseCommand):
    help = (
        "Freeze the judgments of one or more campaigns as a snapshot (a Hugging Face dataset "
        "folder: pairs, unpaired, judgments, ratings, raters, the arrays and a card) and copy "
        "it to --out. Made here with a progress bar; the snapshot is also listed on the "
        "/snapshots/ page."
    )

    # The system checks import every URL module and view (seconds); the export needs the
    # database and the models only, and the web process runs the checks anyway.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--campaign", action="append", required=True, dest="campaigns",
                            help="campaign slug (repeat for several)")
        parser.add_argument("--qc", choices=QC_POLICIES, default="trusted",
                            help="trusted: trusted raters only; all: every rater, with status")
        parser.add_argument("--since", help="judged at or after (ISO date or date-time, UTC)")
        parser.add_argument("--until", help="judged before (ISO date or date-time, UTC)")
        parser.add_argument("--source", action="append", dest="sources", default=[],
                            help="ground_truth, policy:<version> or baseline:<name> (repeat)")
        parser.add_argument("--test-fraction", type=float, default=0.1,
                            help="share of episodes in the test split")
        parser.add_argument("--name", default="")
        parser.add_argument("--out", required=True, help="folder to write (new or empty)")
        parser.add_argument("--copy-arrays", action="store_true",
                            help="copy the .npy sequences into --out (default: hard links "
                                 "where the file system allows; they never change)")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: object, **opts: object) -> None:
        out = Path(str(opts["out"]))
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise CommandError(f"--out {out}: exists and is not an empty folder")
        filters = {"campaigns": opts["campaigns"], "qc": opts["qc"], "since": opts["since"],
                   "until": opts["until"], "sources": opts["sources"],
                   "test_fraction": opts["test_fraction"]}
        try:
            snapshot = snapshot_request(filters=filters, user=None, name=str(opts["name"]),
                                        enqueue=False)
        except SnapshotError as exc:
            raise CommandError(str(exc)) from exc
        with tqdm(total=0, unit="judgment", desc="export",
                  disable=bool(opts["no_progress"])) as bar:

            def hook(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            made = snapshot_make(snapshot_id=snapshot.pk, progress=hook)
        if made is None:  # being made by a worker: wait for it
            made = self._wait(snapshot.pk)
        if made.status != JobStatus.SUCCEEDED:
            raise CommandError(f"snapshot #{made.pk} failed: {made.error}")
        folder = snapshot_folder(made)
        if folder is None:
            raise CommandError(f"snapshot #{made.pk}: its folder is missing")
        export.folder_copy(folder, out, link_arrays=not opts["copy_arrays"])
        counts = made.counts
        pairs = ", ".join(f"{k} {v}" for k, v in counts.get("pairs", {}).items())
        self.stdout.write(
            f"snapshot #{made.pk} {made.content_hash}: {sum(counts['judgments'].values())} "
            f"judgments; pairs {pairs}; {counts.get('arrays', 0)} arrays -> {out}")

    def _wait(self, snapshot_id: int, timeout_s: float = 3600.0) -> Snapshot:
        self.stderr.write(f"snapshot #{snapshot_id} is being made by a worker; waiting")
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            s = Snapshot.objects.get(pk=snapshot_id)
            if s.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                return s
            time.sleep(2.0)
        raise CommandError(f"snapshot #{snapshot_id} did not finish within {timeout_s:.0f} s")
