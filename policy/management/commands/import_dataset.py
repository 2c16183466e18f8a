from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from policy.importers import READERS, ImportProblem
from policy.services.datasets import dataset_import


class Command(BaseCommand):
    help = (
        "Import a corpus (folder or .zip) into a dataset; re-importing the same files is a no-op."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path)
        parser.add_argument("--format", choices=sorted(READERS), default="backchannel")
        parser.add_argument("--name", help="dataset name (default: from the manifest / format)")
        parser.add_argument(
            "--pose-first",
            action="store_true",
            help="l2l only: the 56 dims are stored pose first (6 pose + 50 expression)",
        )
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: object, **opts: object) -> None:
        options = {"pose_first": True} if opts["pose_first"] else {}
        if options and opts["format"] != "l2l":
            raise CommandError("--pose-first applies to --format l2l only")
        bar = tqdm(total=0, unit="ep", desc="import", disable=bool(opts["no_progress"]), leave=True)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            result = dataset_import(
                path=opts["path"],
                fmt=opts["format"],
                name=opts["name"],
                progress=progress,
                options=options,
            )
        except ImportProblem as exc:
            raise CommandError(f"import failed, nothing was stored: {exc}") from exc
        finally:
            bar.close()
        self.stdout.write(
            f"dataset {result.dataset.name}: {result.created} episodes imported, "
            f"{result.existing} already present, {result.blobs_written} files written "
            f"in {result.seconds:.1f} s"
        )
