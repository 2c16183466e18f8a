from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from policy.models import Dataset


class Command(BaseCommand):
    help = (
        "Compute per-frame features of a dataset's speaker videos with a pretrained vision "
        "encoder (DINOv2 or SigLIP, a local model directory); only what is missing is computed. "
        "Runs here with a progress bar, or with --queue on a gpu worker."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dataset", help="dataset name")
        parser.add_argument(
            "--encoder",
            required=True,
            help="model directory: an absolute path or a name under POLICY_MODEL_DIR",
        )
        parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 …")
        parser.add_argument("--queue", action="store_true", help="enqueue on the gpu queue")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: object, **opts: object) -> None:
        from policy.ml.errors import PolicyDataError
        from policy.services.video_features import (
            dataset_video_features,
            dataset_video_features_request,
        )

        dataset = Dataset.objects.filter(name=opts["dataset"]).first()
        if dataset is None:
            raise CommandError(f"no dataset named {opts['dataset']!r}")
        encoder = str(opts["encoder"])
        if opts["queue"]:
            dataset_video_features_request(dataset=dataset, encoder_dir=encoder)
            self.stdout.write(f"video features of {dataset.name} queued on the gpu queue")
            return
        with tqdm(total=0, unit="ep", desc="video", disable=bool(opts["no_progress"])) as bar:

            def hook(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            try:
                counts = dataset_video_features(
                    dataset, encoder, device=str(opts["device"]), progress=hook
                )
            except PolicyDataError as exc:  # the model directory, named with the reason
                raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"dataset {dataset.name}: video features {counts['computed']} computed, "
            f"{counts['cached']} already stored, {counts['without_video']} episodes without "
            f"video, {counts['failed']} failed"
        )
        if counts["failed"]:
            raise CommandError(
                f"{counts['failed']} episodes have no video features:\n  "
                + "\n  ".join(counts["errors"])
            )
